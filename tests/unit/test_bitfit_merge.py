"""BitFit with added biases (``add_missing_biases``) merges into a config that expresses them:
Llama's ``attention_bias`` / ``mlp_bias`` (methods/bitfit.py). The reference is the trained
model in memory; the merged folder is read back by plain transformers."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from leantune.data.templates import PLAIN, render
from leantune.errors import NotMergeable
from leantune.export.merge import merge_run
from leantune.export.run_loading import load_run
from leantune.methods.registry import build_method
from leantune.models.loading import load_model
from leantune.pipeline import train
from leantune.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("torch_single_thread")

IDS = torch.tensor([[5, 17, 99, 3, 42, 250, 7, 8]])
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def _logits(model, ids=IDS) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def _trained_bitfit(tiny_model_dir, arch: str, head: str, targets):
    """BitFit with added biases, its trainable biases set to random values (a stand-in for training)."""
    method = build_method({"name": "bitfit", "add_missing_biases": True, "targets": targets})
    model = method.apply(load_model(tiny_model_dir(arch, head), head, dtype="float32"), head)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return method, model


@pytest.mark.parametrize("targets,attention_bias,mlp_bias", [
    ("all-linear", True, True),
    (["q_proj"], True, False),
    (["down_proj"], False, True),
])
def test_added_biases_merge_into_the_llama_config(tiny_model_dir, tmp_path, targets, attention_bias, mlp_bias):
    method, model = _trained_bitfit(tiny_model_dir, "llama", "causal_lm", targets)
    expected = _logits(model)
    merged = method.merge(model)
    merged.save_pretrained(tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["attention_bias"], config["mlp_bias"]) == (attention_bias, mlp_bias)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    torch.testing.assert_close(_logits(reloaded), expected, rtol=0, atol=1e-5)
    biases = {n.rsplit(".", 2)[-2]: p for n, p in reloaded.named_parameters() if n.endswith("_proj.bias")}
    assert set(biases) == {*(ATTENTION if attention_bias else ()), *(MLP if mlp_bias else ())}
    chosen = ATTENTION + MLP if targets == "all-linear" else targets
    for name, bias in biases.items():  # layers the flag covers but BitFit did not target: zero
        assert bool(bias.abs().sum() > 0) == (name in chosen), name


def test_bias_no_config_key_expresses_is_refused(tiny_model_dir):
    method, model = _trained_bitfit(tiny_model_dir, "t5", "seq2seq", "auto")
    with pytest.raises(NotMergeable, match=r"no key of the t5 config.*adapter"):
        method.merge(model)


def test_bitfit_run_merges_into_a_plain_folder(tiny_model_dir, tmp_path):
    """A whole run (``data.template: plain``) then ``merge_run``: the merged folder reloads with
    the run's logits, carries the training template, and says how to load it."""
    (tmp_path / "train.jsonl").write_text("".join(
        json.dumps({"instruction": q, "output": a}) + "\n" for q, a in [("Say hi.", "hi"), ("Count.", "1 2 3")] * 4))
    recipe = load_recipe(raw={
        "model": str(tiny_model_dir("llama")), "method": {"name": "bitfit", "add_missing_biases": True},
        "data": {"train": str(tmp_path / "train.jsonl"), "format": "alpaca", "eval_split": 0.0, "template": "plain"},
        "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "precision": "fp32", "max_length": 96},
        "output": {"dir": str(tmp_path / "runs"), "name": "bitfit"}})
    summary = train(recipe, progress=False)
    out, _ = merge_run(summary.run_dir, tmp_path / "merged")
    run = load_run(summary.run_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    torch.testing.assert_close(_logits(reloaded), _logits(run.model), rtol=0, atol=1e-5)
    messages = [{"role": "user", "content": "Say hi."}]
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == PLAIN
    assert (tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == render(run.tokenizer, messages, PLAIN, add_generation_prompt=True))
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "AutoModelForCausalLM.from_pretrained" in card
    adapter_card = (run.run_dir / "adapter" / "README.md").read_text()
    assert "library_name: leantune" in adapter_card and "leantune merge" in adapter_card
