"""How close is the memory estimate (leantune.guide.estimate) to the measured peak?

Each case trains a few steps in its own subprocess through ``pipeline.train``, which
records the estimate made before training (``summary.estimate_mb``) and the measured
peak RSS (CPU) or peak CUDA allocation. One run per case; the error is
(predicted − measured) / measured. Results: benchmarks/results/estimate_accuracy.json.

    .venv/bin/python benchmarks/estimate_accuracy.py            # all cases (heavy: minutes)
    .venv/bin/python benchmarks/estimate_accuracy.py --only smollm2-135m/lora
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import RESULTS  # noqa: E402

DATA = {
    "smollm2-135m": {"train": "builtin:demo/shell_help_train.jsonl", "format": "alpaca", "stage": "sft"},
    "minilm-l6": {"train": str(ROOT / "recipes/data/20ng-4class-train.jsonl"), "format": "classification",
                  "stage": "cls"},
}
CASES = [(m, meth) for m in ("smollm2-135m", "minilm-l6") for meth in ("full", "lora", "qlora")]
STEPS, BATCH, MAX_LEN, SAMPLES = 2, 8, 128, 32


def recipe(model: str, method: str, out: Path) -> dict:
    d = DATA[model]
    return {
        "model": model, "method": method, "stage": d["stage"],
        "data": {"train": d["train"], "format": d["format"], "eval_split": 0.0, "max_samples": SAMPLES},
        "train": {"max_steps": STEPS, "batch_size": BATCH, "max_length": MAX_LEN, "logging_steps": 1,
                  "lr": 1e-4},
        "eval": {"before": False, "prompts": []},
        "output": {"dir": str(out), "name": f"{model}-{method}", "overwrite": True},
    }


WORKER = """
import json, sys
from leantune.pipeline import train
from leantune.recipe import load_recipe
s = train(load_recipe(raw=json.loads(sys.argv[1])), progress=False)
print(json.dumps({"estimate_mb": s.estimate_mb, "estimate": s.estimate, "peak_mb": s.peak_memory_mb,
                  "memory_kind": s.memory_kind, "trainable": s.trainable_params, "total": s.total_params,
                  "wall_s": s.wall_time_s}))
"""


def run_case(model: str, method: str, out: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(recipe(model, method, out))],
                          capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        return {"model": model, "method": method, "error": proc.stderr.strip().splitlines()[-1:]}
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    err = None
    if r["estimate_mb"] and r["peak_mb"]:
        err = 100 * (r["estimate_mb"] - r["peak_mb"]) / r["peak_mb"]
    comps = {k: round(v / 2**20, 1) for k, v in ((r.get("estimate") or {}).get("components") or {}).items()}
    return {"model": model, "method": method, "predicted_mb": round(r["estimate_mb"] or 0, 1),
            "measured_mb": round(r["peak_mb"], 1), "memory_kind": r["memory_kind"],
            "error_pct": None if err is None else round(err, 1), "components_mb": comps,
            "setting": (r.get("estimate") or {}).get("setting"), "trainable_params": r["trainable"],
            "total_params": r["total"], "train_wall_s": round(r["wall_s"], 1),
            "case_wall_s": round(time.perf_counter() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", action="append", help="model/method, repeatable")
    args = ap.parse_args()
    cases = [c for c in CASES if not args.only or f"{c[0]}/{c[1]}" in args.only]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, method in cases:
            row = run_case(model, method, Path(tmp))
            rows.append(row)
            print(json.dumps({k: row.get(k) for k in ("model", "method", "predicted_mb", "measured_mb",
                                                       "error_pct", "error")}), flush=True)
    try:
        from common import machine_facts  # type: ignore
        facts = machine_facts()
    except Exception:
        facts = {}
    errs = [abs(r["error_pct"]) for r in rows if r.get("error_pct") is not None]
    result = {"benchmark": "estimate_accuracy", "conditions": {"steps": STEPS, "batch_size": BATCH,
              "max_length": MAX_LEN, "max_samples": SAMPLES, "device": "cpu (peak RSS of the process)"},
              "machine": facts, "rows": rows,
              "max_abs_error_pct": max(errs) if errs else None, "target_pct": 15}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "estimate_accuracy.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS / 'estimate_accuracy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
