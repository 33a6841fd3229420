"""How close is the memory estimate (``leantune.guide.estimate``) to the measured peak?

Part 1, measured here. For SmolLM2-135M (instruction SFT on the built-in shell-help
data, alpaca, loss on responses only) and MiniLM-L6 (20 Newsgroups, 4 classes, new
head) × full / LoRA / QLoRA × each precision ``precision: auto`` can pick on this machine
(``train.precision``: fp32 always, bf16 autocast where the CPU has native bf16, see
``training/device.py: cpu_has_native_bf16``), each seed trains in its own subprocess through
``pipeline.train``, which records the estimate it made before loading the model
(``summary.estimate_mb``: the longest training sequence and the share of labelled
positions of the tokenized data) and the process's peak RSS. The error is
(predicted − measured mean) / measured mean. Each worker also records, without
disturbing the peak, what the estimate's components correspond to: the RSS before the
model loads (the ``overhead`` term), and at the end of the forward pass with the highest
RSS the file-backed part (memory-mapped weights, shared libraries), the anonymous part
and glibc's heap (in use and free: freed blocks it keeps, which the estimate does not
model).

Part 2, published figures: no training, no GPU. The estimate for the conditions of published
GPU memory tables (LLaMA-Factory's README "hardware requirement", torchtune's README memory
tables: Llama2-7B of mid-2024 and Llama 3.1 8B/70B, one GPU and FSDP over eight; the HF PEFT
README's LoRA table, plain and with DeepSpeed ZeRO-3 offload), with the conditions and whether
they are stated or assumed (``PUBLISHED``). Their figures are quoted (the torchtune README's
Llama 3.1 table as of commit 0031bfb, the PEFT README's table, and the recipe configs named in each
row's conditions, read from stored copies of those repositories), not re-measured.

    .venv/bin/python benchmarks/estimate_accuracy.py            # full run: 6 cases × each precision × 2 seeds
    .venv/bin/python benchmarks/estimate_accuracy.py --quick    # 1 seed, 16 examples, batch 4, max length 64, 8 steps
    .venv/bin/python benchmarks/estimate_accuracy.py --only minilm-l6/lora --only minilm-l6/full --update
        # re-measure those cases and replace their rows in the existing --out file (listed under "updates")
    .venv/bin/python benchmarks/estimate_accuracy.py --published    # part 2 only: seconds, updates the JSON
    .venv/bin/python benchmarks/estimate_accuracy.py --only smollm2-135m/lora/bf16 --precision bf16
        # a case is model/method (every precision) or model/method/precision

Sizes: 96 examples, batch 8 (12 length-grouped batches of varying length per epoch), max length
128, 24 optimizer steps (two epochs): each epoch runs the longest batch (the one the estimate
sizes), and under ``train.cpu_heap: reuse`` (the default) glibc's heap settles only after several
steps over changing shapes (2 steps of one batch shape showed 0.2–1.0 GB less of it). ``--quick``:
16 examples, batch 4, max length 64, 8 steps. Timing on a Xeon with AMX (2026-12-04, 1 thread):
see ``total_wall_s`` in the JSON.
Peak RSS does not depend on the thread count beyond a few MB of per-thread buffers.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from published_memory import NOT_COMPARED, TARGET_PCT, published, published_table  # noqa: E402
from common import (  # noqa: E402
    RESULTS, ROOT, emit, format_table, machine_facts, peak_rss_mb, run_worker, write_results,
)

DATA = {
    "smollm2-135m": {"train": "builtin:demo/shell_help_train.jsonl", "format": "alpaca", "stage": "sft"},
    "minilm-l6": {"train": str(ROOT / "recipes/data/20ng-4class-train.jsonl"), "format": "classification",
                  "stage": "cls"},
}
CASES = [(m, meth) for m in ("smollm2-135m", "minilm-l6") for meth in ("full", "lora", "qlora")]
PRECISION_NOTES = {"fp32": "fp32 weights and compute", "bf16": "fp32 weights, bf16 autocast (native bf16 CPU)"}
FULL = {"seeds": 2, "samples": 96, "batch": 8, "max_length": 128, "steps": 24}
QUICK = {"seeds": 1, "samples": 16, "batch": 4, "max_length": 64, "steps": 8}
MB = 2**20


def machine_precisions() -> list[str]:
    """The precisions ``precision: auto`` can pick on this machine: fp32, and bf16 autocast
    where the CPU has native bf16 (what ``training/engine.py`` checks)."""
    from leantune.training.device import cpu_has_native_bf16

    return ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]


def recipe(model: str, method: str, out: Path, seed: int, size: dict, precision: str = "fp32") -> dict:
    d = DATA[model]
    return {
        "model": model, "method": method, "stage": d["stage"],
        "data": {"train": d["train"], "format": d["format"], "eval_split": 0.0, "max_samples": size["samples"]},
        "train": {"max_steps": size["steps"], "batch_size": size["batch"], "max_length": size["max_length"],
                  "logging_steps": 1, "lr": 1e-4, "seed": seed, "precision": precision,
                  "cpu_heap": size.get("cpu_heap", "auto")},
        "eval": {"before": False, "prompts": []},
        "output": {"dir": str(out), "name": f"{model}-{method}", "overwrite": True},
    }


# --------------------------------------------------------------------------- worker

def _status_mb() -> dict:
    """VmRSS / RssAnon / RssFile of this process (MB)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_mb() -> dict | None:
    """glibc's main heap: size, bytes in use, free bytes it keeps (None off glibc)."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _Mallinfo2
    m = fn()
    return {"heap": m.arena / MB, "in_use": m.uordblks / MB, "free": m.fordblks / MB}


def worker(model: str, method: str, seed: int, size: dict, precision: str) -> dict:
    """One training run through ``pipeline.train``; probes read RSS at the phase boundaries
    (they read /proc and mallinfo only, so the measured peak is the run's own)."""
    import leantune.pipeline as pipeline
    from leantune.recipe import load_recipe

    probes: dict = {"forward_ends": 0}
    load = pipeline.load_model

    def probed_load(*args, **kwargs):
        probes["before_load"] = _status_mb()
        model_ = load(*args, **kwargs)
        probes["after_load"] = _status_mb()
        return model_

    class ProbedEngine(pipeline.Engine):
        def __init__(self, model_, features, cfg, run_dir, collate, loss_fn, **kwargs):
            def probed_loss(m, batch):
                loss = loss_fn(m, batch)
                now = _status_mb()
                probes["forward_ends"] += 1
                if now["VmRSS"] > probes.get("peak_forward", {}).get("VmRSS", 0):
                    probes["peak_forward"] = {**now, "glibc": _heap_mb(), "step": probes["forward_ends"],
                                              "batch_shape": list(batch["input_ids"].shape)}
                return loss

            super().__init__(model_, features, cfg, run_dir, collate, probed_loss, **kwargs)

    pipeline.load_model, pipeline.Engine = probed_load, ProbedEngine
    with tempfile.TemporaryDirectory(prefix="estimate_accuracy_") as tmp:
        s = pipeline.train(load_recipe(raw=recipe(model, method, Path(tmp), seed, size, precision)),
                           progress=False)
    return {"estimate_mb": s.estimate_mb, "estimate": s.estimate, "peak_mb": max(s.peak_memory_mb, peak_rss_mb()),
            "memory_kind": s.memory_kind, "precision": s.precision, "trainable": s.trainable_params, "total": s.total_params,
            "train_wall_s": s.wall_time_s, "steps": s.steps, "probes": probes}


# --------------------------------------------------------------------------- driver

def summarize(model: str, method: str, precision: str, runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"model": model, "method": method, "precision": precision, "error": runs[0].get("error"),
                "stderr_tail": runs[0].get("stderr_tail")}
    peaks = [r["peak_mb"] for r in ok]
    mean = statistics.mean(peaks)
    predicted = ok[0]["estimate_mb"]
    est = ok[0]["estimate"] or {}
    fwd = [r["probes"].get("peak_forward", {}) for r in ok]
    heap_free = [f["glibc"]["free"] for f in fwd if f.get("glibc")]
    return {
        "model": model, "method": method, "precision": precision, "trained_precision": ok[0].get("precision"),
        "n": len(ok),
        "predicted_mb": round(predicted, 1) if predicted else None,
        "predicted_per_seed_mb": [round(r["estimate_mb"] or 0, 1) for r in ok],
        "measured_mb": [round(p, 1) for p in peaks], "measured_mean_mb": round(mean, 1),
        "measured_std_mb": round(statistics.stdev(peaks), 1) if len(peaks) > 1 else 0.0,
        "error_pct": round(100 * (predicted - mean) / mean, 1) if predicted else None,
        "components_mb": {k: round(v / MB, 1) for k, v in (est.get("components") or {}).items()},
        "notes": est.get("notes"), "setting": est.get("setting"),
        "trainable_params": ok[0]["trainable"], "total_params": ok[0]["total"],
        "measured_rss_before_load_mb": [round(r["probes"]["before_load"]["VmRSS"], 1) for r in ok],
        "measured_at_peak_forward": [{k: (round(v, 1) if isinstance(v, float) else
                                          {a: round(b, 1) for a, b in v.items()} if isinstance(v, dict) else v)
                                      for k, v in f.items()} for f in fwd],
        "heap_free_at_peak_forward_mb": [round(x, 1) for x in heap_free],
        "train_wall_s": [round(r["train_wall_s"], 1) for r in ok],
    }


def row_key(r: dict) -> tuple[str, str, str]:
    return r["model"], r["method"], r.get("precision", "fp32")  # rows before precisions were added: fp32


def tables(rows: list[dict], pub: list[dict]) -> tuple[str, str]:
    body = []
    for r in rows:
        case = f"{r['model']} {r['method']} {row_key(r)[2]}"
        if "error" in r:
            body.append([case, "-", "error", "-", "-", "-"])
            continue
        comps = r["components_mb"]
        body.append([
            case, f"{r['predicted_mb']:,.0f}",
            f"{r['measured_mean_mb']:,.0f} ± {r['measured_std_mb']:.0f} (n={r['n']})",
            f"{r['error_pct']:+.1f} %",
            f"{statistics.mean(r['measured_rss_before_load_mb']):,.0f} / {comps.get('overhead', 0):,.0f}",
            f"{statistics.mean(r['heap_free_at_peak_forward_mb']):,.0f}" if r["heap_free_at_peak_forward_mb"] else "-",
        ])
    measured = format_table(["case", "predicted MB", "measured peak RSS MB", "error",
                             "RSS before load / overhead term MB", "heap free at peak MB"], body)
    return measured, published_table(pub)


def published_only(out: Path) -> int:
    """``--published``: recompute the published rows (no training, no GPU) and replace them in ``out``,
    keeping its measured rows."""
    pub = published()
    table = published_table(pub)
    print(table + "\n\n(* outside ±15 %: see each row's explanation in the JSON)")
    if not out.is_file():
        print(f"{out} does not exist: nothing updated")
        return 0
    payload = json.loads(out.read_text())
    measured, _ = tables(payload["rows"], pub)
    payload.update(published=pub, published_not_compared=[{"source": s, "row": r, "why": w}
                                                           for s, r, w in NOT_COMPARED],
                   published_updated={"command": " ".join([".venv/bin/python benchmarks/estimate_accuracy.py",
                                                           *sys.argv[1:]]),
                                      "date": time.strftime("%Y-%m-%d")},
                   markdown=measured + "\n\n" + table)
    print(f"wrote {write_results(out, payload)}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 16 examples, batch 4, max length 64, 8 steps")
    ap.add_argument("--only", action="append",
                    help="model/method (every --precision) or model/method/precision, repeatable (default: all six)")
    ap.add_argument("--precision", action="append", choices=sorted(PRECISION_NOTES),
                    help="repeatable (default: each precision the machine can pick: fp32, and bf16 where native)")
    ap.add_argument("--seeds", type=int, help="runs per case (default: 2, --quick 1)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per worker")
    ap.add_argument("--out", default=str(RESULTS / "estimate_accuracy.json"))
    ap.add_argument("--update", action="store_true",
                    help="re-measure only the --only cases and replace their rows in the existing --out file, "
                         "with the sizes recorded there")
    ap.add_argument("--published", action="store_true",
                    help="only the published figures (no training, no GPU): print them and replace them in --out")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        model, method, precision = a.worker.split("/")
        emit(worker(model, method, a.seed, json.loads(a.size), precision))
        return 0

    if a.published:
        return published_only(Path(a.out))
    previous = json.loads(Path(a.out).read_text()) if a.update else None
    if a.update and not a.only:
        ap.error("--update needs --only: the cases to re-measure")
    size = dict(QUICK if a.quick else FULL)
    if a.seeds:
        size["seeds"] = a.seeds
    if previous:  # same conditions as the rows kept
        size = {k: previous["conditions"][k] for k in FULL}
    precisions = a.precision or machine_precisions()
    cases = [(m, meth, p) for m, meth in CASES for p in precisions
             if not a.only or f"{m}/{meth}" in a.only or f"{m}/{meth}/{p}" in a.only]
    facts = machine_facts()
    print(f"# estimate accuracy on {facts['cpu_model']} ({facts['usable_cpus']} CPUs, torch threads "
          f"{facts.get('torch_threads')}), load average {facts['load_average_at_start']}", flush=True)
    t_all = time.perf_counter()
    rows = []
    for model, method, precision in cases:
        runs = []
        for seed in range(size["seeds"]):
            t0 = time.perf_counter()
            try:
                r = run_worker(Path(__file__), ["--worker", f"{model}/{method}/{precision}", "--seed", str(42 + seed),
                                                "--size", json.dumps(size)], timeout=a.timeout)
            except Exception as exc:  # subprocess.TimeoutExpired
                r = {"error": f"{type(exc).__name__}: {exc}"}
            r["process_wall_s"] = round(time.perf_counter() - t0, 1)
            runs.append(r)
            if "error" in r:
                print(f"  {model} {method} {precision} seed {42 + seed}: {r['error']}\n{r.get('stderr_tail', '')}", flush=True)
            else:
                print(f"  {model} {method} {precision} seed {42 + seed}: predicted {r['estimate_mb']:,.0f} MB, peak RSS "
                      f"{r['peak_mb']:,.0f} MB ({r['process_wall_s']:.0f} s)", flush=True)
        rows.append(summarize(model, method, precision, runs))
    pub = published()
    command = " ".join([".venv/bin/python benchmarks/estimate_accuracy.py", *sys.argv[1:]])
    updates, wall = [], round(time.perf_counter() - t_all, 1)
    if previous:
        updates = [*previous.get("updates", []), {"command": command, "cases": ["/".join(c) for c in cases],
                                                  "machine": facts, "wall_s": wall}]
        fresh = {row_key(r): r for r in rows}
        rows = [fresh.get(row_key(r), r) for r in previous["rows"]]
        rows += [r for k, r in fresh.items() if k not in {row_key(x) for x in previous["rows"]}]
        command, facts, wall = previous["command"], previous["machine"], previous["total_wall_s"]
    measured, pub_table = tables(rows, pub)
    errs = [abs(r["error_pct"]) for r in rows if r.get("error_pct") is not None]
    by_precision = {p: max((abs(r["error_pct"]) for r in rows if row_key(r)[2] == p and r.get("error_pct") is not None),
                           default=None) for p in sorted({row_key(r)[2] for r in rows})}
    print("\n" + measured + "\n\n" + pub_table + "\n")
    payload = {
        "benchmark": "estimate_accuracy",
        "command": command,
        "conditions": {**size, "device": "cpu",
                       "precision": {p: PRECISION_NOTES[p] for p in sorted({row_key(r)[2] for r in rows})},
                       "measured": "ru_maxrss of the worker process (one process per case and seed)",
                       "error": "(predicted - mean measured) / mean measured",
                       "data": {m: d["train"].replace(str(ROOT) + "/", "") for m, d in DATA.items()}},
        "machine": facts,
        "total_wall_s": wall,
        "updates": updates,
        "rows": rows,
        "max_abs_error_pct": max(errs) if errs else None,
        "max_abs_error_pct_by_precision": by_precision,
        "target_pct": TARGET_PCT,
        "published": pub,
        "published_not_compared": [{"source": s, "row": r, "why": w} for s, r, w in NOT_COMPARED],
        "markdown": measured + "\n\n" + pub_table,
    }
    print(f"wrote {write_results(Path(a.out), payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
