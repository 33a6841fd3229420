"""Few-shot sampling (K per class, seeds, a disjoint pool), data.shots / data.unlabeled in
the recipe, and learning curves."""
from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import pytest

from leantune.data.fewshot import sample_shots, strip_labels
from leantune.data.loading import load_data
from leantune.errors import RecipeError
from leantune.recipe import load_recipe
from leantune.stages.registry import build_stage
from leantune.workflows.learning_curve import learning_curve, summarize

pytestmark = pytest.mark.usefixtures("torch_single_thread")

ROWS = [{"text": f"row {i}", "label": lab, "line": i} for i, lab in enumerate("aaaaaaabbbbbbbbbbccc")]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_k_per_class_and_disjoint_pool(k):
    shots, rest = sample_shots(ROWS, k, seed=0)
    assert Counter(r["label"] for r in shots) == {"a": k, "b": k, "c": k}
    assert len(shots) + len(rest) == len(ROWS)
    assert not {r["line"] for r in shots} & {r["line"] for r in rest}
    assert [r["line"] for r in rest] == sorted(r["line"] for r in rest)  # pool keeps the file order


def test_seeds_reproduce_and_differ():
    a = [r["line"] for r in sample_shots(ROWS, 2, seed=1)[0]]
    assert a == [r["line"] for r in sample_shots(ROWS, 2, seed=1)[0]]
    others = {tuple(sorted(r["line"] for r in sample_shots(ROWS, 2, seed=s)[0])) for s in range(6)}
    assert len(others) > 1


def test_small_class_gives_all_and_unlabelled_counts_total():
    shots, _ = sample_shots(ROWS, 5, seed=0)
    assert Counter(r["label"] for r in shots) == {"a": 5, "b": 5, "c": 3}
    texts = [{"text": f"t{i}"} for i in range(10)]
    assert len(sample_shots(texts, 4, seed=0)[0]) == 4
    assert sample_shots(ROWS, 0, seed=0)[0] == []
    with pytest.raises(RecipeError):
        sample_shots(ROWS, -1, seed=0)
    assert all("label" not in r for r in strip_labels(ROWS))


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_recipe_shots_and_unlabeled_keep(tmp_path):
    train = _write(tmp_path / "train.jsonl", [{"text": r["text"], "label": r["label"]} for r in ROWS])
    ev = _write(tmp_path / "eval.jsonl", [{"text": "e", "label": "a"}])
    recipe = load_recipe(raw={"model": "x", "stage": "pet", "data": {"train": str(train), "eval": str(ev),
                                                                    "shots": 2, "unlabeled": "keep"}})
    stage = build_stage(recipe.stage)
    tr, evs = load_data(recipe, stage, None, lambda m: None)
    assert Counter(e["label"] for e in tr) == {"a": 2, "b": 2, "c": 2} and len(evs) == 1
    assert len(stage.unlabeled) == len(ROWS) - 6 and all("label" not in e for e in stage.unlabeled)
    # unlabelled pool from a file; no shots: all training rows kept
    pool = _write(tmp_path / "pool.jsonl", [{"text": "u1"}, {"text": "u2", "text_pair": "p"}])
    recipe = load_recipe(raw={"model": "x", "stage": "pet", "data": {"train": str(train), "eval": str(ev),
                                                                    "unlabeled": str(pool)}})
    tr, _ = load_data(recipe, stage, None, lambda m: None)
    assert len(tr) == len(ROWS) and [e["text"] for e in stage.unlabeled] == ["u1", "u2"]


def test_zero_shot_needs_only_eval(tmp_path):
    ev = _write(tmp_path / "eval.jsonl", [{"text": "e", "label": "a"}, {"text": "f", "label": "b"}])
    recipe = load_recipe(raw={"model": "x", "stage": "icl", "data": {"eval": str(ev), "shots": 0}})
    tr, evs = load_data(recipe, build_stage(recipe.stage), None, lambda m: None)
    assert tr == [] and len(evs) == 2


def test_learning_curve_mean_and_std():
    recipe = load_recipe(raw={"model": "x", "stage": "pet", "output": {"name": "lc"}})
    seen = []

    def fake_run(r, **kw):
        seen.append((r.data.shots, r.train.seed, r.output.name))
        return SimpleNamespace(eval_after={"accuracy": 0.5 + 0.1 * r.data.shots + 0.01 * r.train.seed})

    curve = learning_curve(recipe, shots=[1, 4], seeds=[0, 2], run=fake_run)
    assert seen[0] == (1, 0, "lc-k1-s0") and len(seen) == 4
    p1, p4 = curve["points"]
    assert p1["shots"] == 1 and p1["mean"] == pytest.approx(0.61) and p1["std"] == pytest.approx(0.0141421, rel=1e-4)
    assert p4["mean"] == pytest.approx(0.91) and p4["n"] == 2
    assert recipe.data.shots is None  # the caller's recipe is untouched
    assert summarize([0.5])["std"] == 0.0
