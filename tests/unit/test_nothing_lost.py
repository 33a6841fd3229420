"""Nothing is ever lost: merge, run names, overwrite, resume and broken runs, each tried the way
it destroyed data or printed a traceback before; the user's folder (with ``precious.txt``)
survives every refusal, and each refusal is one sentence with exit code 2."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from leantune.cli import app
from leantune.errors import LeantuneError, OutputExists, RecipeError, RunStateError, UnsafeOutput
from leantune.pipeline import train
from leantune.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("torch_single_thread")
runner = CliRunner()
ROWS = [{"instruction": f"Say {w}.", "output": f"{w}!"} for w in ("hi", "yes", "no", "ok", "bye", "up")]


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert "Traceback" not in result.output
    return result


def raw_recipe(model_dir: Path, folder: Path, **output) -> dict:
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return {"model": str(model_dir), "method": {"name": "lora", "r": 2}, "stage": "sft",
            "data": {"train": str(data), "format": "alpaca", "eval_split": 0.0},
            "train": {"max_steps": 2, "batch_size": 2, "precision": "fp32", "max_length": 64},
            "eval": {"before": False}, "output": {"dir": str(folder / "runs"), "name": "run", **output}}


def eval_file(folder: Path) -> Path:
    path = folder / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def write_recipe(folder: Path, raw: dict) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def precious(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "precious.txt").write_text("years of work")
    return folder / "precious.txt"


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished")
    raw = raw_recipe(tiny_model_dir("llama"), folder)
    summary = train(load_recipe(raw=raw), progress=False)
    return Path(summary.run_dir), raw, folder


def tree(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


# --------------------------------------------------------------------------- merge

def test_merge_refuses_an_existing_folder_and_keeps_it(finished_run, tmp_path):
    run_dir, _, _ = finished_run
    keep = precious(tmp_path / "models")
    result = invoke("merge", run_dir, tmp_path / "models")
    assert result.exit_code == 2 and "--force" in result.output
    assert keep.read_text() == "years of work"


def test_merge_into_itself_the_current_folder_or_a_parent_is_refused_even_with_force(finished_run, tmp_path):
    run_dir, _, _ = finished_run
    before = tree(run_dir)
    for target in (run_dir, run_dir / "adapter", run_dir.parent):
        result = invoke("merge", run_dir, target, "--force")
        assert result.exit_code == 2 and "own input" in result.output, result.output
    work = tmp_path / "project"
    keep = precious(work)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        for target in (".", "..", "/"):
            result = invoke("merge", run_dir, target, "--force")
            assert result.exit_code == 2, result.output
            assert "refusing" in result.output or "own input" in result.output
    finally:
        os.chdir(cwd)
    assert keep.read_text() == "years of work"
    assert tree(run_dir) == before


def test_merge_onto_an_existing_file_is_refused(finished_run, tmp_path):
    run_dir, _, _ = finished_run
    target = precious(tmp_path)
    result = invoke("merge", run_dir, target)
    assert result.exit_code == 2 and "file already exists" in result.output
    assert target.read_text() == "years of work"


def test_merge_with_force_replaces_only_the_target(finished_run, tmp_path):
    run_dir, _, _ = finished_run
    precious(tmp_path / "merged")
    (tmp_path / "sibling.txt").write_text("untouched")
    result = invoke("merge", run_dir, tmp_path / "merged", "--force")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "merged" / "config.json").is_file()
    assert not (tmp_path / "merged" / "precious.txt").exists()
    assert (tmp_path / "sibling.txt").read_text() == "untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "sibling.txt"]  # no temp folder left


# --------------------------------------------------------------------------- run names and overwrite

@pytest.mark.parametrize("name", ["..", ".", "../../escaped", "/tmp/elsewhere", "a/b", "", " run", "a\\b"])
def test_run_names_are_single_path_components(tmp_path, name):
    raw = {"model": "x", "output": {"name": name}}
    with pytest.raises(RecipeError, match="output.name"):
        load_recipe(raw=raw)


def test_overwrite_never_replaces_a_folder_that_is_not_a_run(tiny_model_dir, tmp_path):
    raw = raw_recipe(tiny_model_dir("llama"), tmp_path, overwrite=True)
    keep = precious(tmp_path / "runs" / "run")
    with pytest.raises(UnsafeOutput, match="not one"):
        train(load_recipe(raw=raw), progress=False)
    assert keep.read_text() == "years of work"


def test_overwrite_never_replaces_the_current_folder(tiny_model_dir, tmp_path):
    work = tmp_path / "project"
    keep = precious(work)
    (work / "run.json").write_text("{}")  # even one that looks like a run
    raw = raw_recipe(tiny_model_dir("llama"), tmp_path, overwrite=True)
    raw["output"] = {"dir": str(tmp_path), "name": "project", "overwrite": True}
    cwd = os.getcwd()
    os.chdir(work)
    try:
        with pytest.raises(UnsafeOutput, match="current folder"):
            train(load_recipe(raw=raw), progress=False)
    finally:
        os.chdir(cwd)
    assert keep.read_text() == "years of work"


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing_and_restores_the_old(finished_run):
    run_dir, raw, _ = finished_run
    before = tree(run_dir)
    broken = {**raw, "output": {**raw["output"], "overwrite": True},
              "train": {**raw["train"], "lr": 1e30, "max_steps": 4}}  # diverges inside the loop
    with pytest.raises(LeantuneError, match="loss became"):
        train(load_recipe(raw=broken), progress=False)
    assert tree(run_dir) == before
    assert sorted(p.name for p in run_dir.parent.iterdir()) == [run_dir.name]


# --------------------------------------------------------------------------- resume

def test_resume_on_a_missing_run_says_so(tiny_model_dir, tmp_path):
    recipe = write_recipe(tmp_path, raw_recipe(tiny_model_dir("llama"), tmp_path))
    result = invoke("train", recipe, "--resume")
    assert result.exit_code == 2 and "no run" in result.output and "without --resume" in result.output
    assert not (tmp_path / "runs").exists()


def test_resume_on_a_finished_run_says_it_is_finished(finished_run):
    run_dir, raw, folder = finished_run
    before = tree(run_dir)
    result = invoke("train", write_recipe(folder, raw), "--resume")
    assert result.exit_code == 2 and "has finished" in result.output
    assert tree(run_dir) == before


def test_resume_with_another_recipe_names_the_field(tiny_model_dir, tmp_path):
    raw = raw_recipe(tiny_model_dir("llama"), tmp_path)
    run_dir = tmp_path / "runs" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"recipe": load_recipe(raw=raw).model_dump(mode="json")}))
    with pytest.raises(RunStateError, match=r"train\.lr \(0\.0002 then, 0\.001 now\)"):
        train(load_recipe(raw=raw, overrides=["train.lr=1e-3"]), resume=True, progress=False)


# --------------------------------------------------------------------------- broken runs

def _copy(run_dir: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run_dir, dest)
    return dest


@pytest.mark.parametrize("command", ["eval", "chat", "merge"])
def test_broken_runs_are_named_not_tracebacks(finished_run, tmp_path, command):
    run_dir, _, _ = finished_run
    extra = {"chat": ["--prompt", "hi"], "merge": [tmp_path / "out"], "eval": []}[command]

    no_adapter = _copy(run_dir, tmp_path / "no-adapter")
    import shutil

    shutil.rmtree(no_adapter / "adapter")
    result = invoke(command, no_adapter, *extra)
    assert result.exit_code == 2 and "no adapter/" in result.output

    cut_meta = _copy(run_dir, tmp_path / "cut-meta")
    (cut_meta / "run.json").write_bytes((run_dir / "run.json").read_bytes()[:40])
    result = invoke(command, cut_meta, *extra)
    assert result.exit_code == 2 and "run.json: damaged" in result.output

    cut_weights = _copy(run_dir, tmp_path / "cut-weights")
    weights = next((cut_weights / "adapter").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-100])
    result = invoke(command, cut_weights, *extra)
    assert result.exit_code == 2 and "cut short" in result.output and weights.name in result.output


def test_a_run_whose_base_model_moved_finds_it_by_name(finished_run, tmp_path):
    """run.json's model_path points nowhere (cache moved): the recipe's model name is used."""
    run_dir, _, _ = finished_run
    moved = _copy(run_dir, tmp_path / "moved")
    meta = json.loads((moved / "run.json").read_text())
    meta["model_path"] = str(tmp_path / "gone")
    (moved / "run.json").write_text(json.dumps(meta))
    result = invoke("eval", moved, "--data", eval_file(tmp_path))
    assert result.exit_code == 0, result.output
    assert "loss" in result.output


# --------------------------------------------------------------------------- model folders that run code

def test_pickle_weights_and_remote_code_are_refused_with_a_sentence(tiny_model_dir, tmp_path):
    import shutil

    src = tiny_model_dir("llama")
    pickled = tmp_path / "pickled"
    shutil.copytree(src, pickled)
    for f in pickled.glob("*.safetensors"):
        f.rename(f.with_name("pytorch_model.bin"))
    remote = tmp_path / "remote"
    shutil.copytree(src, remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(config))
    for model, fragment in ((pickled, "pickle"), (remote, "trust_remote_code: true")):
        raw = raw_recipe(model, tmp_path)
        raw["output"]["name"] = model.name
        result = invoke("train", write_recipe(tmp_path, raw))
        assert result.exit_code == 2 and fragment in result.output, result.output
        assert not (tmp_path / "runs" / model.name).exists()


def test_data_export_refuses_an_existing_file(tmp_path):
    target = precious(tmp_path)
    result = invoke("data", "export-builtin", "dialogs-english", target, "--per-class", "1")
    assert result.exit_code == 2 and "--force" in result.output
    assert target.read_text() == "years of work"


def test_check_output_allows_new_and_empty_targets(tmp_path):
    from leantune.atomic import check_output

    check_output(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty")
    precious(tmp_path / "full")
    with pytest.raises(OutputExists):
        check_output(tmp_path / "full")
    check_output(tmp_path / "full", force=True)
    with pytest.raises(UnsafeOutput):
        check_output(Path.home(), force=True)


def test_compare_refuses_a_folder_of_the_users_own_files(tiny_model_dir, tmp_path):
    keep = precious(tmp_path / "results")
    recipe = write_recipe(tmp_path, raw_recipe(tiny_model_dir("llama"), tmp_path))
    result = invoke("compare", recipe, "--methods", "lora,bitfit", "--out", tmp_path / "results", "--in-process")
    assert result.exit_code == 2 and "not an earlier comparison" in result.output
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["precious.txt"]
    assert keep.read_text() == "years of work"
