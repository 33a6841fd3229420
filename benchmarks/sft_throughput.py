"""SFT training throughput and MFU: leantune's engine vs TRL's SFTTrainer, in one run.

SmolLM2-135M (packaged, fp32 weights), batch 8, max length 128, 120 ChatterBot English
dialog pairs, loss on the responses only. Every row is a subprocess of its own (its own
peak RSS); leantune and TRL at one configuration form a pair that runs side by side and
takes turns step by step (``common.run_lockstep``), so drift on a shared machine hits both.
At the equal settings a third worker takes its turns too: the floor (``sft_floor.py``), a bare
PyTorch step over the same model, batches and settings, which bounds what any trainer can reach.

Configurations (each in fp32 and under bf16 autocast):
  defaults  each side at its defaults (leantune: no checkpointing, length-grouped batches;
            TRL: gradient checkpointing, random batches)
  equal-A   both without gradient checkpointing, length-grouped batches
  equal-B   both with gradient checkpointing, random batches
  compiled  equal-A with both sides compiled: leantune ``train.compile: true`` (each layer,
            in place), TRL ``torch_compile=True`` (the whole model); compiling falls in the
            untimed warm-up steps, its time is in the raw step times
  compiled-B  equal-B with both sides compiled
  packing   equal-B with packed rows: leantune ``train.packing: true``, TRL ``packing=True``
            (best-fit decreasing, which turns on its ``padding_free`` collator)

MFU: model FLOPs per step (``mfu.py``: forward 2·N·tokens plus attention and the LM head at the
response tokens; backward 2 × forward for full fine-tuning, for LoRA only the input gradients
of the frozen weights) over the step time, over the matmul peak this run measures before and
after the rows (``torch.matmul`` at the model's shapes, same threads).

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/sft_throughput.py          # all rows
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/sft_throughput.py --quick --out /tmp/q.json
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS,
    StepClock,
    emit,
    format_table,
    machine_facts,
    median,
    run_lockstep,
    write_results,
)
from mfu import matmul_peak, model_shapes, step_flops  # noqa: E402
from sft_workers import (  # noqa: E402
    BATCH,
    LORA,
    LR,
    MAX_LENGTH,
    MODEL,
    N_EXAMPLES,
    SEED,
    SKIP_LOSS_AFTER,
    worker_floor,
    worker_leantune,
    worker_leantune_release,
    worker_trl,
)

PRECISIONS = ("fp32", "bf16")
# setting -> (leantune train options, TRL SFTConfig options, methods run, description)
SETTINGS = {
    "defaults": ({}, {}, ("lora", "qlora", "full"), "each side at its defaults"),
    "equal-A": ({"gradient_checkpointing": False, "group_by_length": True},
                {"gradient_checkpointing": False, "train_sampling_strategy": "group_by_length"},
                ("lora", "qlora", "full"), "no checkpointing, length-grouped batches"),
    "equal-B": ({"gradient_checkpointing": True, "group_by_length": False},
                {"gradient_checkpointing": True, "train_sampling_strategy": "random"},
                ("lora", "full"), "checkpointing, random batches"),
    "compiled": ({"gradient_checkpointing": False, "group_by_length": True, "compile": True},
                 {"gradient_checkpointing": False, "train_sampling_strategy": "group_by_length", "torch_compile": True},
                 ("lora", "full"), "equal-A, both compiled (leantune: train.compile, each layer; TRL: torch_compile, "
                 "the whole model)"),
    "compiled-B": ({"gradient_checkpointing": True, "group_by_length": False, "compile": True},
                   {"gradient_checkpointing": True, "train_sampling_strategy": "random", "torch_compile": True},
                   ("lora",), "equal-B, both compiled"),
    "packing": ({"gradient_checkpointing": True, "group_by_length": False, "packing": True},
                {"gradient_checkpointing": True, "packing": True},
                ("lora", "full"), "checkpointing, packed rows (TRL: packing + padding_free)"),
}
# settings that also run the floor (sft_floor.py: the bare PyTorch step, the bound on any trainer's speed)
FLOOR = ("equal-A", "equal-B")
STEPS, WARMUP, QUICK_STEPS, QUICK_WARMUP = 15, 3, 3, 1


def groups_for(precisions, settings, methods) -> list[str]:
    return [f"{p}/{s}/{m}" for p, s in itertools.product(precisions, settings)
            for m in SETTINGS[s][2] if m in methods]


def summarize(raw: dict, warmup: int, method: str, shapes: dict) -> dict:
    timed = raw["steps"][warmup:]
    seconds = sum(s["s"] for s in timed) or float("nan")
    every = raw["steps"]
    return {
        "timed_steps": len(timed), "median_step_s": median([s["s"] for s in timed]),
        "response_tokens_per_s": sum(s["response_tokens"] for s in timed) / seconds,
        "real_tokens_per_s": sum(s["real_tokens"] for s in timed) / seconds,
        "achieved_gflops": sum(step_flops(s, method, shapes) for s in timed) / seconds / 1e9,
        "padding_fraction": 1 - sum(s["real_tokens"] for s in every) / max(1, sum(s["padded_tokens"] for s in every)),
        "sys_fraction": sum(s["sys_s"] for s in timed) / max(1e-9, sum(s["user_s"] + s["sys_s"] for s in timed)),
        "peak_rss_mb": raw["peak_rss_mb"], "loss_after": raw["loss_after"],
    }


# --------------------------------------------------------------------------- driver

def run_worker(a) -> None:
    group, side = a.worker.rsplit(":", 1)
    precision, setting, method = group.split("/")
    options = SETTINGS[setting][1 if side == "trl" else 0]
    fn = {"leantune": worker_leantune, "trl": worker_trl, "floor": worker_floor,
          "leantune-release": worker_leantune_release}[side]
    clock = StepClock(a.sync)
    emit(fn(method, precision, a.steps, clock, options))


def table(precision: str, rows: dict, peak: float) -> str:
    headers = ["setting", "method", "side", "response tok/s", "peak RSS (MB)", "tok/s vs TRL", "RSS vs TRL",
               "padding", "GFLOP/s", "MFU", "loss after"]
    out = []
    for name, e in rows.items():
        if not name.startswith(precision + "/"):
            continue
        _, setting, method, side = name.replace(":", "/").split("/")
        if "response_tokens_per_s" not in e:
            out.append([setting, method, side, e.get("skipped") or "failed", *["-"] * 7])
            continue
        out.append([setting, method, side, f"{e['response_tokens_per_s']:.1f}", f"{e['peak_rss_mb']:.0f}",
                    f"{e['speed_vs_trl']:.2f}x" if "speed_vs_trl" in e else "-",
                    f"{e['rss_vs_trl']:.2f}x" if "rss_vs_trl" in e else "-",
                    f"{100 * e['padding_fraction']:.0f}%", f"{e['achieved_gflops']:.1f}",
                    f"{100 * e['achieved_gflops'] / peak:.0f}%", f"{e['loss_after']:.4f}"])
    return format_table(headers, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated: fp32, bf16")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    ap.add_argument("--methods", default="lora,qlora,full", help="comma-separated: lora, qlora, full")
    ap.add_argument("--steps", type=int, help=f"steps per row, warm-up included (default {STEPS})")
    ap.add_argument("--warmup", type=int, help=f"untimed first steps (default {WARMUP})")
    ap.add_argument("--out", default=str(RESULTS / "sft_throughput.json"), help="results JSON path")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: bf16, LoRA only, {QUICK_STEPS} steps "
                                                         f"({QUICK_WARMUP} warm-up), no loss after training")
    ap.add_argument("--allocator-row", action="store_true",
                    help="also run leantune with train.cpu_heap: release (freed activations back to the OS)")
    ap.add_argument("--sequential", action="store_true",
                    help="run a group's workers one after the other, each alone, instead of taking turns")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--sync", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return run_worker(a)

    precisions, settings, methods = (x.split(",") for x in (a.precisions, a.settings, a.methods))
    if a.quick:
        precisions, methods = ["bf16"], ["lora"]
    steps = a.steps or (QUICK_STEPS if a.quick else STEPS)
    warmup = a.warmup if a.warmup is not None else (QUICK_WARMUP if a.quick else WARMUP)
    bad = (set(precisions) - set(PRECISIONS)) | (set(settings) - set(SETTINGS)) | (set(methods) - set(LR))
    if bad:
        ap.error(f"unknown {', '.join(sorted(bad))}")
    from leantune.models.loading import resolve_model_path
    from leantune.recipe import TrainSection

    has_packing = "packing" in TrainSection.model_fields
    facts = machine_facts()
    print(f"# SFT throughput on {facts['cpu_model']} ({facts['usable_cpus']} usable CPUs, native bf16: "
          f"{facts['native_bf16']}), load average {facts['load_average_at_start']}", flush=True)
    shapes = model_shapes(Path(resolve_model_path(MODEL)) / "config.json", LORA["r"])
    peak_tokens = [BATCH * 64, BATCH * MAX_LENGTH]
    peaks = [matmul_peak(shapes, peak_tokens)]
    print(f"matmul peak (GFLOP/s, {peaks[0]['threads']} threads): fp32 {peaks[0]['fp32']['peak_gflops']}, "
          f"bf16 {peaks[0]['bf16']['peak_gflops']}", flush=True)
    results: dict[str, dict] = {}
    t_all = time.perf_counter()
    for group in groups_for(precisions, settings, methods):
        names = [f"{group}:leantune", f"{group}:trl"] + ([f"{group}:floor"] if group.split("/")[1] in FLOOR else [])
        names += [f"{group}:leantune-release"] if a.allocator_row else []
        if group.split("/")[1] == "packing" and not has_packing:
            for name in names:
                results[name] = {"skipped": "TrainSection has no packing field yet"}
            continue
        print(f"## {group}: {', '.join(n.split(':')[1] for n in names)} "
              f"{'one after the other' if a.sequential else 'in lock-step'}, {steps} steps "
              f"({warmup} warm-up)", flush=True)
        t0 = time.perf_counter()
        workers = {n: ["--worker", n, "--steps", str(steps)] for n in names}
        raws = {}
        for turn in ([{n: w} for n, w in workers.items()] if a.sequential else [workers]):
            raws.update(run_lockstep(Path(__file__), turn, steps, env={SKIP_LOSS_AFTER: "1"} if a.quick else None,
                                     log=lambda m: print(m, flush=True),
                                     step_timeout=1800))  # a compiled row's first steps compile
        for name in names:
            entry = {"steps": steps, "warmup_steps": warmup, "raw": raws[name]}
            if "error" in raws[name]:
                print(f"  {name}: FAILED {raws[name]['error']}\n{raws[name].get('stderr_tail', '')}", flush=True)
            else:
                entry.update(summarize(raws[name], warmup, group.split("/")[2], shapes))
            results[name] = entry
        lt, trl = results[names[0]], results[names[1]]
        if "response_tokens_per_s" in lt and "response_tokens_per_s" in trl:
            for e in (results[n] for n in names if "response_tokens_per_s" in results[n]):
                e["speed_vs_trl"] = e["response_tokens_per_s"] / trl["response_tokens_per_s"]
                e["rss_vs_trl"] = e["peak_rss_mb"] / trl["peak_rss_mb"]
        speeds = ", ".join(f"{n.split(':')[1]} {results[n].get('response_tokens_per_s', float('nan')):.1f}"
                           for n in names)
        print(f"  {group} took {time.perf_counter() - t0:.0f} s; response tok/s {speeds}", flush=True)
        report(a, steps, warmup, shapes, peaks, results, facts, time.perf_counter() - t_all, complete=False)
    peaks.append(matmul_peak(shapes, peak_tokens))
    report(a, steps, warmup, shapes, peaks, results, facts, time.perf_counter() - t_all, complete=True)


def report(a, steps, warmup, shapes, peaks, results, facts, wall_s: float, complete: bool) -> None:
    """Tables and the JSON, after every pair (``complete`` false: a run cut short keeps what it measured)."""
    peak = {p: max(x[p]["peak_gflops"] for x in peaks) for p in PRECISIONS}
    for name, e in results.items():
        if "achieved_gflops" in e:
            e["mfu"] = e["achieved_gflops"] / peak[name.split("/")[0]]
    tables = {p: table(p, results, peak[p]) for p in PRECISIONS if any(n.startswith(p) for n in results)}
    if complete:
        for p, text in tables.items():
            print(f"\n{p} (matmul peak {peak[p]:.0f} GFLOP/s):\n{text}")
    payload = {
        "benchmark": "sft_throughput", "complete": complete,
        "command": " ".join(["OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/sft_throughput.py",
                             *sys.argv[1:]]),
        "conditions": {
            "model": MODEL, "batch_size": BATCH, "max_length": MAX_LENGTH, "examples": N_EXAMPLES,
            "data": "ChatterBot English dialog pairs, random.Random(0).sample(…, 120)", "loss": "responses only",
            "lr": LR, "lora": LORA, "seed": SEED, "steps": steps, "warmup": warmup,
            "settings": {k: {"leantune": v[0], "trl": v[1], "methods": v[2], "what": v[3]}
                         for k, v in SETTINGS.items()},
            "threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
            "timing": "each optimizer step after its batch is collated (TRL: on_step_begin..on_step_end); "
                      + ("each worker alone, one after the other" if a.sequential else
                         "the workers of a group take turns step by step"),
            "response_tokens": "next-token targets of leantune's response mask of the same examples, for both sides",
            "flops": "forward 2·N_lin·T + 4·n_layers·d_attn·K + 2·V·d·R (+2·N_adapter·T); backward full FT 2× "
                     "forward; LoRA/QLoRA: linear and head 1× (input gradients), attention 2×, adapters 2× (mfu.py)",
            "model_shapes": shapes,
        },
        "matmul_peak": {"runs": peaks, "peak_gflops": peak, "tokens": [BATCH * 64, BATCH * MAX_LENGTH]},
        "machine": facts,
        "total_wall_s": round(wall_s, 1),
        "tables": tables,
        "rows": results,
    }
    path = write_results(Path(a.out), payload)
    if complete:
        print(f"\nwrote {path} in {wall_s:.0f} s")

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
