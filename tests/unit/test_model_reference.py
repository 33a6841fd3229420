"""How a run records its base model and finds it again (models/reference.py):
the fingerprint, the recorded entry, resolution after moves, the missing-base paragraph."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from leantune.methods.qlora import recorded_quantization
from leantune.methods.registry import build_method
from leantune.models.catalog import PACKAGED
from leantune.models.reference import (
    BaseModelMissing,
    ecosystem_name,
    fingerprint,
    hub_id_of,
    record_base,
    resolve_base,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def run_meta(entry: dict | None, model_path: str, name: str) -> dict:
    meta = {"recipe": {"model": {"name": name}}, "model_path": model_path, "head": "causal_lm"}
    if entry is not None:
        meta["base_model"] = entry
    return meta


# --------------------------------------------------------------------------- fingerprint

def test_fingerprint_is_the_same_for_a_copy_and_ignores_the_library_version(tiny_model_dir, tmp_path):
    src = tiny_model_dir("llama")
    copy = copy_model(src, tmp_path / "copy")
    config = json.loads((copy / "config.json").read_text())
    config["transformers_version"] = "4.57.1"
    (copy / "config.json").write_text(json.dumps(config, indent=4))
    assert fingerprint(copy) == fingerprint(src)
    assert fingerprint(src).startswith("sha256:") and len(fingerprint(src)) == 7 + 64


def test_fingerprint_changes_with_a_weight_or_a_config_value(tiny_model_dir, tmp_path):
    src = tiny_model_dir("llama")
    weights = copy_model(src, tmp_path / "weights")
    state = load_file(weights / "model.safetensors")
    name = min(state)
    state[name] = state[name] + 1e-3  # same names, shapes and sizes: only the values differ
    save_file(state, weights / "model.safetensors", metadata={"format": "pt"})
    assert fingerprint(weights) != fingerprint(src)
    config = copy_model(src, tmp_path / "config")
    data = json.loads((config / "config.json").read_text())
    data["rms_norm_eps"] = 1e-5
    (config / "config.json").write_text(json.dumps(data))
    assert fingerprint(config) != fingerprint(src)


# --------------------------------------------------------------------------- record

def test_hub_snapshot_folders_give_their_hub_id(tmp_path):
    snapshot = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M" / "snapshots" / ("a" * 40)
    assert hub_id_of(snapshot) == "HuggingFaceTB/SmolLM2-135M"
    assert hub_id_of(tmp_path / "models" / "tiny") is None


def test_record_of_a_folder_is_relative_to_the_run(tiny_model_dir, tmp_path, monkeypatch):
    model = copy_model(tiny_model_dir("llama"), tmp_path / "project" / "models" / "tiny")
    run_dir = tmp_path / "project" / "runs" / "r1"
    run_dir.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "project")
    entry = record_base("models/tiny", model, run_dir)
    assert entry == {"name": "models/tiny", "fingerprint": fingerprint(model), "kind": "folder",
                     "path": str(model.resolve()), "relative": "../../models/tiny", "hub_id": None}


def test_record_of_a_hub_id_and_of_a_packaged_name(tiny_model_dir, tmp_path):
    folder = tiny_model_dir("llama")
    assert record_base("org/tiny", folder, tmp_path) == {
        "name": "org/tiny", "fingerprint": fingerprint(folder), "kind": "hub", "hub_id": "org/tiny"}
    packaged = record_base("smollm2-135m", folder, tmp_path)
    assert packaged["kind"] == "packaged" and packaged["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_ecosystem_name_is_the_hub_id_where_one_resolves(tiny_model_dir, tmp_path):
    snapshot = copy_model(tiny_model_dir("llama"), tmp_path / "models--org--tiny" / "snapshots" / ("b" * 40))
    assert ecosystem_name(snapshot) == "org/tiny"
    assert ecosystem_name(tiny_model_dir("llama")) == str(tiny_model_dir("llama").resolve())
    minilm = PACKAGED["minilm-l6"]
    if minilm.source_path() is not None and minilm.source_path().exists():
        assert ecosystem_name(minilm.source_path()) == "sentence-transformers/all-MiniLM-L6-v2"


# --------------------------------------------------------------------------- resolve

def test_a_project_moved_with_its_runs_and_models_still_resolves(tiny_model_dir, tmp_path, monkeypatch):
    project = tmp_path / "project"
    model = copy_model(tiny_model_dir("llama"), project / "models" / "tiny")
    run_dir = project / "runs" / "r1"
    run_dir.mkdir(parents=True)
    monkeypatch.chdir(project)
    meta = run_meta(record_base("models/tiny", model, run_dir), str(model.resolve()), "models/tiny")
    moved = tmp_path / "elsewhere"
    shutil.move(project, moved)
    monkeypatch.chdir(tmp_path)
    assert resolve_base(meta, moved / "runs" / "r1").resolve() == (moved / "models" / "tiny").resolve()


def test_a_run_moved_alone_finds_its_base_at_the_absolute_path(tiny_model_dir, tmp_path):
    model = tiny_model_dir("llama")
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    meta = run_meta(record_base(str(model), model, run_dir), str(model), str(model))
    assert resolve_base(meta, tmp_path / "moved-run").resolve() == model.resolve()


def test_a_missing_base_is_one_paragraph_naming_the_model_and_the_way_out(tiny_model_dir, tmp_path):
    model = copy_model(tiny_model_dir("llama"), tmp_path / "models" / "tiny")
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    meta = run_meta(record_base(str(model), model, run_dir), str(model), str(model))
    shutil.rmtree(model)
    with pytest.raises(BaseModelMissing) as caught:
        resolve_base(meta, run_dir)
    message = str(caught.value)
    assert "\n" not in message and str(model) in message and "--base PATH" in message
    assert meta["base_model"]["fingerprint"] in message
    hub = run_meta({"name": "org/absent", "kind": "hub", "hub_id": "org/absent", "fingerprint": "sha256:0"},
                   "/nowhere", "org/absent")
    with pytest.raises(BaseModelMissing, match=r"'org/absent'.*hf download org/absent"):
        resolve_base(hub, run_dir)


def test_an_explicit_base_with_other_weights_is_used_with_a_warning(tiny_model_dir, tmp_path, caplog):
    model = tiny_model_dir("llama")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    meta = run_meta(record_base(str(model), model, run_dir), str(model), str(model))
    with caplog.at_level(logging.WARNING, logger="leantune"):
        assert resolve_base(meta, run_dir, base=copy_model(model, tmp_path / "same")) == tmp_path / "same"
    assert not caplog.records
    other = tiny_model_dir("qwen2")
    with caplog.at_level(logging.WARNING, logger="leantune"):
        assert resolve_base(meta, run_dir, base=other) == other
    assert "not the one the run was trained on" in caplog.text


def test_runs_written_before_the_reference_still_load(tiny_model_dir, tmp_path):
    model = tiny_model_dir("llama")
    assert resolve_base(run_meta(None, str(model), "ignored"), tmp_path) == model
    moved = run_meta(None, str(tmp_path / "gone"), str(model))  # the recorded path moved: the recipe's name
    assert resolve_base(moved, tmp_path) == model
    with pytest.raises(BaseModelMissing, match="--base PATH"):
        resolve_base(run_meta(None, str(tmp_path / "gone"), str(tmp_path / "also-gone")), tmp_path)


# --------------------------------------------------------------------------- QLoRA's recorded quantization

def test_qlora_adapter_records_its_quantization(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    method = build_method([{"name": "qlora", "r": 2, "compute_dtype": "bfloat16", "double_quant": False}])
    model = method.apply(AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")), "causal_lm")
    method.save(model, tmp_path / "adapter")
    recorded = recorded_quantization(tmp_path / "adapter")["quantization_config"]
    assert recorded.load_in_4bit and recorded.bnb_4bit_quant_type == "nf4"
    assert recorded.bnb_4bit_use_double_quant is False and recorded.bnb_4bit_compute_dtype == torch.bfloat16
    assert recorded.to_dict() == method.load_kwargs()["quantization_config"].to_dict()
    assert recorded_quantization(tmp_path) == recorded_quantization(tmp_path / "adapter") != {}
    assert recorded_quantization(tiny_model_dir("llama")) == {}


# --------------------------------------------------------------------------- a run used as a model

def test_a_run_used_as_a_model_reads_its_recorded_base(tiny_model_dir, tmp_path):
    from leantune.guide.model_shape import load_shape
    from leantune.models.loading import load_config

    model = copy_model(tiny_model_dir("llama"), tmp_path / "project" / "models" / "tiny")
    run_dir = tmp_path / "project" / "runs" / "r1"
    (run_dir / "adapter").mkdir(parents=True)
    meta = run_meta(record_base(str(model), model, run_dir), str(model), str(model))
    (run_dir / "run.json").write_text(json.dumps(meta))
    shutil.move(tmp_path / "project", tmp_path / "moved")
    moved_run = tmp_path / "moved" / "runs" / "r1"
    moved_model = tmp_path / "moved" / "models" / "tiny"
    assert load_config(moved_run).to_dict() == load_config(moved_model).to_dict()
    assert load_shape(str(moved_run)) == load_shape(str(moved_model))
