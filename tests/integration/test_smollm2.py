"""SmolLM2-135M-Instruct (the packaged ``smollm2-135m``), end to end on CPU.

One LoRA run and one QLoRA run on a slice of the built-in shell-help data are
shared by every test of this module (module-scoped fixtures): the loss falls,
the adapter is a plain PEFT adapter, the merged folder is a plain transformers
model, and ``leantune chat`` answers.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("torch_test_threads")]


MODEL = "smollm2-135m"
DEMO = Path(str(resources.files("leantune") / "resources" / "demo"))
N_TRAIN, N_EVAL = 32, 8  # 8 steps of 4 = one pass over the training slice
PROBE = ["How do I count the lines of a file?", "How can I show the disk usage of a folder?"]


def _recipe(method: dict, data: Path, out: Path, steps: int, name: str) -> dict:
    return {
        "model": MODEL,
        "method": method,
        "stage": "sft",
        # chatml: SmolLM2's own template without its default system prompt (25% fewer tokens)
        "data": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl"), "format": "alpaca",
                 "template": "chatml"},
        "train": {"max_steps": steps, "batch_size": 4, "max_length": 96, "lr": 1e-3, "precision": "fp32",
                  "logging_steps": 1, "seed": 0},
        "eval": {"batch_size": N_EVAL, "before": True},
        "output": {"dir": str(out), "name": name},
    }


def _train(raw: dict):
    from leantune.pipeline import train
    from leantune.recipe import load_recipe

    return train(load_recipe(raw=raw), progress=False)


def _losses(summary) -> list[float]:
    return [h["loss"] for h in summary.history if "loss" in h]


@pytest.fixture(scope="module")
def shell_data(tmp_path_factory) -> Path:
    """The first N_TRAIN / N_EVAL examples of the built-in shell-help train / eval files."""
    folder = tmp_path_factory.mktemp("shell-help")
    for src, dst, n in (("shell_help_train.jsonl", "train.jsonl", N_TRAIN),
                        ("shell_help_eval.jsonl", "eval.jsonl", N_EVAL)):
        lines = (DEMO / src).read_text(encoding="utf-8").splitlines()[:n]
        (folder / dst).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def lora_run(shell_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return _train(_recipe({"name": "lora", "r": 8, "alpha": 16}, shell_data, out, steps=8, name="lora"))


@pytest.fixture(scope="module")
def base_path() -> Path:
    """The converted safetensors folder (GGUF → safetensors happens once per LEANTUNE_HOME)."""
    from leantune.models.loading import resolve_model_path

    return resolve_model_path(MODEL)


@pytest.fixture(scope="module")
def probe(base_path):
    """A fixed batch of token ids: two prompts cut to the same length (no padding)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_path)
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROBE]
    n = min(len(i) for i in ids)
    return torch.tensor([i[:n] for i in ids])


