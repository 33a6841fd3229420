"""1 vs 2 training processes at the same global batch, each run started by `leantune train --nproc N`.

SmolLM2-135M-Instruct (fp32 weights from the converted GGUF cache), SFT on the built-in
shell-help data (alpaca, loss on responses), max length 64, global batch 8 (1 process ×
8, or 2 processes × 4: DDP over gloo), fp32, seed 42, the same steps for every row; LoRA
r=16 on all linear layers (about 4.9M trainable parameters, a 20 MB gradient all-reduce
per step) and full fine-tuning (135M parameters, 540 MB per step).

Per row: tokens/s and seconds per step from the run's ``summary.json`` (all ranks'
tokens over the training loop's wall time, the first step included), and the peak RSS
of *every* process. ``summary.json``'s ``peak_memory_mb`` is rank 0's alone, so each
child interpreter loads a ``sitecustomize`` hook (through ``PYTHONPATH``) that writes its
``ru_maxrss`` at exit; the launcher and torchrun processes are left out. The losses at
every step and the final trained weights of the two runs are compared (they should agree
to float rounding, as tests/integration/test_distributed.py checks on a tiny model).

    .venv/bin/python benchmarks/scaling.py                  # LoRA and full, 1 and 2 processes: ~5 min on 2 cores
    .venv/bin/python benchmarks/scaling.py --methods lora   # ~2 min

Writes ``benchmarks/results/scaling.json`` and prints a markdown table. Each row runs once,
and the machine is shared: the same row's s/step varied up to 1.5× between runs here (LoRA,
1 process: 4.8, 5.6 and 7.3 s/step in three runs on 2026-12-02), so each row records the load
average before and after it. The agreement and the memory figures do not depend on the load.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUIET_ENV, RESULTS, ROOT, format_table, machine_facts, write_results  # noqa: E402

MODEL = "smollm2-135m"
DATA = {"train": "builtin:demo/shell_help_train.jsonl", "format": "alpaca", "eval_split": 0.0}
GLOBAL_BATCH, MAX_LENGTH, SEED = 8, 64, 42
METHODS = {"lora": ({"name": "lora", "r": 16, "alpha": 32, "targets": "all-linear", "dropout": 0.0}, 2e-4),
           "full": ({"name": "full"}, 2e-5)}

NOTE = ("This machine has 2 CPU cores. One process uses both (2 threads); two processes get one core "
        "each (the launcher sets OMP_NUM_THREADS=1). The hardware is the same in both rows, so a ratio "
        "above 1.0 is not scaling: it says that two single-threaded processes use the 2 cores better than "
        "one process with 2 threads does on these small matrices. What the rows can show: that 2 processes "
        "train the same model as 1 (losses and weights agree); what the gloo all-reduce of the gradients "
        "costs (20 MB per step for LoRA, 540 MB for full fine-tuning, through TCP on loopback, on the same "
        "cores); and memory: each DDP process holds a whole copy of the model, so the machine needs about "
        "twice the memory. They cannot show speed-up across devices, NCCL, FSDP or DeepSpeed; those need "
        "several GPUs.")

# Loaded by every child interpreter: its peak RSS (and torch's thread count) to a file at exit.
RSS_HOOK = '''
import atexit, json, os, resource, sys

def _leantune_bench_rss():
    torch = sys.modules.get("torch")
    record = {"pid": os.getpid(), "rank": os.environ.get("RANK"),
              "threads": torch.get_num_threads() if torch else None,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    path = os.path.join(os.environ["LEANTUNE_BENCH_RSS_DIR"], f"{os.getpid()}.json")
    with open(path, "w") as fh:
        json.dump(record, fh)

if os.environ.get("LEANTUNE_BENCH_RSS_DIR"):
    atexit.register(_leantune_bench_rss)
'''


def write_recipe(folder: Path, method: str, nproc: int, steps: int) -> Path:
    spec, lr = METHODS[method]
    recipe = {"model": MODEL, "method": [spec], "stage": "sft", "data": DATA,
              "train": {"max_steps": steps, "batch_size": GLOBAL_BATCH // nproc, "max_length": MAX_LENGTH, "lr": lr,
                        "seed": SEED, "device": "cpu", "precision": "fp32", "logging_steps": 1},
              "eval": {"before": False}, "output": {"dir": str(folder / "runs"), "name": f"{method}-{nproc}p"}}
    path = folder / f"{method}-{nproc}p.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def run_row(folder: Path, method: str, nproc: int, steps: int, timeout: float) -> dict:
    """Train one row through the CLI; its summary, run.json, losses and every process's peak RSS."""
    recipe = write_recipe(folder, method, nproc, steps)
    rss_dir = folder / f"rss-{method}-{nproc}p"
    rss_dir.mkdir()
    hook = folder / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(RSS_HOOK)
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                        "OMP_NUM_THREADS")}  # the launcher picks the threads per process
    env.update(QUIET_ENV, TRANSFORMERS_OFFLINE="1", LEANTUNE_BENCH_RSS_DIR=str(rss_dir),
               PYTHONPATH=os.pathsep.join([str(hook), env.get("PYTHONPATH", "")]))
    load_before, t0 = os.getloadavg()[0], time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "leantune", "train", str(recipe), "--nproc", str(nproc)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    command_s = time.perf_counter() - t0
    run = folder / "runs" / f"{method}-{nproc}p"
    if done.returncode != 0 or not (run / "summary.json").is_file():
        return {"method": method, "processes": nproc, "error": f"exit status {done.returncode}",
                "output_tail": (done.stdout + done.stderr)[-3000:]}
    summary = json.loads((run / "summary.json").read_text())
    meta = json.loads((run / "run.json").read_text())
    records = [json.loads(p.read_text()) for p in rss_dir.glob("*.json")]
    ranks = sorted((r for r in records if r["rank"] is not None), key=lambda r: int(r["rank"])) or records
    return {
        "method": method, "processes": nproc, "batch_per_process": GLOBAL_BATCH // nproc,
        "strategy": meta["strategy"], "precision": meta["precision"], "effective_batch": meta["effective_batch"],
        "threads_per_process": [r["threads"] for r in ranks],
        "steps": summary["steps"], "train_wall_s": round(summary["wall_time_s"], 2),
        "s_per_step": round(summary["wall_time_s"] / summary["steps"], 3),
        "tokens_per_s": round(summary["tokens_per_s"], 1),
        "command_wall_s": round(command_s, 1),
        "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "peak_rss_mb_per_process": [round(r["peak_rss_mb"]) for r in ranks],
        "summary_peak_memory_mb_rank0": round(summary["peak_memory_mb"]),
        "trainable_params": summary["trainable_params"],
        "losses": [r["loss"] for r in summary["history"] if "loss" in r],
        "run_dir": run,
    }


