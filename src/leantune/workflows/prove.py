"""`leantune advise DATA --prove`: train the advisor's top candidates and keep the measured best.

The data file is split once into ``OUT/data/train.jsonl`` and a validation split
``OUT/data/val.jsonl`` (stratified by label for classification: ``val_fraction`` of every
label, at least one where a label has two or more examples). Each candidate's recipe trains
on the first and is evaluated on the second through ``workflows.compare``'s machinery (one
run folder per candidate under ``OUT/runs``, ``compare.json``/``compare.md`` and its charts
in ``OUT``), within a time budget: a candidate starts only while the wall time spent so far
(the finished runs' own wall time, so a resumed proof counts it too) is under the budget.
Resumable: the split is kept, finished candidates are skipped. ``OUT/prove.json`` names the
measured winner and ``OUT/winner.yaml`` is its recipe on the whole data file.
"""
from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..atomic import atomic_write_text
from ..data.formats import FORMATS, load_examples
from ..errors import LeantuneError
from ..guide.advisor import Advice
from ..models.loading import load_config, resolve_model_path
from ..report.compare_charts import plot_compare
from ..stages.registry import build_stage
from .compare import (
    LOWER_IS_BETTER,
    CompareResult,
    Variant,
    check_compare_dir,
    markdown,
    pick_metric,
    row_of,
    run_variant,
)


@dataclass
class Split:
    train: Path
    val: Path
    train_size: int
    val_size: int
    val_per_label: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        counts = sorted(set(self.val_per_label.values()))
        per = "" if not counts else (f", {counts[0]} per label" if len(counts) == 1
                                     else f", {counts[0]}–{counts[-1]} per label")
        strat = " (stratified by label)" if counts else ""
        return f"validation: {self.val_size} held-out examples{per}{strat}; training: {self.train_size}"


@dataclass
class ProveResult:
    out_dir: Path
    split: Split
    compare: CompareResult
    winner: dict | None
    skipped: list[str]


def split_data(data: Path, out_dir: Path, fmt: str | None = None, val_fraction: float = 0.2,
               seed: int = 0) -> Split:
    """Write (once) the training and validation files; a .jsonl file is split by its own lines,
    other files (classification only) as ``{"text", "label"}`` rows."""
    folder = out_dir / "data"
    train_p, val_p, meta_p = folder / "train.jsonl", folder / "val.jsonl", folder / "split.json"
    if meta_p.is_file() and train_p.is_file() and val_p.is_file():
        meta = json.loads(meta_p.read_text())
        return Split(train_p, val_p, meta["train_size"], meta["val_size"], meta["val_per_label"])
    loaded = load_examples(data, fmt, skip_invalid=True)
    kind = FORMATS[loaded.format].kind
    examples = loaded.examples
    if len(examples) < 4:
        raise LeantuneError(f"{data}: {len(examples)} valid examples; --prove needs at least 4 to hold some out")
    rng = random.Random(seed)
    held: set[int] = set()
    per_label: dict[str, int] = {}
    if kind == "classification":
        groups: dict[str, list[int]] = defaultdict(list)
        for i, ex in enumerate(examples):
            groups[str(ex["label"])].append(i)
        for label in sorted(groups):
            idx = groups[label]
            k = min(len(idx) - 1, max(1, round(val_fraction * len(idx)))) if len(idx) > 1 else 0
            held.update(rng.sample(idx, k))
            per_label[label] = k
    else:
        order = list(range(len(examples)))
        rng.shuffle(order)
        held = set(order[: max(1, round(val_fraction * len(examples)))])
    if Path(data).suffix == ".jsonl":
        lines = Path(data).read_text(encoding="utf-8").splitlines()
        rows = [lines[ex["line"] - 1] for ex in examples]
    elif kind == "classification":
        rows = [json.dumps({k: ex[k] for k in ("text", "text_pair", "label") if ex.get(k) is not None},
                           ensure_ascii=False) for ex in examples]
    else:
        raise LeantuneError(f"{data}: --prove splits .jsonl files (or classification data in any format)")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(train_p, "".join(r + "\n" for i, r in enumerate(rows) if i not in held))
    atomic_write_text(val_p, "".join(r + "\n" for i, r in enumerate(rows) if i in held))
    meta = {"source": str(data), "format": loaded.format, "seed": seed, "val_fraction": val_fraction,
            "train_size": len(rows) - len(held), "val_size": len(held), "val_per_label": per_label}
    atomic_write_text(meta_p, json.dumps(meta, indent=2))
    return Split(train_p, val_p, meta["train_size"], meta["val_size"], per_label)


def check_prove_dir(out_dir: Path) -> None:
    """A new or empty folder, or one an earlier ``advise --prove`` wrote (it resumes there)."""
    out_dir = Path(out_dir)
    ours = any((out_dir / p).exists() for p in ("prove.json", "data/split.json", "recipes"))
    if ours and not (out_dir / "runs").is_dir() and not (out_dir / "compare.json").is_file():
        return
    check_compare_dir(out_dir)


