"""`leantune advise DATA --prove`: a stratified validation split, the top candidates trained
through compare's machinery, the measured winner (best validation metric), resumable."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from leantune.cli import app
from leantune.guide.advisor import Advice, Situation, rank
from leantune.recipe import load_recipe
from leantune.workflows import prove as prove_mod
from leantune.workflows.prove import candidates, prove, split_data, winner_of

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def write_cls(path, labels=3, per_class=6):
    rows = [{"text": f"{'alpha beta' if c == 0 else 'gamma delta' if c == 1 else 'eps zeta'} sample {i}",
             "label": f"l{c}"} for c in range(labels) for i in range(per_class)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_split_is_stratified_and_kept(tmp_path):
    data = write_cls(tmp_path / "d.jsonl", labels=3, per_class=10)
    s = split_data(data, tmp_path / "out", val_fraction=0.2)
    assert (s.train_size, s.val_size, s.val_per_label) == (24, 6, {"l0": 2, "l1": 2, "l2": 2})
    val = [json.loads(x)["label"] for x in s.val.read_text().splitlines()]
    assert Counter(val) == {"l0": 2, "l1": 2, "l2": 2}
    assert "6 held-out examples, 2 per label (stratified by label)" in s.describe()
    before = s.val.read_text()
    again = split_data(data, tmp_path / "out", val_fraction=0.5)  # resumed: the first split is kept
    assert again.val.read_text() == before and again.val_size == 6


def test_split_keeps_one_per_label_for_training(tmp_path):
    rows = [{"text": "a b", "label": "x"}, {"text": "c d", "label": "x"}, {"text": "e", "label": "y"},
            {"text": "f g", "label": "z"}, {"text": "h i", "label": "z"}]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = split_data(data, tmp_path / "out", val_fraction=0.5)
    assert s.val_per_label == {"x": 1, "y": 0, "z": 1}
    assert s.train_size == 3


def test_winner_is_the_best_validation_metric():
    rows = [{"variant": "a", "metric": 0.5}, {"variant": "b", "metric": 0.75}, {"variant": "c", "metric": None}]
    assert winner_of(rows, "accuracy")["variant"] == "b"
    assert winner_of(rows, "loss")["variant"] == "a"  # lower is better
    assert winner_of([{"variant": "a", "metric": None}], "accuracy") is None


def _advice(*names):
    return [Advice(n, 10 - i, [f"why {n}"], ["r"], model="m",
                   raw={"model": "m", "method": n, "stage": "cls", "data": {"train": "x", "format": "classification"},
                        "train": {"max_steps": 2}})
            for i, n in enumerate(names)]


def test_prove_picks_the_best_variant_and_respects_the_budget(tmp_path, monkeypatch):
    data = write_cls(tmp_path / "d.jsonl")
    acc = {"full": 0.6, "lora": 0.9, "llrd": 0.7, "adapter": 0.99}
    calls = []

    def fake_run(v, base_dir, isolate, say):
        calls.append(v.name)
        assert v.raw["data"]["eval"].endswith("val.jsonl") and v.raw["data"]["train"].endswith("train.jsonl")
        return {"name": v.name, "status": "trained", "wall_time_s": 40.0, "eval_after": {"accuracy": acc[v.name]}}

    monkeypatch.setattr(prove_mod, "run_variant", fake_run)
    advice = _advice("full", "lora", "llrd", "adapter")
    advice.insert(1, Advice("active_learning", 9, ["advice only"], ["r"]))  # no recipe: not a candidate
    res = prove(advice, data, tmp_path / "out", top=3, budget_minutes=1)  # 2 × 40 s, then the budget is spent
    assert calls == ["full", "lora"] and res.skipped == ["llrd"]
    assert res.winner["approach"] == "lora" and res.winner["value"] == 0.9
    saved = json.loads((tmp_path / "out" / "prove.json").read_text())
    assert saved["winner"]["approach"] == "lora" and saved["validation"]["size"] == 3
    winner = load_recipe(tmp_path / "out" / "winner.yaml")
    assert winner.data.train == str(data.resolve())  # the winner trains on all the data
    assert [a.approach for a in candidates(advice, 3)] == ["full", "lora", "llrd"]


def test_prove_trains_a_tiny_model_and_resumes(tmp_path, tiny_model_dir):
    model = str(tiny_model_dir("bert", "seq_cls"))  # three labels, as the data
    data = write_cls(tmp_path / "d.jsonl", labels=3, per_class=4)
    ranking = rank(Situation(labelled=12, model=model, max_length_cap=16, data_kind="classification"),
                   tmp_path / "rec", str(data))
    assert "pet" not in {a.approach for a in ranking.advice}  # the tiny classifier has no LM head
    for a in ranking.advice:  # keep the test short
        if a.raw and "max_steps" in a.raw["train"]:
            a.raw["train"]["max_steps"] = 3
    out = tmp_path / "prove"
    res = prove(ranking.advice, data, out, top=2, isolate=False)
    assert res.split.val_size == 3 and len(res.compare.rows) == 2
    assert all(r["metric"] is not None for r in res.compare.rows)
    best = max(res.compare.rows, key=lambda r: r["metric"])
    assert res.winner["approach"] == best["variant"] and res.winner["value"] == best["metric"]
    assert (out / "compare.md").is_file() and (out / "winner.yaml").is_file()
    again = prove(ranking.advice, data, out, top=2, isolate=False)
    assert all(r["status"] == "skipped (finished)" for r in again.compare.rows)
    assert again.winner["approach"] == res.winner["approach"]


def test_cli_prove(tmp_path, tiny_model_dir, monkeypatch):
    model = str(tiny_model_dir("bert", "seq_cls"))
    data = write_cls(tmp_path / "d.jsonl", labels=2, per_class=6)

    seen = []

    def fake_run(v, base_dir, isolate, say):  # the second candidate measures best
        seen.append(v.name)
        return {"name": v.name, "status": "trained", "wall_time_s": 1.0,
                "eval_after": {"accuracy": 0.8 if len(seen) == 2 else 0.5}}

    monkeypatch.setattr(prove_mod, "run_variant", fake_run)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["advise", str(data), "--model", model, "--prove", "--top", "2", "--out", str(out),
                                 "--in-process"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert "validation: 2 held-out examples, 1 per label" in r.output
    assert len(seen) == 2 and f"measured winner: {seen[1]}" in r.output
    assert max(len(x) for x in r.output.splitlines()) <= 80
    assert (out / "recipes").is_dir() and (out / "winner.yaml").is_file()
    r = CliRunner().invoke(app, ["advise", str(data), "--prove"])
    assert r.exit_code != 0


def test_cli_prove_ranks_generation_candidates_by_the_named_metric(tmp_path, tiny_model_dir, monkeypatch):
    model = str(tiny_model_dir("llama"))
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"say {w}", "output": f"{w} {w}"}) + "\n"
                            for w in ("red", "blue", "green", "amber", "teal", "pink", "gold", "grey", "jade", "navy")))
    seen = {}

    def fake_run(v, base_dir, isolate, say):  # later candidates: better rouge_l, worse loss
        metrics = seen[v.name] = v.raw.get("eval", {}).get("metrics")
        n = len(seen)
        return {"name": v.name, "status": "trained", "wall_time_s": 1.0, "metric": metrics and metrics[0],
                "eval_after": {"loss": 1.0 + n, **({"rouge_l": 0.1 * n} if metrics else {})}}

    monkeypatch.setattr(prove_mod, "run_variant", fake_run)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["advise", str(data), "--model", model, "--prove", "--top", "3", "--out", str(out),
                                 "--in-process", "--metrics", "rouge_l,exact_match"], env={"COLUMNS": "100"})
    assert r.exit_code == 0, r.output
    generation = [name for name, m in seen.items() if m == ["rouge_l", "exact_match"]]
    assert len(seen) == 3 and len(generation) >= 2
    assert all(m is None for name, m in seen.items() if name not in generation)  # e.g. in-context learning
    assert f"measured winner: {generation[-1]} (rouge_l" in r.output  # by loss, the first would have won
    winner = load_recipe(out / "winner.yaml")
    assert winner.eval.metrics == ["rouge_l", "exact_match"]


def test_metrics_apply_to_generation_candidates_only(tiny_model_dir):
    lm = str(tiny_model_dir("llama"))
    untouched = [{"model": lm, "stage": {"name": "cls"}, "eval": {"batch_size": 8}},
                 {"model": {"name": lm}, "stage": "icl"}, {"model": lm, "stage": "pet"}]
    for raw in untouched:
        assert prove_mod.with_metrics(raw, ["bleu"]) == raw
    assert prove_mod.with_metrics({"model": {"name": lm}, "stage": "sft"}, ["bleu"])["eval"]["metrics"] == ["bleu"]


@pytest.mark.parametrize("args, said", [(["--prove", "--out", "OUT", "--metrics", "rouge"], "unknown metric 'rouge'"),
                                        (["--metrics", "bleu"], "add --prove")])
def test_cli_metrics_misuse(tmp_path, args, said):
    data = write_cls(tmp_path / "d.jsonl")
    args = [str(tmp_path / "o") if a == "OUT" else a for a in args]
    r = CliRunner().invoke(app, ["advise", str(data), *args])
    assert r.exit_code == 2 and said in r.output, r.output
    assert not (tmp_path / "o").exists()
