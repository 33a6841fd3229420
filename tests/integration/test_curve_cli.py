"""`leantune curve` on a tiny classifier: nested fractions × seeds trained, curve.json/md/png
written, a second call retrains nothing; bad arguments are one sentence and exit 2."""
from __future__ import annotations

import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from leantune.cli import app

pytestmark = pytest.mark.usefixtures("torch_single_thread")
runner = CliRunner()

WORDS = {"pos": ["good", "great", "fine", "nice"], "neg": ["bad", "awful", "poor", "sad"],
         "mid": ["okay", "so-so", "average", "plain"]}  # the tiny classifier has 3 labels


def _recipe(tmp_path, model_dir):
    rows = [{"text": f"{w} {w} movie {i}", "label": lab} for i in range(5) for lab, ws in WORDS.items() for w in ws]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:12]))
    recipe = {"model": str(model_dir), "method": "full", "stage": "cls",
              "data": {"train": "train.jsonl", "eval": "eval.jsonl"},
              "train": {"max_steps": 1, "batch_size": 8, "lr": 1e-3, "max_length": 16, "precision": "fp32"},
              "eval": {"batch_size": 8, "before": False}, "output": {"name": "lc"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path, len(rows)


def test_curve_trains_writes_and_resumes(tmp_path, tiny_model_dir):
    recipe, n = _recipe(tmp_path, tiny_model_dir("bert", "seq_cls"))
    out = tmp_path / "curve"
    args = ["curve", str(recipe), "--fractions", "1,0.25,0.5", "--seeds", "2", "--out", str(out), "--in-process"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    data = json.loads((out / "curve.json").read_text())
    assert data["metric"] == "accuracy" and not data["lower_is_better"]
    assert [p["fraction"] for p in data["points"]] == [0.25, 0.5, 1]
    assert [p["examples"] for p in data["points"]] == [math.ceil(f * n) for f in (0.25, 0.5, 1)]
    assert all(p["n"] == 2 and len(p["values"]) == 2 for p in data["points"])
    assert sorted(r["name"] for r in data["runs"]) == sorted(f"lc-f{f}-s{s}" for f in ("0.25", "0.5", "1")
                                                             for s in (0, 1))
    assert {r["status"] for r in data["runs"]} == {"trained"}
    assert data["fit"]["target_examples"] == 2 * n
    assert data["sentence"].startswith(f"doubling the data to {2 * n} examples: predicted accuracy ")
    assert " ".join(data["sentence"].split()) in " ".join(r.output.split())  # the terminal wraps lines
    md = (out / "curve.md").read_text()
    assert data["sentence"] in md
    assert "| 0.25 | 15 |" in md and "![learning curve](curve.png)" in md
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = out / "runs" / "lc-f0.5-s1"
    assert json.loads((run / "summary.json").read_text())["train_examples"] == 30
    stamp = (run / "summary.json").stat().st_mtime_ns

    again = runner.invoke(app, args)  # resumable: every run finished, nothing retrained
    assert again.exit_code == 0, again.output
    data2 = json.loads((out / "curve.json").read_text())
    assert {r["status"] for r in data2["runs"]} == {"skipped (finished)"}
    assert data2["points"] == data["points"] and (run / "summary.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("fractions, words", [("0,0.5", "0 < f"), ("a,b", "comma-separated numbers")])
def test_bad_fractions_are_one_sentence(tmp_path, fractions, words):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": "x", "data": {"train": "t.jsonl"}}))
    r = runner.invoke(app, ["curve", str(recipe), "--fractions", fractions, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_refuses_a_folder_of_the_users_own_files(tmp_path, tiny_model_dir):
    recipe, _ = _recipe(tmp_path, tiny_model_dir("bert", "seq_cls"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    r = runner.invoke(app, ["curve", str(recipe), "--out", str(mine), "--in-process"])
    assert r.exit_code == 2 and "not an earlier learning curve" in r.output
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
