"""SFT training throughput: leantune's engine vs TRL's SFTTrainer, in one run.

SmolLM2-135M (converted cache, fp32 weights), batch 8, max length 128, the
ChatterBot English dialog pairs with the loss on the responses only. Every row
trains on the same 120 examples (one epoch = 15 steps: 3 warm-up + 12 timed) in
its own subprocess, so each peak RSS is its own. Each side keeps its defaults
(leantune: length-grouped batches, no gradient checkpointing, logits only at
labelled positions; TRL: random batches, gradient checkpointing on, fused LM head)
except what a fair comparison has to pin: precision, batch size, max length,
learning rate, LoRA settings, number of steps, seed.

    .venv/bin/python benchmarks/sft_throughput.py            # all rows, ~6-9 min on 2 cores
    .venv/bin/python benchmarks/sft_throughput.py --rows lt-lora,trl-lora

Writes ``benchmarks/results/sft_throughput.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (current_rss_mb, emit, format_table, machine_facts, median, peak_rss_mb,  # noqa: E402
                    run_worker, write_results)

MODEL = "smollm2-135m"
BATCH, MAX_LENGTH, N_EXAMPLES, DATA_SEED, SEED = 8, 128, 120, 0, 42
LORA = {"r": 16, "alpha": 32, "targets": "all-linear"}
LR = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}   # the same for both sides of a comparison

# name -> (side, method, precision, reference row for the ratio, label)
ROWS = {
    "lt-lora":   ("leantune", "lora", "auto", "trl-lora", "leantune LoRA fp32"),
    "trl-lora":  ("trl", "lora", "fp32", "trl-lora", "TRL LoRA fp32"),
    "lt-full":   ("leantune", "full", "auto", "trl-full", "leantune full fp32"),
    "trl-full":  ("trl", "full", "fp32", "trl-full", "TRL full fp32"),
    "lt-qlora":  ("leantune", "qlora", "auto", "trl-lora", "leantune QLoRA (NF4 base)"),
    "lt-bf16":   ("leantune", "lora", "bf16", "trl-bf16", "leantune LoRA bf16 autocast"),
    "trl-bf16":  ("trl", "lora", "bf16", "trl-bf16", "TRL LoRA bf16 autocast"),
}


# --------------------------------------------------------------------------- data (both sides)

def benchmark_pairs() -> list[dict]:
    """The same 120 ChatterBot English pairs for every row."""
    from leantune.data.builtin import dialog_pairs

    pairs = dialog_pairs("english")
    return random.Random(DATA_SEED).sample(pairs, N_EXAMPLES)


def as_messages(pairs: list[dict]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": p["prompt"]},
                          {"role": "assistant", "content": p["completion"]}]} for p in pairs]


def leantune_features(tokenizer):
    """Response-masked features from leantune's SFT stage (also the loss-after set of every row)."""
    from leantune.recipe import Recipe
    from leantune.stages.registry import build_stage

    recipe = Recipe.model_validate({"model": MODEL, "train": {"max_length": MAX_LENGTH, "batch_size": BATCH}})
    stage = build_stage(recipe.stage)
    stage.head_name = "causal_lm"
    data = stage.prepare(recipe, tokenizer, as_messages(benchmark_pairs()), [])
    return stage, data.train


def label_count(labels) -> int:
    """Tokens that are predicted (next-token targets that are not -100)."""
    return int((labels[:, 1:] != -100).sum())


def loss_after(model, stage, features) -> float:
    """Response-token loss over the 120 benchmark examples, computed the same way for every row."""
    return stage.evaluate(model, features, BATCH)["loss"]


# --------------------------------------------------------------------------- workers