def agreement(one: dict, two: dict) -> dict:
    """How far the 2-process run is from the 1-process run: losses (relative) and trained tensors (absolute)."""
    from safetensors.torch import load_file

    rel = max(abs(a - b) / abs(a) for a, b in zip(one["losses"], two["losses"]))
    tensors = [{k: v.float() for f in sorted((r["run_dir"] / "adapter").glob("*.safetensors"))
                for k, v in load_file(f).items()} for r in (one, two)]
    weight = max((tensors[0][k] - tensors[1][k]).abs().max().item() for k in tensors[0])
    return {"max_loss_rel_diff": rel, "max_weight_abs_diff": weight, "tensors_compared": len(tensors[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per run (default 8)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per run before it is abandoned")
    ap.add_argument("--out", default=str(RESULTS / "scaling.json"), help="results JSON path")
    a = ap.parse_args()
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    if unknown := [m for m in methods if m not in METHODS]:
        ap.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")

    os.environ["GIT_OPTIONAL_LOCKS"] = "0"  # machine_facts' `git status`: never lock the index
    facts = machine_facts()
    print(f"# 1 vs 2 processes on {facts['cpu_model']} ({facts['usable_cpus']} CPUs, native bf16: "
          f"{facts['native_bf16']}), load average {facts['load_average_at_start']}\n\n{NOTE}\n", flush=True)
    rows, checks, t_all = [], {}, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="leantune-scaling-") as tmp:
        for method in methods:
            pair = {}
            for nproc in (1, 2):
                print(f"## {method}, {nproc} process(es) × batch {GLOBAL_BATCH // nproc}, {a.steps} steps", flush=True)
                pair[nproc] = row = run_row(Path(tmp), method, nproc, a.steps, a.timeout)
                if "error" in row:
                    print(f"  FAILED ({row['error']}):\n{row['output_tail']}", flush=True)
                else:
                    print(f"  {row['tokens_per_s']} tokens/s, {row['s_per_step']} s/step, "
                          f"peak RSS {row['peak_rss_mb_per_process']} MB", flush=True)
                rows.append(row)
            if not any("error" in r for r in pair.values()):
                checks[method] = agreement(pair[1], pair[2])
                pair[2]["tokens_per_s_vs_1"] = round(pair[2]["tokens_per_s"] / pair[1]["tokens_per_s"], 3)
                pair[1]["tokens_per_s_vs_1"] = 1.0
        for row in rows:
            row.pop("run_dir", None)

    headers = ["method", "processes × batch", "threads/process", "s/step", "tokens/s", "vs 1 process",
               "peak RSS per process (MB)", "RSS all processes (MB)"]
    table = format_table(headers, [
        [r["method"], f"{r['processes']} × {r['batch_per_process']}", "—", "failed", "—", "—", "—", "—"]
        if "error" in r else
        [r["method"], f"{r['processes']} × {r['batch_per_process']}", "/".join(map(str, r["threads_per_process"])),
         f"{r['s_per_step']:.2f}", f"{r['tokens_per_s']:.1f}", f"{r.get('tokens_per_s_vs_1', float('nan')):.2f}x",
         " / ".join(str(m) for m in r["peak_rss_mb_per_process"]), str(sum(r["peak_rss_mb_per_process"]))]
        for r in rows])
    print(f"\n{table}\n")
    for method, c in checks.items():
        print(f"{method}: 2 processes vs 1: losses within {c['max_loss_rel_diff']:.1e} (relative), "
              f"{c['tensors_compared']} trained tensors within {c['max_weight_abs_diff']:.1e} (absolute)")
    payload = {
        "benchmark": "scaling",
        "command": " ".join([".venv/bin/python benchmarks/scaling.py", *sys.argv[1:]]),
        "conditions": {
            "model": MODEL, "weights": "fp32 (converted GGUF cache)", "data": DATA["train"], "format": "alpaca",
            "global_batch": GLOBAL_BATCH, "max_length": MAX_LENGTH, "precision": "fp32", "seed": SEED,
            "steps": a.steps, "methods": {m: {"spec": METHODS[m][0], "lr": METHODS[m][1]} for m in methods},
            "launch": "`leantune train RECIPE --nproc N` in a subprocess (N=2: torchrun, DDP over gloo)",
            "tokens_per_s": "summary.json: non-pad tokens of all ranks / the training loop's wall time "
                            "(first step included)",
            "peak_rss": "ru_maxrss of each training process at exit (sitecustomize hook); the launcher and "
                        "torchrun processes are not counted",
        },
        "note": NOTE,
        "machine": facts,
        "total_wall_s": round(time.perf_counter() - t_all, 1),
        "table": table,
        "agreement_2_vs_1": checks,
        "rows": rows,
    }
    print(f"wrote {write_results(Path(a.out), payload)} in {payload['total_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
