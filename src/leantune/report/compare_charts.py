"""Charts of a comparison: the metric against trainable parameters, wall time and peak memory."""
from __future__ import annotations

from pathlib import Path

CHARTS = (("trainable_params", "trainable parameters", True, "metric_vs_params.png"),
          ("wall_time_s", "wall time (s)", False, "metric_vs_time.png"),
          ("peak_memory_mb", "peak memory (MB)", False, "metric_vs_memory.png"))


def plot_compare(rows: list[dict], metric: str | None, out_dir: Path) -> list[Path]:
    import matplotlib  # lazy: charts only; the import takes ~1 s
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: charts only; the import takes ~1 s
    done = [r for r in rows if r.get("metric") is not None]
    if not done or metric is None:
        return []
    paths = []
    for key, label, log, fname in CHARTS:
        pts = [(r[key], r["metric"], r["variant"]) for r in done if r.get(key) is not None]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        for x, y, name in pts:
            ax.scatter([x], [y])
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if key == "peak_memory_mb":
            est = [(r["estimate_mb"], r["metric"]) for r in done if r.get("estimate_mb")]
            if est:
                ax.scatter(*zip(*est), marker="x", color="grey", label="estimated before training")
                ax.legend(fontsize=8)
        if log and all(x > 0 for x, _, _ in pts):
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / fname)
        plt.close(fig)
        paths.append(out_dir / fname)
    return paths