def worker_leantune(method_name: str, precision: str, steps: int, warmup: int) -> dict:
    import torch

    from leantune.methods.registry import build_method
    from leantune.models.loading import load_model, load_tokenizer, resolve_model_path
    from leantune.recipe import Recipe
    from leantune.training.engine import Engine, seed_everything

    path = resolve_model_path(MODEL)
    tokenizer = load_tokenizer(path)
    stage, features = leantune_features(tokenizer)
    spec = {"name": method_name, **(LORA if method_name in ("lora", "qlora") else {})}
    recipe = Recipe.model_validate({
        "model": MODEL, "method": [spec],
        "train": {"batch_size": BATCH, "max_length": MAX_LENGTH, "lr": LR[method_name], "max_steps": steps,
                  "precision": precision, "seed": SEED, "logging_steps": 1},
    })
    seed_everything(SEED)
    method = build_method(recipe.method[0])
    model = load_model(path, "causal_lm", recipe.model.dtype, extra=method.load_kwargs(),
                       pad_token_id=tokenizer.pad_token_id)
    model = method.apply(model, "causal_lm")
    rss_loaded = current_rss_mb()

    starts, ends, labels, padded, real = [], [], [], [], []
    with tempfile.TemporaryDirectory() as run_dir:
        engine = Engine(model, features, recipe.train, Path(run_dir), stage.collate, stage.loss,
                        after_backward=lambda m, step: (method.after_backward(m, step),
                                                        ends.append(time.perf_counter())),
                        progress=False)
        fetch = engine.micro_batch

        def timed_micro_batch(m: int) -> dict:
            batch = fetch(m)
            if m % recipe.train.grad_accum == 0:
                labels.append(label_count(batch["labels"]))
                padded.append(batch["input_ids"].numel())
                real.append(int(batch["attention_mask"].sum()))
                starts.append(time.perf_counter())   # after collation, like TRL's on_step_begin
            return batch

        engine.micro_batch = timed_micro_batch
        result = engine.fit()
    train_losses = [h["loss"] for h in result.history if "loss" in h]
    return {
        "precision": engine.precision, "threads": torch.get_num_threads(),
        "step_times": [e - s for s, e in zip(starts, ends)],
        "label_tokens": labels, "padded_tokens": padded, "real_tokens": real,
        "train_losses": train_losses, "loss_after": loss_after(model, stage, features),
        "rss_after_load_mb": rss_loaded, "peak_rss_mb": peak_rss_mb(),
        "gradient_checkpointing": recipe.train.gradient_checkpointing,
    }


def worker_trl(method_name: str, precision: str, steps: int, warmup: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from leantune.models.loading import load_tokenizer, resolve_model_path

    path = resolve_model_path(MODEL)
    tokenizer = load_tokenizer(path)
    stage, features = leantune_features(tokenizer)
    pairs = benchmark_pairs()
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p["prompt"]}],
                                  "completion": [{"role": "assistant", "content": p["completion"]}]}
                                 for p in pairs])
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    peft_config = None
    if method_name == "lora":
        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules="all-linear",
                                 lora_dropout=0.0, task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out, use_cpu=True, bf16=precision == "bf16", fp16=False,
            per_device_train_batch_size=BATCH, max_length=MAX_LENGTH, learning_rate=LR[method_name],
            max_steps=steps, seed=SEED, logging_steps=1, save_strategy="no", report_to="none",
            disable_tqdm=True,
        )
        starts, ends, labels, padded, real = [], [], [], [], []

        class Timer(TrainerCallback):
            def on_step_begin(self, *a, **k):
                starts.append(time.perf_counter())

            def on_step_end(self, *a, **k):
                ends.append(time.perf_counter())

        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config, callbacks=[Timer()])
        collate = trainer.data_collator

        def counting_collator(examples):
            batch = collate(examples)
            labels.append(label_count(batch["labels"]))
            padded.append(batch["input_ids"].numel())
            real.append(int(batch["attention_mask"].sum()) if "attention_mask" in batch
                        else batch["input_ids"].numel())
            return batch

        trainer.data_collator = counting_collator
        # Do TRL and leantune tokenize and mask the examples identically?
        ours = {tuple(f["input_ids"]): [t != -100 for t in f["labels"]] for f in features}
        same = 0
        for row in trainer.train_dataset:
            ids = tuple(row["input_ids"])
            mask = row.get("completion_mask") or [int(t != -100) for t in row["labels"]]
            same += ids in ours and [bool(m) for m in mask] == ours[ids]
        rss_loaded = current_rss_mb()
        trainer.train()
        model = trainer.model
        train_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        gc = bool(args.gradient_checkpointing)
    return {
        "precision": precision, "threads": torch.get_num_threads(),
        "step_times": [e - s for s, e in zip(starts, ends)],
        "label_tokens": labels[:len(starts)], "padded_tokens": padded[:len(starts)], "real_tokens": real[:len(starts)],
        "train_losses": train_losses, "loss_after": loss_after(model, stage, features),
        "rss_after_load_mb": rss_loaded, "peak_rss_mb": peak_rss_mb(),
        "gradient_checkpointing": gc, "examples_tokenized_like_leantune": f"{same}/{len(features)}",
    }


def summarize(raw: dict, warmup: int) -> dict:
    times, labels = raw["step_times"][warmup:], raw["label_tokens"][warmup:]
    return {
        "timed_steps": len(times),
        "median_step_s": median(times),
        "label_tokens_per_s": sum(labels) / sum(times) if times else float("nan"),
        "real_tokens_per_s": sum(raw["real_tokens"][warmup:]) / sum(times) if times else float("nan"),
        "padding_fraction": 1 - sum(raw["real_tokens"]) / max(1, sum(raw["padded_tokens"])),
        "peak_rss_mb": raw["peak_rss_mb"],
        "loss_after": raw["loss_after"],
        "last_train_loss": raw["train_losses"][-1] if raw["train_losses"] else None,
    }


