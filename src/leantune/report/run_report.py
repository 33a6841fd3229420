"""The run report: report.md with the figures a person checks first, and loss.png."""
from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_write_text

Points = list[tuple[float, float]]


def _save_chart(path: Path, ylabel: str, series: list[tuple[Points, str | None, str]]) -> Path:
    """One chart against the step, saved to ``path``: a line per (points, format, label)."""
    import matplotlib  # lazy: charts only; the import takes ~1 s
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: charts only; the import takes ~1 s
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    for pts, fmt, label in series:
        ax.plot(*zip(*pts), *([fmt] if fmt else []), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_curves(history: list[dict], path: Path) -> Path | None:
    train = [(r["step"], r["loss"]) for r in history if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r]
    if not train:
        return None
    return _save_chart(path, "loss", [(train, None, "train loss")] + ([(evals, "o-", "eval loss")] if evals else []))


def plot_metrics(history: list[dict], path: Path, final: dict | None = None, step: int | None = None) -> Path | None:
    """Evaluation metrics other than the loss (accuracy, F1, perplexity, eval.metrics…) against the
    step, one panel each (their scales differ); ``final`` (the scores after training) at ``step`` ends each curve."""
    keys = sorted({k for r in history for k in r if k.startswith("eval_") and k != "eval_loss"
                   and isinstance(r[k], (int, float))})
    if not keys:
        return None
    import matplotlib  # lazy: charts only; the import takes ~1 s
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: charts only; the import takes ~1 s
    fig, axes = plt.subplots(len(keys), 1, figsize=(6, 1.2 + 1.8 * len(keys)), dpi=110, sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        name = key.removeprefix("eval_")
        pts = [(r["step"], r[key]) for r in history if key in r]
        if final and step is not None and isinstance(final.get(name), (int, float)) and step > pts[-1][0]:
            pts.append((step, final[name]))
        ax.plot(*zip(*pts), "o-")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def generation_line(summary: dict) -> str | None:
    """``- eval.metrics … on N of M held-out examples …`` or None."""
    gen = summary.get("generation")
    if not gen:
        return None
    cap = f" (eval.max_generate: {gen['max_generate']})" if gen.get("max_generate") else ""
    return (f"- eval.metrics {', '.join(gen['metrics'])}: greedy answers to {gen['examples']} of {gen['held_out']} "
            f"held-out examples{cap}; answers and per-example scores in predictions.jsonl")


def estimate_line(summary: dict) -> str | None:
    """``- memory estimated before training: … MB; measured … MB (…)`` or None."""
    est = summary.get("estimate_mb")
    if not est:
        return None
    measured = summary.get("peak_memory_mb") or 0
    parts = summary.get("estimate", {}) or {}
    comps = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in (parts.get("components") or {}).items())
    err = f"; error {100 * (est - measured) / measured:+.0f}%" if measured else ""
    return (f"- memory estimated before training: {est:.0f} MB ({comps}); measured {measured:.0f} MB "
            f"({summary.get('memory_kind', '')}){err}")


def write_report(run_dir: Path, summary: dict) -> Path:
    """``summary`` holds the run's figures (see pipeline.RunSummary.as_dict)."""
    plot = plot_curves(summary.get("history", []), run_dir / "loss.png")
    before, after = summary.get("eval_before") or {}, summary.get("eval_after") or {}
    lines = [
        f"# Run `{summary['name']}`",
        "",
        f"- model: `{summary['model']}`; method: `{summary['method']}`; stage: `{summary['stage']}`",
        f"- trainable parameters: {summary['trainable_params']:,} of {summary['total_params']:,} "
        f"({100 * summary['trainable_params'] / max(summary['total_params'], 1):.3f}%)",
        f"- steps: {summary['steps']}; wall time: {summary['wall_time_s']:.1f} s; "
        f"tokens/s: {summary['tokens_per_s']:.0f}; precision: {summary['precision']}",
        f"- peak memory: {summary['peak_memory_mb']:.0f} MB ({summary['memory_kind']})",
        f"- training examples: {summary['train_examples']}; eval examples: {summary['eval_examples']}",
        *([line] if (line := estimate_line(summary)) else []),
        *([line] if (line := generation_line(summary)) else []),
        *([f"- ranked by (compare, advise --prove): {summary['metric']}"] if summary.get("metric") else []),
        "",
        "## Evaluation",
        "",
        "| metric | before | after |",
        "|---|---|---|",
    ]
    for key in after:
        b = before.get(key)
        lines.append(f"| {key} | {'' if b is None else f'{b:.4f}'} | {after[key]:.4f} |")
    if plot:
        lines += ["", "![loss](loss.png)"]
    if plot_metrics(summary.get("history", []), run_dir / "metrics.png", after, summary.get("steps")):
        lines += ["", "![metrics](metrics.png)"]
    for prompt, b, a in summary.get("samples", []):
        lines += ["", f"### {prompt}", "", "**before**", "", b or "_(empty)_", "", "**after**", "", a or "_(empty)_"]
    text = "\n".join(lines) + "\n"
    atomic_write_text(run_dir / "report.md", text)
    atomic_write_text(run_dir / "eval.json", json.dumps({"before": before, "after": after}, indent=2))
    return run_dir / "report.md"
