"""Portable runs: a run finds its base model after the project folder, the run or the
model cache moves; a missing base is one paragraph; plain PEFT loads the adapters (the base named
in ``adapter_config.json``, a classification adapter's labels from ``labels.json``).

Tiny config-built models except the last test, which moves ``LEANTUNE_HOME`` with the packaged
``smollm2-135m`` converted in it (marked ``integration``).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification
from transformers import AutoModel, AutoTokenizer
from typer.testing import CliRunner

from leantune.cli import app
from leantune.export.merge import merge_run
from leantune.export.run_loading import load_run
from leantune.pipeline import evaluate_run, train
from leantune.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("torch_single_thread")

QA = [("List files in a directory.", "ls -la"), ("Say hello.", "Hello!"), ("Copy a file.", "cp src dst"),
      ("Print the working directory.", "pwd"), ("Add two and two.", "4"), ("Name a prime number.", "7")]
CLS = [("great movie, loved it", "pos"), ("terrible and boring", "neg"), ("it was fine I guess", "neu"),
       ("wonderful acting", "pos"), ("awful plot", "neg"), ("average at best", "neu")]
PROBE = "Say hello."


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_run(model: str, project: Path, *, stage: str = "sft", method: str = "lora", steps: int = 2,
              max_length: int = 64) -> Path:
    """Train in ``project`` (data/, runs/); returns the run directory."""
    if stage == "cls":
        rows, fmt = [{"text": t, "label": lab} for t, lab in CLS], "classification"
    else:
        rows, fmt = [{"instruction": q, "output": a} for q, a in QA], "alpaca"
    train_file = write_jsonl(project / "data" / "train.jsonl", rows * 2)
    eval_file = write_jsonl(project / "data" / "eval.jsonl", rows[:4])
    recipe = load_recipe(raw={
        "model": model, "method": method, "stage": stage,
        "data": {"train": str(train_file), "eval": str(eval_file), "format": fmt},
        "train": {"max_steps": steps, "batch_size": 4, "logging_steps": 1, "lr": 1e-3, "precision": "fp32",
                  "max_length": max_length, "seed": 0},
        "eval": {"batch_size": 4, "before": False},
        "output": {"dir": str(project / "runs"), "name": "run"},
    })
    return Path(train(recipe, progress=False).run_dir)


def probe_logits(model, tokenizer, text: str = PROBE) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def weights_digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "200"})


def cli_metrics(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{"):])


# --------------------------------------------------------------------------- moving folders

def test_a_project_moved_with_its_model_evaluates_and_merges_identically(tiny_model_dir, tmp_path, monkeypatch):
    project = tmp_path / "project"
    shutil.copytree(tiny_model_dir("llama"), project / "models" / "tiny")
    monkeypatch.chdir(project)
    run_dir = train_run("models/tiny", project)
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["base_model"]["kind"] == "folder" and meta["base_model"]["relative"] == "../../models/tiny"
    eval_file = project / "data" / "eval.jsonl"
    before = cli_metrics(invoke("eval", run_dir, "--data", eval_file))
    assert invoke("merge", run_dir, tmp_path / "merged-before").exit_code == 0

    moved = tmp_path / "moved" / "project"
    shutil.move(project, moved)
    monkeypatch.chdir(tmp_path)
    after = cli_metrics(invoke("eval", moved / "runs" / "run", "--data", moved / "data" / "eval.jsonl"))
    assert after == before
    result = invoke("merge", moved / "runs" / "run", tmp_path / "merged-after")
    assert result.exit_code == 0, result.output
    assert weights_digest(tmp_path / "merged-after") == weights_digest(tmp_path / "merged-before")


def test_a_missing_base_is_one_paragraph_and_base_points_at_it(tiny_model_dir, tmp_path):
    model = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_model_dir("llama"), model)
    run_dir = train_run(str(model), tmp_path / "project")
    eval_file = tmp_path / "project" / "data" / "eval.jsonl"
    expected = evaluate_run(run_dir, eval_file)
    elsewhere = tmp_path / "archive" / "tiny"
    shutil.move(model, elsewhere)

    for args in (("eval", run_dir, "--data", eval_file), ("merge", run_dir, tmp_path / "merged")):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and not (tmp_path / "merged").exists()
        message = " ".join(result.output.split())
        assert str(model) in message and "--base PATH" in message, message

    assert cli_metrics(invoke("eval", run_dir, "--data", eval_file, "--base", elsewhere)) == expected
    result = invoke("merge", run_dir, tmp_path / "merged", "--base", elsewhere)
    assert result.exit_code == 0, result.output


def test_a_hub_model_is_found_after_the_hub_cache_moves(tiny_model_dir, tmp_path, monkeypatch):
    def hub_cache(root: Path) -> Path:
        repo = root / "models--leantune-test--tiny-llama"
        shutil.copytree(tiny_model_dir("llama"), repo / "snapshots" / ("c" * 40))
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("c" * 40)
        return root

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache(tmp_path / "hub")))
    run_dir = train_run("leantune-test/tiny-llama", tmp_path / "project")
    adapter = run_dir / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "leantune-test/tiny-llama"
    run = load_run(run_dir)
    expected = probe_logits(run.model, run.tokenizer)

    # another tool, from the adapter folder alone: the base is found in the hub cache by its id
    plain = AutoPeftModelForCausalLM.from_pretrained(adapter)
    assert torch.equal(probe_logits(plain, AutoTokenizer.from_pretrained(adapter)), expected)

    shutil.move(tmp_path / "hub", tmp_path / "hub-moved")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-moved"))
    again = load_run(run_dir)
    assert torch.equal(probe_logits(again.model, again.tokenizer), expected)


def test_plain_peft_loads_an_adapter_on_a_local_folder_base(tiny_model_dir, tmp_path):
    run_dir = train_run(str(tiny_model_dir("llama")), tmp_path / "project")
    adapter = run_dir / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir("llama").resolve())
    run = load_run(run_dir)
    plain = AutoPeftModelForCausalLM.from_pretrained(adapter)
    assert torch.equal(probe_logits(plain, AutoTokenizer.from_pretrained(adapter)),
                       probe_logits(run.model, run.tokenizer))


def test_a_delta_adapter_names_its_base(tiny_model_dir, tmp_path):
    run_dir = train_run(str(tiny_model_dir("llama")), tmp_path / "project", method="freeze")
    delta = json.loads((run_dir / "adapter" / "delta_config.json").read_text())
    assert delta["base_model"] == str(tiny_model_dir("llama").resolve())


# --------------------------------------------------------------------------- classification adapters

def encoder_base(tiny_seq_cls: Path, folder: Path) -> Path:
    """A BERT encoder without a classifier and without labels in its config (default: 2 labels)."""
    AutoModel.from_pretrained(tiny_seq_cls).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_seq_cls).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    for key in ("id2label", "label2id", "num_labels"):
        config.pop(key, None)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_plain_peft_predicts_the_label_names_leantune_predicts(tiny_model_dir, tmp_path):
    base = encoder_base(tiny_model_dir("bert", "seq_cls"), tmp_path / "encoder")
    run_dir = train_run(str(base), tmp_path / "project", stage="cls", steps=4)
    adapter = run_dir / "adapter"
    with pytest.raises(RuntimeError, match="size mismatch"):  # what labels.json is for
        AutoPeftModelForSequenceClassification.from_pretrained(adapter)
    run = load_run(run_dir)
    texts = [t for t, _ in CLS]
    batch = run.tokenizer(texts, return_tensors="pt", padding=True)
    run.model.eval()
    with torch.no_grad():
        ours = run.model(**batch).logits
    ours_names = [run.labels[i] for i in ours.argmax(-1).tolist()]

    labels = json.loads((adapter / "labels.json").read_text())  # the lines a user writes (docs/export.md)
    plain = AutoPeftModelForSequenceClassification.from_pretrained(
        adapter, id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)}).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    with torch.no_grad():
        theirs = plain(**tokenizer(texts, return_tensors="pt", padding=True)).logits
    assert torch.allclose(theirs, ours, atol=1e-6)
    assert [plain.config.id2label[i] for i in theirs.argmax(-1).tolist()] == ours_names
    assert labels == run.labels == ["neg", "neu", "pos"]


# --------------------------------------------------------------------------- the packaged model and LEANTUNE_HOME

@pytest.mark.integration
def test_packaged_model_run_survives_moving_leantune_home_and_the_project(tmp_path, monkeypatch):
    monkeypatch.setenv("LEANTUNE_HOME", str(tmp_path / "home"))
    project = tmp_path / "project"
    run_dir = train_run("smollm2-135m", project, max_length=48)
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    eval_file = project / "data" / "eval.jsonl"
    before = evaluate_run(run_dir, eval_file)
    merge_run(run_dir, tmp_path / "merged-before")

    shutil.move(tmp_path / "home", tmp_path / "home-moved")
    monkeypatch.setenv("LEANTUNE_HOME", str(tmp_path / "home-moved"))
    shutil.move(project, tmp_path / "project-moved")
    moved_run = tmp_path / "project-moved" / "runs" / "run"
    assert evaluate_run(moved_run, tmp_path / "project-moved" / "data" / "eval.jsonl") == before
    merge_run(moved_run, tmp_path / "merged-after")
    assert weights_digest(tmp_path / "merged-after") == weights_digest(tmp_path / "merged-before")
    assert not (tmp_path / "home").exists()  # found in the moved cache, not converted again