# --------------------------------------------------------------------------- driver

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    ap.add_argument("--steps", type=int, default=15, help="steps per row, warm-up included (15 = one epoch)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default="sft_throughput", help="results/<out>.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        side, method, precision = ROWS[a.worker][:3]
        fn = worker_leantune if side == "leantune" else worker_trl
        emit(fn(method, precision, a.steps, a.warmup))
        return

    names = [n.strip() for n in a.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    facts = machine_facts()
    print(f"# SFT throughput on {facts['cpu_model']} ({facts['usable_cpus']} CPUs, "
          f"native bf16: {facts['native_bf16']}), load average {facts['load_average_at_start']}", flush=True)
    env = {"TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    results: dict[str, dict] = {}
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        raw = run_worker(Path(__file__), ["--worker", name, "--steps", str(a.steps), "--warmup", str(a.warmup)],
                         timeout=600, env=env)
        entry = {"label": ROWS[name][4], "side": ROWS[name][0], "method": ROWS[name][1],
                 "reference": ROWS[name][3], "wall_s": round(time.perf_counter() - t0, 1), "raw": raw}
        if "error" not in raw:
            entry.update(summarize(raw, a.warmup))
            print(f"  {ROWS[name][4]:<30} {entry['median_step_s']:.2f} s/step  "
                  f"{entry['label_tokens_per_s']:.0f} resp tok/s  {entry['peak_rss_mb']:.0f} MB  "
                  f"({entry['wall_s']:.0f} s)", flush=True)
        else:
            print(f"  {ROWS[name][4]:<30} FAILED: {raw['error']}\n{raw.get('stderr_tail', '')}", flush=True)
        results[name] = entry

    for entry in results.values():
        ref = results.get(entry["reference"])
        if ref and "error" not in ref and "error" not in entry["raw"]:
            entry["speed_vs_ref"] = entry["label_tokens_per_s"] / ref["label_tokens_per_s"]
            entry["rss_vs_ref"] = entry["peak_rss_mb"] / ref["peak_rss_mb"]

    headers = ["configuration", "precision", "median step (s)", "response tok/s", "peak RSS (MB)",
               "loss after", "padding", "tok/s vs TRL", "RSS vs TRL"]
    rows = []
    for name, e in results.items():
        if "error" in e["raw"]:
            rows.append([e["label"], "-", "failed", "-", "-", "-", "-", "-", "-"])
            continue
        ref = ROWS[e["reference"]][4]
        vs = (f"{e['speed_vs_ref']:.2f}x" if "speed_vs_ref" in e else "n/a")
        rss_vs = (f"{e['rss_vs_ref']:.2f}x" if "rss_vs_ref" in e else "n/a")
        if e["side"] == "leantune" and e["reference"] != "trl-" + ("bf16" if "bf16" in name else e["method"]):
            vs, rss_vs = f"{vs} (vs {ref})", f"{rss_vs}"
        rows.append([e["label"], e["raw"]["precision"], f"{e['median_step_s']:.2f}", f"{e['label_tokens_per_s']:.0f}",
                     f"{e['peak_rss_mb']:.0f}", f"{e['loss_after']:.4f}", f"{100 * e['padding_fraction']:.0f}%",
                     vs, rss_vs])
    table = format_table(headers, rows)
    print()
    print(table)
    payload = {
        "benchmark": "sft_throughput",
        "command": ".venv/bin/python benchmarks/sft_throughput.py" + (f" --rows {a.rows}" if a.rows != ",".join(ROWS) else ""),
        "conditions": {"model": MODEL, "batch_size": BATCH, "max_length": MAX_LENGTH, "examples": N_EXAMPLES,
                       "data": "ChatterBot English dialog pairs (chatterbot-corpus), random.Random(0).sample 120",
                       "loss": "responses only", "steps": a.steps, "warmup_steps": a.warmup, "lr": LR,
                       "lora": LORA, "seed": SEED,
                       "timing": "per optimizer step, after the batch is collated (TRL: on_step_begin..on_step_end)",
                       "loss_after": "response-token loss over the 120 examples after training, same function for all rows"},
        "machine": facts,
        "total_wall_s": round(time.perf_counter() - t_all, 1),
        "table": table,
        "rows": results,
    }
    print(f"\nwrote {write_results(a.out, payload)} in {payload['total_wall_s']:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
