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
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS,
    StepClock,
    current_rss_mb,
    emit,
    format_table,
    machine_facts,
    median,
    peak_rss_mb,
    run_lockstep,
    write_results,
)
from mfu import matmul_peak, model_shapes, step_flops, token_stats  # noqa: E402

MODEL = "smollm2-135m"
BATCH, MAX_LENGTH, N_EXAMPLES, DATA_SEED, SEED = 8, 128, 120, 0, 42
LORA = {"r": 16, "alpha": 32, "targets": "all-linear"}
LR = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}  # the same on both sides of a pair
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
                ("lora",), "checkpointing, packed rows (TRL: packing + padding_free)"),
}
# settings that also run the floor (sft_floor.py: the bare PyTorch step, the bound on any trainer's speed)
FLOOR = ("equal-A", "equal-B")
STEPS, WARMUP, QUICK_STEPS, QUICK_WARMUP = 15, 3, 3, 1
SKIP_LOSS_AFTER = "SFT_THROUGHPUT_SKIP_LOSS_AFTER"


def groups_for(precisions, settings, methods) -> list[str]:
    return [f"{p}/{s}/{m}" for p, s in itertools.product(precisions, settings)
            for m in SETTINGS[s][2] if m in methods]


# --------------------------------------------------------------------------- data (both sides)

def benchmark_pairs() -> list[dict]:
    """The same 120 ChatterBot English pairs for every row."""
    from leantune.data.builtin import dialog_pairs

    return random.Random(DATA_SEED).sample(dialog_pairs("english"), N_EXAMPLES)


def leantune_features(tokenizer, packing: bool = False):
    """Response-masked features from leantune's SFT stage (packed rows with ``packing``)."""
    from leantune.recipe import Recipe
    from leantune.stages.registry import build_stage

    train = {"max_length": MAX_LENGTH, "batch_size": BATCH, **({"packing": True} if packing else {})}
    recipe = Recipe.model_validate({"model": MODEL, "train": train})
    stage = build_stage(recipe.stage)
    stage.head_name = "causal_lm"
    examples = [{"messages": [{"role": "user", "content": p["prompt"]},
                              {"role": "assistant", "content": p["completion"]}]} for p in benchmark_pairs()]
    return stage, stage.prepare(recipe, tokenizer, examples, []).train


def response_tokens(labels: list[int]) -> int:
    """Predicted tokens of one example: next-token targets that are not -100."""
    return sum(t != -100 for t in labels[1:])


def loss_after(model, stage, features) -> float:
    """Response-token loss over the 120 examples after training, one function for every row
    (NaN when ``SKIP_LOSS_AFTER`` is set: quick runs)."""
    if os.environ.get(SKIP_LOSS_AFTER):
        return float("nan")
    return stage.evaluate(model, sorted(features, key=lambda f: len(f["input_ids"])), BATCH)["loss"]


# --------------------------------------------------------------------------- workers

def worker_leantune(method_name: str, precision: str, steps: int, clock: StepClock, options: dict) -> dict:
    import torch

    from leantune.methods.registry import build_method
    from leantune.models.loading import load_model, load_tokenizer, resolve_model_path
    from leantune.recipe import Recipe
    from leantune.stages.registry import half_weights_on_cpu
    from leantune.training.device import keep_fp32_master_weights, resolve_precision
    from leantune.training.engine import Engine, seed_everything

    path = resolve_model_path(MODEL)
    tokenizer = load_tokenizer(path)
    stage, features = leantune_features(tokenizer, options.get("packing", False))
    _, eval_features = leantune_features(tokenizer)
    spec = {"name": method_name, **(LORA if method_name in ("lora", "qlora") else {})}
    recipe = Recipe.model_validate({
        "model": MODEL, "method": [spec],
        "train": {"batch_size": BATCH, "max_length": MAX_LENGTH, "lr": LR[method_name], "max_steps": steps,
                  "precision": precision, "seed": SEED, "logging_steps": 1, **options},
    })
    seed_everything(SEED)
    method = build_method(recipe.method[0])
    half = resolve_precision(precision, torch.device("cpu")) == "bf16" and half_weights_on_cpu(stage, recipe.method)
    dtype = "bfloat16" if half else "float32"  # model.dtype auto, as the pipeline resolves it
    model = load_model(path, "causal_lm", dtype, extra=method.load_kwargs(),
                       pad_token_id=tokenizer.pad_token_id)
    model = stage.attach(method.apply(model, "causal_lm"))
    keep_fp32_master_weights(model)  # as the pipeline does: trainable weights fp32 whatever was loaded
    rss_loaded = current_rss_mb()
    pending: dict = {}

    def after_step(m, step):
        method.after_optimizer_step(m, step)
        clock.end(**pending)

    with tempfile.TemporaryDirectory() as run_dir:
        engine = Engine(model, features, recipe.train, Path(run_dir), stage.collate, stage.loss,
                        after_optimizer_step=after_step, progress=False)
        fetch = engine.micro_batch

        def timed_micro_batch(step_index: int, k: int) -> tuple[dict, int]:
            batch, weight = fetch(step_index, k)  # collation stays outside the timed step, as in TRL's on_step_begin
            pending.update(response_tokens=int((batch["labels"][:, 1:] != -100).sum()), **token_stats(batch))
            clock.begin()
            return batch, weight

        engine.micro_batch = timed_micro_batch
        result = engine.fit()
    clock.finish()
    peak_training = peak_rss_mb()
    return {
        "precision": engine.precision, "weights": dtype, "threads": torch.get_num_threads(), "steps": clock.steps,
        "train_losses": [h["loss"] for h in result.history if "loss" in h],
        "loss_after": loss_after(model, stage, eval_features),
        "rss_after_load_mb": rss_loaded, "peak_rss_training_mb": peak_training, "peak_rss_mb": peak_rss_mb(),
        "settings": {k: getattr(recipe.train, k) for k in ("gradient_checkpointing", "group_by_length",
                                                           "optimizer", "packing")},
    }