@pytest.fixture(scope="module")
def peft_model(lora_run, base_path):
    """Base + adapter loaded with plain transformers and PEFT only."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert json.loads((Path(lora_run.run_dir) / "run.json").read_text())["model_path"] == str(base_path)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    return PeftModel.from_pretrained(base, Path(lora_run.run_dir) / "adapter").eval()


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()


def test_lora_training_loss_falls(lora_run):
    assert lora_run.steps == 8
    before, after = lora_run.eval_before["loss"], lora_run.eval_after["loss"]
    assert after < before - 0.1, (before, after)
    # per-batch training losses are too noisy over 8 steps to compare; the held-out loss is not
    losses = _losses(lora_run)
    assert len(losses) == 8 and torch.isfinite(torch.tensor(losses)).all(), losses
    run_dir = Path(lora_run.run_dir)
    for name in ("run.json", "recipe.yaml", "summary.json", "metrics.jsonl", "adapter/adapter_config.json"):
        assert (run_dir / name).is_file(), name


def test_adapter_reloads_in_plain_peft(lora_run, peft_model, probe):
    from leantune.export.run_loading import load_run

    ours = load_run(lora_run.run_dir).model.eval()
    plain = _logits(peft_model, probe)
    torch.testing.assert_close(plain, _logits(ours, probe), atol=1e-5, rtol=0)
    with peft_model.disable_adapter():
        base = _logits(peft_model, probe)
    assert (plain - base).abs().max() > 1e-3, "the adapter changes nothing"


def test_merged_model_loads_in_plain_transformers(lora_run, peft_model, probe, tmp_path):
    from transformers import AutoModelForCausalLM

    from leantune.export.merge import merge_run

    out, notes = merge_run(lora_run.run_dir, tmp_path / "merged")
    assert not any("de-quantized" in n for n in notes), notes
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    # W + (alpha/r)·B·A folded into one fp32 matrix rounds differently from computing the two
    # paths apart; over 30 layers that leaves ~1e-4 on logits of magnitude ~10 (rtol covers it)
    torch.testing.assert_close(_logits(merged, probe), _logits(peft_model, probe), atol=1e-4, rtol=1e-5)


def test_chat_cli_answers(lora_run):
    """The CLI prints the trained run's own greedy answer: the same text as generating from the run
    loaded directly (base + adapter, the recipe's template, greedy, same token budget)."""
    from typer.testing import CliRunner

    from leantune.cli import app
    from leantune.evaluation.generate import generate_answer
    from leantune.export.run_loading import load_run

    question = "How do I list hidden files?"
    result = CliRunner().invoke(app, ["chat", lora_run.run_dir, "--prompt", question, "--max-new-tokens", "24"])
    assert result.exit_code == 0, result.output
    run = load_run(lora_run.run_dir)
    expected = generate_answer(run.model.eval(), run.tokenizer, [{"role": "user", "content": question}],
                               run.recipe.data.template, max_new_tokens=24)
    assert expected.strip(), "the model's answer is empty: nothing to compare"
    # the console may wrap a long answer: compare the words
    assert result.stdout.split() == expected.split(), (result.stdout, expected)
    with run.model.disable_adapter():  # the comparison tells the trained run from its base model
        base = generate_answer(run.model, run.tokenizer, [{"role": "user", "content": question}],
                               run.recipe.data.template, max_new_tokens=24)
    assert base.split() != expected.split(), (base, expected)


# --------------------------------------------------------------------------- QLoRA

@pytest.fixture(scope="module")
def qlora_run(shell_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs-qlora")
    # 4-bit matmuls de-quantize on every call and are slow on CPU: few steps
    return _train(_recipe({"name": "qlora", "r": 8, "alpha": 16}, shell_data, out, steps=3, name="qlora"))


def test_qlora_training_loss_falls(qlora_run):
    assert qlora_run.steps == 3
    before, after = qlora_run.eval_before["loss"], qlora_run.eval_after["loss"]
    assert after < before - 0.05, (before, after)
    assert torch.isfinite(torch.tensor(_losses(qlora_run))).all()


def test_qlora_merge_warns_and_loads(qlora_run, probe, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from leantune.export.merge import merge_run

    out, notes = merge_run(qlora_run.run_dir, tmp_path / "merged")
    assert any("de-quantized" in n for n in notes), notes
    assert getattr(AutoConfig.from_pretrained(out), "quantization_config", None) is None
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    got = _logits(merged, probe)
    # the reference: the run as trained, in memory: the 4-bit base (de-quantized at each matmul) + adapter
    from leantune.export.run_loading import load_run

    four_bit = _logits(load_run(qlora_run.run_dir).model.eval(), probe)
    full_precision = _logits(load_run(qlora_run.run_dir, quantized=False).model.eval(), probe)

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    gap, quant_error = rel(got, four_bit), rel(full_precision, four_bit)
    # folding B·A into de-quantized fp32 weights rounds differently from the 4-bit kernel, which
    # bitsandbytes picks by CPU (seen: 6e-5 absolute on an AVX2 EPYC; 9e-3 relative L2, 0.4 absolute,
    # on an AVX512-BF16/AMX Xeon); the 4-bit quantization error of the base is far larger (seen: 0.25 between the
    # full-precision and the 4-bit base, both with the adapter)
    assert gap < 2e-2, (gap, quant_error)
    assert quant_error > 10 * gap, (gap, quant_error)  # the tolerance tells the two apart
    assert (got.argmax(-1) == four_bit.argmax(-1)).float().mean() > 0.95
