"""What a run's adapter folder and its merged folder ship (export/ship.py), read back by plain
transformers: the chat template training used (``data.template: plain``, not SmolLM2's own
ChatML), the report's decoding in ``generation_config.json``, a model card naming the base,
and the config keys transformers 4.57 reads. One short LoRA run on the packaged
``smollm2-135m`` is shared by the module.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("torch_test_threads")]

MODEL = "smollm2-135m"
DEMO = Path(str(resources.files("leantune") / "resources" / "demo"))
PROMPT = "How do I count the lines of a file?"
MAX_NEW_TOKENS = 12
# transformers 4.57 beside the venv's (make test installs it: pip install --target); skipped where it cannot
TF457 = Path(__file__).resolve().parents[2] / ".venv" / "tf457"
LOGITS_457 = """
import sys, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompt, out = sys.argv[1:]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
with torch.no_grad():
    torch.save({"version": transformers.__version__, "ids": ids, "logits": model(input_ids=ids).logits}, out)
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step LoRA run with the plain template, its report answering PROMPT, and its merged folder."""
    from leantune.export.merge import merge_run
    from leantune.pipeline import train
    from leantune.recipe import load_recipe

    folder = tmp_path_factory.mktemp("shipped")
    lines = (DEMO / "shell_help_train.jsonl").read_text(encoding="utf-8").splitlines()
    (folder / "train.jsonl").write_text("\n".join(lines[:16]) + "\n", encoding="utf-8")
    (folder / "eval.jsonl").write_text("\n".join(lines[16:20]) + "\n", encoding="utf-8")
    recipe = load_recipe(raw={
        "model": MODEL, "method": {"name": "lora", "r": 8, "alpha": 16}, "stage": "sft",
        "data": {"train": str(folder / "train.jsonl"), "eval": str(folder / "eval.jsonl"), "format": "alpaca",
                 "template": "plain"},
        "train": {"max_steps": 4, "batch_size": 4, "max_length": 96, "lr": 1e-3, "precision": "fp32", "seed": 0},
        "eval": {"batch_size": 4, "before": True, "prompts": [PROMPT], "max_new_tokens": MAX_NEW_TOKENS},
        "output": {"dir": str(folder / "runs"), "name": "plain"},
    })
    summary = train(recipe, progress=False)
    merged, _ = merge_run(summary.run_dir, folder / "merged")
    return summary, Path(summary.run_dir), merged


def _card_header(folder: Path) -> dict:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_both_folders_ship_the_template_training_used(run):
    from transformers import AutoTokenizer

    from leantune.data.templates import PLAIN, render
    from leantune.models.loading import load_tokenizer, resolve_model_path

    _, run_dir, merged = run
    base = load_tokenizer(resolve_model_path(MODEL))
    assert base.chat_template and base.chat_template != PLAIN  # SmolLM2 has its own (ChatML)
    question = [{"role": "user", "content": PROMPT}]
    exchange = [*question, {"role": "assistant", "content": "wc -l FILE"}]
    for folder in (run_dir / "adapter", merged):
        shipped = AutoTokenizer.from_pretrained(folder)
        assert (shipped.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
                == render(base, question, PLAIN, add_generation_prompt=True)), folder
        assert shipped.apply_chat_template(exchange, tokenize=False) == render(base, exchange, PLAIN), folder


def test_merged_folder_decodes_as_the_report(run):
    """Greedy ``generate`` with the merged folder's defaults reproduces the report's answer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    summary, _, merged = run
    tokenizer = AutoTokenizer.from_pretrained(merged)
    settings = GenerationConfig.from_pretrained(merged)
    assert (settings.do_sample, settings.repetition_penalty, settings.max_new_tokens) == (False, 1.1, MAX_NEW_TOKENS)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in settings.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                           return_dict=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    (prompt, _, reported), = summary.samples
    assert prompt == PROMPT and reported
    assert answer == reported


def test_model_cards_name_the_base(run):
    _, run_dir, merged = run
    base = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    adapter_card, merged_card = _card_header(run_dir / "adapter"), _card_header(merged)
    assert adapter_card["base_model"] == merged_card["base_model"] == base
    assert (adapter_card["library_name"], merged_card["library_name"]) == ("peft", "transformers")
    assert adapter_card["pipeline_tag"] == merged_card["pipeline_tag"] == "text-generation"
    assert {"lora", "sft"} <= set(merged_card["tags"])
    after = json.loads((run_dir / "eval.json").read_text())["after"]["loss"]
    assert "| loss |" in (merged / "README.md").read_text() and f"{after:.4f}" in (merged / "README.md").read_text()


def test_merged_folder_carries_the_keys_transformers_4_reads(run):
    """transformers 5 reads the folder with the legacy keys as it reads the base's own files."""
    from transformers import AutoConfig, AutoTokenizer

    from leantune.models.loading import resolve_model_path

    _, _, merged = run
    config = json.loads((merged / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 100000.0
    assert config["rope_scaling"] is None
    assert json.loads((merged / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    base_path = resolve_model_path(MODEL)
    assert AutoConfig.from_pretrained(merged).rope_parameters == AutoConfig.from_pretrained(base_path).rope_parameters
    ours, base = AutoTokenizer.from_pretrained(merged), AutoTokenizer.from_pretrained(base_path)
    assert type(ours) is type(base)
    assert ours(PROMPT)["input_ids"] == base(PROMPT)["input_ids"]


@pytest.mark.skipif(not (TF457 / "transformers").is_dir(),
                    reason=f"transformers 4.57 not installed in {TF457} (make test installs it)")
def test_transformers_4_57_reads_the_merged_folder(run, tmp_path):
    """Uses transformers 4.57 from .venv/tf457: same token ids, same logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, _, merged = run
    env = {**os.environ, "PYTHONPATH": str(TF457), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", LOGITS_457, str(merged), PROMPT, str(tmp_path / "out.pt")],
                          check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    old = torch.load(tmp_path / "out.pt")
    assert old["version"].startswith("4.57.")
    ids = AutoTokenizer.from_pretrained(merged)(PROMPT, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert torch.equal(old["ids"], ids)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    with torch.no_grad():
        new = model(input_ids=ids).logits
    torch.testing.assert_close(old["logits"], new, rtol=0, atol=1e-4)


def test_greedy_settings_replace_the_base_sampling_defaults(tmp_path, tiny_tokenizer):
    """A base whose generation_config.json samples (Qwen's: temperature 0.7, top_p 0.8, top_k 20)
    gets the report's greedy decoding; transformers refuses to save greedy with sampling settings."""
    from transformers import GenerationConfig

    from leantune.export.ship import write_generation_config

    GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, eos_token_id=7).save_pretrained(tmp_path)
    write_generation_config(tmp_path, tiny_tokenizer, MAX_NEW_TOKENS)
    shipped = GenerationConfig.from_pretrained(tmp_path)
    assert (shipped.do_sample, shipped.temperature, shipped.top_p, shipped.top_k) == (False, None, None, None)
    assert (shipped.repetition_penalty, shipped.max_new_tokens) == (1.1, MAX_NEW_TOKENS)
    assert shipped.eos_token_id == [tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")]