def worker_trl(method_name: str, precision: str, steps: int, clock: StepClock, options: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from leantune.models.loading import load_tokenizer, resolve_model_path

    path = resolve_model_path(MODEL)
    tokenizer = load_tokenizer(path)
    stage, features = leantune_features(tokenizer)
    ours = {tuple(f["input_ids"]): f["labels"] for f in features}
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p["prompt"]}],
                                  "completion": [{"role": "assistant", "content": p["completion"]}]}
                                 for p in benchmark_pairs()])
    torch.manual_seed(SEED)
    quantization = None
    if method_name == "qlora":  # as leantune's qlora defaults: NF4, double quantization, fp32 compute on CPU
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=torch.float32)
    # bf16 at equal settings: frozen weights in bf16 as leantune's model.dtype auto loads them (PEFT keeps the
    # adapter fp32); at its defaults TRL loads the checkpoint's dtype, fp32 for the packaged model
    half = precision == "bf16" and options != SETTINGS["defaults"][1] and method_name != "full"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if half else torch.float32,
                                                 quantization_config=quantization)
    weights = str(model.dtype).removeprefix("torch.")
    peft_config = None
    if method_name in ("lora", "qlora"):
        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules="all-linear",
                                 lora_dropout=0.0, task_type="CAUSAL_LM")
    batches: list[dict] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            clock.end(**batches[len(clock.steps)])

    def segments(example):
        """The examples of a (possibly packed) row, split by TRL's ``seq_lengths``."""
        ids, start = example["input_ids"], 0
        for n in example.get("seq_lengths") or [len(ids)]:
            yield tuple(ids[start:start + n])
            start += n

    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out, use_cpu=True, bf16=precision == "bf16", fp16=False,
            per_device_train_batch_size=BATCH, max_length=MAX_LENGTH, learning_rate=LR[method_name],
            max_steps=steps, seed=SEED, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
            **options,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config, callbacks=[Clock()])
        collate = trainer.data_collator

        def counting_collator(examples):
            batch = collate(examples)
            # response tokens by leantune's mask of the same example, so both sides count alike
            # (TRL also labels the newline after <|im_end|>: its own count is kept too)
            common = sum(response_tokens(ours.get(s, [])) for e in examples for s in segments(e))
            batches.append({"response_tokens": common, "trl_label_tokens": int((batch["labels"][:, 1:] != -100).sum()),
                            **token_stats(batch)})
            return batch

        trainer.data_collator = counting_collator
        same_ids = sum(s in ours for row in trainer.train_dataset for s in segments(row))
        rss_loaded = current_rss_mb()
        trainer.train()
        clock.finish()
        train_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        model = trainer.model
        settings = {"gradient_checkpointing": bool(args.gradient_checkpointing), "optimizer": str(args.optim),
                    "train_sampling_strategy": args.train_sampling_strategy, "packing": bool(args.packing),
                    "padding_free": bool(trainer.padding_free),
                    "same_input_ids_as_leantune": f"{same_ids}/{len(features)}"}
    peak_training = peak_rss_mb()
    return {
        "precision": precision, "weights": weights, "threads": torch.get_num_threads(),
        "steps": clock.steps,
        "train_losses": train_losses, "loss_after": loss_after(model, stage, features),
        "rss_after_load_mb": rss_loaded, "peak_rss_training_mb": peak_training, "peak_rss_mb": peak_rss_mb(),
        "settings": settings,
    }


def worker_floor(method_name: str, precision: str, steps: int, clock: StepClock, options: dict) -> dict:
    """The bare PyTorch step (``sft_floor.py``) on leantune's features and batch plan."""
    import torch
    from sft_floor import run

    from leantune.models.loading import load_tokenizer, resolve_model_path

    path = resolve_model_path(MODEL)
    tokenizer = load_tokenizer(path)
    stage, features = leantune_features(tokenizer)
    out = run(path, features, tokenizer.pad_token_id, method_name, precision, steps, clock, options, LORA,
              LR[method_name], BATCH, SEED)
    return {"precision": precision, "weights": out["weights"], "threads": torch.get_num_threads(),
            "steps": clock.steps, "train_losses": out["train_losses"],
            "loss_after": loss_after(out["model"], stage, features), "peak_rss_mb": peak_rss_mb(),
            "settings": {k: options.get(k) for k in ("gradient_checkpointing", "group_by_length")}}


def worker_leantune_reuse(method_name: str, precision: str, steps: int, clock: StepClock, options: dict) -> dict:
    """leantune without its CPU training allocator setting (glibc reuses its heap): what the setting costs."""
    from leantune.training import engine

    engine.return_freed_memory_to_os = lambda device: False
    return worker_leantune(method_name, precision, steps, clock, options)


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
          "leantune-reuse": worker_leantune_reuse}[side]
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
                    help="also run leantune without its CPU training allocator setting (glibc's heap reuse)")
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
        names += [f"{group}:leantune-reuse"] if a.allocator_row else []
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
