"""`leantune compare`: one recipe, several methods (or stages), same data and budget.

Each variant trains through ``pipeline.train`` into ``OUT/runs/<variant>``; the table
(``compare.json``, ``compare.md``) and charts (metric vs trainable parameters, wall
time and peak memory) go to ``OUT``. Resumable: a variant whose run finished
(``summary.json``) is skipped, one with checkpoints continues with ``resume``.
With ``isolate`` (the CLI default) each variant runs in its own process, so its peak
memory is its own; in-process runs report the process's peak so far.
``compare_runs`` writes the same table and charts for runs that exist already, training nothing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..atomic import atomic_write_text, check_output
from ..errors import LeantuneError, OutputExists, RunStateError
from ..evaluation.forgetting import FORGETTING_METRICS
from ..pipeline import train
from ..recipe import load_recipe
from ..report.compare_charts import plot_compare
from ..run_dir import FINISHED_MARK, RUN_META
from ..training.checkpoint import list_checkpoints

METRIC_ORDER = ("accuracy", "macro_f1", "f1", "reward_accuracy", "loss", "perplexity")
LOWER_IS_BETTER = {"loss", "perplexity"}


@dataclass
class Variant:
    name: str
    raw: dict


@dataclass
class CompareResult:
    out_dir: Path
    rows: list[dict] = field(default_factory=list)
    metric: str | None = None
    charts: list[Path] = field(default_factory=list)


def variants(raw: dict, methods: list[str] | None, stages: list[str] | None, out_dir: Path) -> list[Variant]:
    """The recipe once per method (``lora``, ``lora+llrd`` for a composition) or per stage."""
    out = []
    for kind, items in (("method", methods or []), ("stage", stages or [])):
        for item in items:
            v = {k: (dict(x) if isinstance(x, dict) else x) for k, x in raw.items()}
            if kind == "method":
                v["method"] = [{"name": n} for n in item.split("+")]
            else:
                v["stage"] = {"name": item}
            name = item.replace("+", "_")
            v["output"] = {**(raw.get("output") or {}), "dir": str(out_dir / "runs"), "name": name,
                           "overwrite": True}
            out.append(Variant(name, v))
    return out


def pick_metric(rows: list[dict]) -> str | None:
    """What the runs are ranked by: the metric their recipes name (``eval.metric``, else the first of
    ``eval.metrics``; summaries record it as ``metric``) where some run has it, else the first of
    METRIC_ORDER the runs have. Text metrics are higher-is-better, loss and perplexity lower."""
    keys = set().union(*[(r.get("eval_after") or {}).keys() for r in rows]) if rows else set()
    for k in [r["metric"] for r in rows if isinstance(r.get("metric"), str)] + list(METRIC_ORDER):
        if k in keys:
            return k
    rest = sorted(keys - set(FORGETTING_METRICS))  # the forgetting probe is a side figure, never the ranking
    return rest[0] if rest else None


def run_variant(v: Variant, base_dir: Path | None, isolate: bool, say: Callable[[str], None]) -> dict:
    run_dir = Path(v.raw["output"]["dir"]) / v.name
    if (run_dir / "summary.json").is_file():
        say(f"{v.name}: finished earlier, skipped")
        return {**json.loads((run_dir / "summary.json").read_text()), "status": "skipped (finished)"}
    resume = (run_dir / "run.json").is_file() and bool(list_checkpoints(run_dir / "checkpoints"))
    say(f"{v.name}: {'resuming' if resume else 'training'} …")
    try:
        if isolate:
            job = {"raw": v.raw, "resume": resume, "base_dir": str(base_dir) if base_dir else None}
            env = {"HF_HUB_OFFLINE": "1", **os.environ}  # the worker reads only local models
            proc = subprocess.run([sys.executable, "-m", "leantune.workflows.compare", json.dumps(job)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise RuntimeError((proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"])
            summary = json.loads((run_dir / "summary.json").read_text())
        else:
            summary = train(load_recipe(raw=v.raw), resume=resume, base_dir=base_dir, progress=False).as_dict()
    except Exception as exc:  # one failing method must not end the comparison
        msg = exc.args[0] if exc.args else str(exc)
        msg = msg[0] if isinstance(msg, list) and msg else msg
        say(f"[red]{v.name}: failed: {msg}")
        return {"name": v.name, "status": f"failed: {msg}"}
    return {**summary, "status": "resumed" if resume else "trained"}


def row_of(name: str, s: dict, metric: str | None) -> dict:
    return {
        "variant": name, "status": s.get("status", ""), "method": s.get("method"), "stage": s.get("stage"),
        "metric": (s.get("eval_after") or {}).get(metric) if metric else None,
        "trainable_params": s.get("trainable_params"), "total_params": s.get("total_params"),
        "wall_time_s": s.get("wall_time_s"), "tokens_per_s": s.get("tokens_per_s"),
        "peak_memory_mb": s.get("peak_memory_mb"), "memory_kind": s.get("memory_kind"),
        "estimate_mb": s.get("estimate_mb"), "steps": s.get("steps"), "eval_after": s.get("eval_after"),
    }


def check_compare_dir(out_dir: Path) -> None:
    """``--out`` is a new or empty folder, or one an earlier compare wrote (it resumes there)."""
    check_resumable_dir(out_dir, "compare.json", "comparison")


def check_resumable_dir(out_dir: Path, marker: str, what: str) -> None:
    """An output folder that is new, empty, or written earlier by the same command (``marker`` or
    ``runs/`` in it: that command resumes there); never a folder of the user's own files, nor the
    current folder, home or a parent of them."""
    out_dir = Path(out_dir)
    ours = (out_dir / marker).is_file() or (out_dir / "runs").is_dir()
    try:
        check_output(out_dir, force=ours, what=what)
    except OutputExists:
        raise OutputExists(f"{out_dir}: the folder has files of its own and is not an earlier {what}'s "
                           f"output; choose a new --out folder") from None


def compare(raw: dict, *, methods: list[str] | None = None, stages: list[str] | None = None, out_dir: Path,
            base_dir: Path | None = None, isolate: bool = True,
            say: Callable[[str], None] = lambda s: None) -> CompareResult:
    out_dir = Path(out_dir)
    vs = variants(raw, methods, stages, out_dir)
    if not vs:
        raise LeantuneError("compare: give --methods and/or --stages")
    check_compare_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_comparison(out_dir, [(v.name, run_variant(v, base_dir, isolate, say)) for v in vs])


def write_comparison(out_dir: Path, summaries: list[tuple[str, dict]]) -> CompareResult:
    """``compare.json``, ``compare.md`` and the charts in ``out_dir`` for (variant, summary) pairs."""
    metric = pick_metric([s for _, s in summaries])
    result = CompareResult(out_dir, [row_of(n, s, metric) for n, s in summaries], metric)
    atomic_write_text(out_dir / "compare.json", json.dumps(
        {"metric": metric, "lower_is_better": metric in LOWER_IS_BETTER, "rows": result.rows}, indent=2))
    atomic_write_text(out_dir / "compare.md", markdown(result))
    result.charts = plot_compare(result.rows, metric, out_dir)
    if result.charts:  # re-write with the charts linked
        atomic_write_text(out_dir / "compare.md", markdown(result))
    return result


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        data = None
    if not isinstance(data, dict):
        raise RunStateError(f"{path}: damaged (not the JSON a run writes); leave that run out of the comparison")
    return data


def run_summary(run_dir: Path) -> dict:
    """A finished run's summary with status 'finished'; an unfinished run's method and stage
    (from ``run.json``) with status 'not finished'."""
    if (run_dir / FINISHED_MARK).is_file():
        return {**_read_json(run_dir / FINISHED_MARK), "status": "finished"}
    if not (run_dir / RUN_META).is_file():
        raise RunStateError(f"{run_dir}: not a leantune run folder (no {RUN_META}); choose run folders to compare")
    recipe = _read_json(run_dir / RUN_META).get("recipe")
    recipe = recipe if isinstance(recipe, dict) else {}
    methods = [m["name"] for m in recipe.get("method") or [] if isinstance(m, dict) and "name" in m]
    stage = recipe.get("stage")
    return {"method": "+".join(methods) or None, "stage": stage.get("name") if isinstance(stage, dict) else stage,
            "status": "not finished"}


def unique_names(names: list[str]) -> list[str]:
    """``names`` with repeats made unique: a, a, a → a, a-2, a-3."""
    out: list[str] = []
    for name in names:
        candidate, k = name, 1
        while candidate in out:
            k += 1
            candidate = f"{name}-{k}"
        out.append(candidate)
    return out


def compare_runs(run_dirs: list[Path], out_dir: Path, names: list[str] | None = None) -> CompareResult:
    """The table and charts of runs that exist already, in the order given, written to ``out_dir``
    like ``compare`` writes them; trains nothing. Variants are named ``names``, else after the run folders."""
    run_dirs, out_dir = [Path(d) for d in run_dirs], Path(out_dir)
    if not run_dirs:
        raise LeantuneError("compare: choose at least one run to compare")
    if names is not None and len(names) != len(run_dirs):
        raise LeantuneError(f"compare: {len(names)} names for {len(run_dirs)} runs; give one name per run")
    for d in run_dirs:
        if not d.is_dir():
            raise RunStateError(f"{d}: no such run folder; choose run folders to compare")
    summaries = [run_summary(d) for d in run_dirs]
    check_compare_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    variant_names = unique_names(names or [d.resolve().name for d in run_dirs])
    return write_comparison(out_dir, list(zip(variant_names, summaries)))


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def markdown(result: CompareResult) -> str:
    m = result.metric or "metric"
    lines = [f"# Comparison ({m}{', lower is better' if m in LOWER_IS_BETTER else ''})", "",
             f"| variant | {m} | trainable params | wall time (s) | tokens/s | peak MB | estimated MB | status |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result.rows:
        lines.append(f"| {r['variant']} | {_fmt(r['metric'], '.4f')} | {_fmt(r['trainable_params'], ',')} | "
                     f"{_fmt(r['wall_time_s'], '.1f')} | {_fmt(r['tokens_per_s'], '.0f')} | "
                     f"{_fmt(r['peak_memory_mb'], '.0f')} | {_fmt(r['estimate_mb'], '.0f')} | {r['status']} |")
    for c in result.charts:
        lines += ["", f"![{c.stem}]({c.name})"]
    return "\n".join(lines) + "\n"


def _worker(job_json: str) -> int:
    """``python -m leantune.workflows.compare JOB``: one variant in a fresh process."""
    job = json.loads(job_json)
    train(load_recipe(raw=job["raw"]), resume=job["resume"],
          base_dir=Path(job["base_dir"]) if job["base_dir"] else None, progress=False)
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