def candidates(advice: list[Advice], top: int) -> list[Advice]:
    """The best-ranked ``top`` approaches that have a recipe and fit the memory budget."""
    return [a for a in advice if a.raw is not None and a.fits is not False][:top]


def variant_of(a: Advice, split: Split, out_dir: Path, metrics: list[str] | None = None) -> Variant:
    raw = with_metrics(json.loads(json.dumps(a.raw)), metrics)
    raw["data"] = {**raw["data"], "train": str(split.train.resolve()), "eval": str(split.val.resolve())}
    raw["output"] = {"dir": str(out_dir / "runs"), "name": a.approach, "overwrite": True}
    return Variant(a.approach, raw)


def with_metrics(raw: dict, metrics: list[str] | None) -> dict:
    """``raw`` with ``eval.metrics`` set when it trains a causal LM on conversations (it is then ranked by
    the first of them); other candidates (classification, PET, in-context…) keep their own metric."""
    if not metrics or not generates(raw):
        return raw
    return {**raw, "eval": {**(raw.get("eval") or {}), "metrics": list(metrics)}}


def generates(raw: dict) -> bool:
    """Whether the recipe ``raw`` trains a causal LM on chat or preference data (answers can be scored)."""
    spec = raw.get("stage") or "sft"
    stage = build_stage({"name": spec} if isinstance(spec, str) else spec)
    if not stage.trains or not {"chat", "preference"} & set(stage.data_kinds):
        return False
    model = raw["model"]["name"] if isinstance(raw["model"], dict) else raw["model"]
    config = load_config(resolve_model_path(model), False)
    return stage.head(config.model_type, config.is_encoder_decoder) == "causal_lm"


def winner_of(rows: list[dict], metric: str | None) -> dict | None:
    done = [r for r in rows if r["metric"] is not None]
    if not done or metric is None:
        return None
    sign = 1 if metric in LOWER_IS_BETTER else -1
    return min(done, key=lambda r: sign * r["metric"])


def prove(advice: list[Advice], data: Path, out_dir: Path, *, top: int = 3, budget_minutes: float | None = None,
          val_fraction: float = 0.2, seed: int = 0, fmt: str | None = None, isolate: bool = True,
          metrics: list[str] | None = None, say: Callable[[str], None] = lambda s: None) -> ProveResult:
    """With ``metrics`` (eval.metrics names), every candidate also answers the validation split and the
    candidates are ranked by the first of them rather than by loss."""
    out_dir = Path(out_dir)
    picked = candidates(advice, top)
    if not picked:
        raise LeantuneError("advise --prove: no proposed approach has a recipe to train")
    check_prove_dir(out_dir)
    split = split_data(Path(data), out_dir, fmt, val_fraction, seed)
    say(split.describe())
    spent, summaries, skipped = 0.0, [], []
    for a in picked:
        v = variant_of(a, split, out_dir, metrics)
        finished = (out_dir / "runs" / v.name / "summary.json").is_file()
        if budget_minutes is not None and spent >= budget_minutes * 60 and not finished:
            say(f"{v.name}: not started, the {budget_minutes:g}-minute budget is spent")
            skipped.append(v.name)
            continue
        s = run_variant(v, None, isolate, say)
        spent += s.get("wall_time_s") or 0.0
        summaries.append((v.name, s))
    metric = pick_metric([s for _, s in summaries])
    result = CompareResult(out_dir, [row_of(n, s, metric) for n, s in summaries], metric)
    atomic_write_text(out_dir / "compare.json", json.dumps(
        {"metric": metric, "lower_is_better": metric in LOWER_IS_BETTER, "rows": result.rows}, indent=2))
    result.charts = plot_compare(result.rows, metric, out_dir)
    atomic_write_text(out_dir / "compare.md", markdown(result))
    best = winner_of(result.rows, metric)
    winner = None
    if best is not None:
        a = next(x for x in picked if x.approach == best["variant"])
        raw = with_metrics(json.loads(json.dumps(a.raw)), metrics)
        raw["data"] = {**raw["data"], "train": str(Path(data).resolve())}
        path = out_dir / "winner.yaml"
        atomic_write_text(path, f"# leantune advise --prove: {a.approach}, validation {metric} "
                                f"{best['metric']:.4f} ({split.val_size} held-out examples)\n"
                          + yaml.safe_dump(raw, sort_keys=False))
        winner = {"approach": a.approach, "metric": metric, "value": best["metric"], "recipe": str(path),
                  "advised_recipe": a.recipe, "run_dir": str(out_dir / "runs" / a.approach)}
    atomic_write_text(out_dir / "prove.json", json.dumps({
        "validation": {"size": split.val_size, "per_label": split.val_per_label, "train_size": split.train_size,
                       "fraction": val_fraction, "seed": seed},
        "candidates": [a.approach for a in picked], "budget_minutes": budget_minutes, "spent_s": spent,
        "skipped": skipped, "metric": metric, "rows": result.rows, "winner": winner,
        "charts": [str(c) for c in result.charts]}, indent=2))
    return ProveResult(out_dir, split, result, winner, skipped)
