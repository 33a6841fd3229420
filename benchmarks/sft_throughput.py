"""SFT training throughput: leantune's engine vs TRL's SFTTrainer, in one run.

SmolLM2-135M (converted cache, fp32 weights), batch 8, max length 128, the
ChatterBot English dialog pairs with the loss on the responses only. Every row
trains on the same 120 examples (an epoch is 15 steps) in its own subprocess, so
each peak RSS is its own. The rows of a group run side by side but take turns step
by step (``common.run_lockstep``), so on a shared machine each pair of k-th steps
sees the same background load.

Each side keeps its defaults except what a fair comparison has to pin: precision,
batch size, max length, learning rate, LoRA settings, number of steps, seed.
leantune: the SFT stage's tokenization, collation and loss in ``Engine`` (length-
grouped batches, no gradient checkpointing). TRL: ``SFTTrainer`` with
prompt-completion data (loss on the completion), gradient checkpointing on, random
batches, fused AdamW, its own fused LM head.

    .venv/bin/python benchmarks/sft_throughput.py              # all groups, ~10 min on 2 idle cores
    .venv/bin/python benchmarks/sft_throughput.py --groups lora
    .venv/bin/python benchmarks/sft_throughput.py --quick --out /tmp/q.json   # losses of 3 steps, ~5 min

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
from common import (RESULTS, StepClock, current_rss_mb, emit, format_table, machine_facts,  # noqa: E402
                    median, peak_rss_mb, run_lockstep, write_results)

MODEL = "smollm2-135m"
BATCH, MAX_LENGTH, N_EXAMPLES, DATA_SEED, SEED = 8, 128, 120, 0, 42
LORA = {"r": 16, "alpha": 32, "targets": "all-linear"}
LR = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}   # the same on both sides of a comparison

# row -> (side, method, precision, reference row for the ratios, label, options)
ROWS = {
    "lt-lora":  ("leantune", "lora", "auto", "trl-lora", "leantune LoRA", {}),
    "trl-lora": ("trl", "lora", "fp32", "trl-lora", "TRL LoRA", {}),
    "lt-qlora": ("leantune", "qlora", "auto", "trl-lora", "leantune QLoRA (NF4 base)", {}),
    "lt-full":  ("leantune", "full", "auto", "trl-full", "leantune full FT", {}),
    "trl-full": ("trl", "full", "fp32", "trl-full", "TRL full FT", {}),
    "lt-bf16":  ("leantune", "lora", "bf16", "trl-bf16", "leantune LoRA, bf16 autocast", {}),
    "trl-bf16": ("trl", "lora", "bf16", "trl-bf16", "TRL LoRA, bf16 autocast", {}),
    # ablation: what each part of the leantune path is worth (LoRA fp32, against lt-lora)
    "ab-lora":       ("leantune", "lora", "auto", "ab-lora", "leantune LoRA (as shipped)", {}),
    "ab-before":     ("leantune", "lora", "auto", "ab-lora", "… before this change (masked attention, "
                      "whole-logits loss, glibc default heap)", {"legacy": True}),
    "ab-checkpoint": ("leantune", "lora", "auto", "ab-lora", "… + gradient checkpointing",
                      {"gradient_checkpointing": True}),
    "ab-random":     ("leantune", "lora", "auto", "ab-lora", "… random batches (no length grouping)",
                      {"group_by_length": False}),
}
# group -> (rows run in lock-step, steps, warm-up steps). bf16 is emulated on CPUs
# without AVX512-BF16/AMX and several times slower, so that group runs fewer steps.
GROUPS = {
    "lora": (["lt-lora", "trl-lora", "lt-qlora"], 15, 3),
    "full": (["lt-full", "trl-full"], 15, 3),
    "bf16": (["lt-bf16", "trl-bf16"], 8, 2),
    "ablation": (["ab-lora", "ab-before", "ab-checkpoint", "ab-random"], 15, 3),
}
DEFAULT_GROUPS = ("lora", "full", "bf16")


# --------------------------------------------------------------------------- data (both sides)

def benchmark_pairs() -> list[dict]:
    """The same 120 ChatterBot English pairs for every row."""
    from leantune.data.builtin import dialog_pairs

    return random.Random(DATA_SEED).sample(dialog_pairs("english"), N_EXAMPLES)


def leantune_features(tokenizer):
    """Response-masked features from leantune's SFT stage (also the loss-after set of every row)."""
    from leantune.recipe import Recipe
    from leantune.stages.registry import build_stage

    recipe = Recipe.model_validate({"model": MODEL, "train": {"max_length": MAX_LENGTH, "batch_size": BATCH}})
    stage = build_stage(recipe.stage)
    stage.head_name = "causal_lm"
    examples = [{"messages": [{"role": "user", "content": p["prompt"]},
                              {"role": "assistant", "content": p["completion"]}]} for p in benchmark_pairs()]
    data = stage.prepare(recipe, tokenizer, examples, [])
    return stage, data.train


def response_tokens(labels: list[int]) -> int:
    """Predicted tokens of one example: next-token targets that are not -100."""
    return sum(t != -100 for t in labels[1:])


def loss_after(model, stage, features) -> float:
    """Response-token loss over the 120 benchmark examples, computed the same way for every row
    (token-weighted, so the order is free: sorted by length, the batches carry little padding)."""
    return stage.evaluate(model, sorted(features, key=lambda f: len(f["input_ids"])), BATCH)["loss"]


def legacy_causal_lm_loss(model, batch):
    """leantune's causal_lm_loss before this benchmark (commit 0375a8a): the padding mask goes to
    attention, and the labelled logits are built whole before the cross-entropy."""
    import torch.nn.functional as F

    from leantune.training.losses import fast_path, unwrap

    backbone, head = fast_path(unwrap(model))
    hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    return F.cross_entropy(head(hidden[:, :-1][keep]).float(), targets[keep])


# --------------------------------------------------------------------------- workers

def worker_leantune(method_name: str, precision: str, steps: int, clock: StepClock, options: dict) -> dict:
    import torch

    import leantune.training.engine as engine_module
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
                  "precision": precision, "seed": SEED, "logging_steps": 1,
                  **{k: v for k, v in options.items() if k != "legacy"}},
    })
    loss_fn = stage.loss
    if options.get("legacy"):
        loss_fn = legacy_causal_lm_loss
        engine_module.return_freed_memory_to_os = lambda device: False
    seed_everything(SEED)
    method = build_method(recipe.method[0])
    model = load_model(path, "causal_lm", recipe.model.dtype, extra=method.load_kwargs(),
                       pad_token_id=tokenizer.pad_token_id)
    model = method.apply(model, "causal_lm")
    rss_loaded = current_rss_mb()
    pending: dict = {}

    def after_step(m, step):
        method.after_optimizer_step(m, step)
        clock.end(**pending)

    with tempfile.TemporaryDirectory() as run_dir:
        engine = Engine(model, features, recipe.train, Path(run_dir), stage.collate, loss_fn,
                        after_optimizer_step=after_step, progress=False)
        fetch = engine.micro_batch

        def timed_micro_batch(step_index: int, k: int) -> tuple[dict, int]:
            batch, weight = fetch(step_index, k)  # collation stays outside the timed step, as in TRL's on_step_begin
            pending.update(response_tokens=int((batch["labels"][:, 1:] != -100).sum()),
                           padded_tokens=batch["input_ids"].numel(), real_tokens=int(batch["attention_mask"].sum()))
            clock.begin()
            return batch, weight

        engine.micro_batch = timed_micro_batch
        result = engine.fit()
    clock.finish()
    peak_training = peak_rss_mb()
    t_eval = time.perf_counter()
    after = loss_after(model, stage, features)
    return {
        "precision": engine.precision, "threads": torch.get_num_threads(), "steps": clock.steps,
        "train_losses": [h["loss"] for h in result.history if "loss" in h], "loss_after": after,
        "eval_s": time.perf_counter() - t_eval,
        "rss_after_load_mb": rss_loaded, "peak_rss_training_mb": peak_training, "peak_rss_mb": peak_rss_mb(),
        "gradient_checkpointing": recipe.train.gradient_checkpointing, "group_by_length": recipe.train.group_by_length,
        "optimizer": recipe.train.optimizer, "options": options,
    }


def worker_trl(method_name: str, precision: str, steps: int, clock: StepClock, options: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
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
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    peft_config = None
    if method_name == "lora":
        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules="all-linear",
                                 lora_dropout=0.0, task_type="CAUSAL_LM")
    batches: list[dict] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            clock.end(**batches[len(clock.steps)])

    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out, use_cpu=True, bf16=precision == "bf16", fp16=False,
            per_device_train_batch_size=BATCH, max_length=MAX_LENGTH, learning_rate=LR[method_name],
            max_steps=steps, seed=SEED, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config, callbacks=[Clock()])
        collate = trainer.data_collator

        def counting_collator(examples):
            batch = collate(examples)
            # response tokens by leantune's mask of the same example, so both sides count alike
            # (TRL also labels the newline after <|im_end|>: its own count is kept too)
            common = sum(response_tokens(ours.get(tuple(e["input_ids"]), e.get("labels") or [])) for e in examples)
            batches.append({"response_tokens": common, "trl_label_tokens": int((batch["labels"][:, 1:] != -100).sum()),
                            "padded_tokens": batch["input_ids"].numel(),
                            "real_tokens": int(batch["attention_mask"].sum()) if "attention_mask" in batch
                            else batch["input_ids"].numel()})
            return batch

        trainer.data_collator = counting_collator
        same_ids = sum(tuple(row["input_ids"]) in ours for row in trainer.train_dataset)
        rss_loaded = current_rss_mb()
        trainer.train()
        clock.finish()
        train_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        model = trainer.model
        extra = {"gradient_checkpointing": bool(args.gradient_checkpointing), "optimizer": str(args.optim),
                 "same_input_ids_as_leantune": f"{same_ids}/{len(features)}"}
    peak_training = peak_rss_mb()
    t_eval = time.perf_counter()
    after = loss_after(model, stage, features)
    return {
        "precision": precision, "threads": torch.get_num_threads(), "steps": clock.steps,
        "train_losses": train_losses, "loss_after": after, "eval_s": time.perf_counter() - t_eval,
        "rss_after_load_mb": rss_loaded, "peak_rss_training_mb": peak_training, "peak_rss_mb": peak_rss_mb(), **extra,
    }


def summarize(raw: dict, warmup: int) -> dict:
    timed = raw["steps"][warmup:]
    seconds = sum(s["s"] for s in timed)
    return {
        "timed_steps": len(timed),
        "median_step_s": median([s["s"] for s in timed]),
        "response_tokens_per_s": sum(s["response_tokens"] for s in timed) / seconds if timed else float("nan"),
        "real_tokens_per_s": sum(s["real_tokens"] for s in timed) / seconds if timed else float("nan"),
        "padding_fraction": 1 - sum(s["real_tokens"] for s in raw["steps"]) / max(1, sum(s["padded_tokens"] for s in raw["steps"])),
        "sys_fraction": sum(s["sys_s"] for s in timed) / max(1e-9, sum(s["user_s"] + s["sys_s"] for s in timed)),
        "peak_rss_mb": raw["peak_rss_mb"],
        "loss_after": raw["loss_after"],
    }


# --------------------------------------------------------------------------- driver

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", default=",".join(DEFAULT_GROUPS),
                    help=f"comma-separated, of {', '.join(GROUPS)} (default: {','.join(DEFAULT_GROUPS)})")
    ap.add_argument("--steps", type=int, help="steps per row, warm-up included (default: per group)")
    ap.add_argument("--warmup", type=int, help="untimed first steps (default: per group)")
    ap.add_argument("--out", default=str(RESULTS / "sft_throughput.json"), help="results JSON path")
    ap.add_argument("--quick", action="store_true",
                    help="groups lora,full, 3 steps (1 warm-up): the per-step losses, to compare two versions")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--sync", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        side, method, precision, *_, options = ROWS[a.worker]
        fn = worker_leantune if side == "leantune" else worker_trl
        emit(fn(method, precision, a.steps, StepClock(a.sync), options))
        return

    if a.quick:
        a.groups, a.steps, a.warmup = "lora,full", 3, 1
    groups = [g.strip() for g in a.groups.split(",") if g.strip()]
    if unknown := [g for g in groups if g not in GROUPS]:
        ap.error(f"unknown groups {unknown}; choose from {', '.join(GROUPS)}")
    facts = machine_facts()
    print(f"# SFT throughput on {facts['cpu_model']} ({facts['usable_cpus']} CPUs, native bf16: "
          f"{facts['native_bf16']}), load average {facts['load_average_at_start']}", flush=True)
    results: dict[str, dict] = {}
    t_all = time.perf_counter()
    for group in groups:
        names, steps, warmup = GROUPS[group]
        steps, warmup = a.steps or steps, a.warmup if a.warmup is not None else warmup
        print(f"## group {group}: {', '.join(names)} in lock-step, {steps} steps ({warmup} warm-up)", flush=True)
        t0 = time.perf_counter()
        raws = run_lockstep(Path(__file__), {n: ["--worker", n, "--steps", str(steps)] for n in names}, steps,
                            log=lambda m: print(m, flush=True))
        for name in names:
            side, method, precision, ref, label, options = ROWS[name]
            entry = {"label": label, "side": side, "method": method, "options": options, "group": group,
                     "reference": ref,
                     "steps": steps, "warmup_steps": warmup, "raw": raws[name]}
            if "error" not in raws[name]:
                entry.update(summarize(raws[name], warmup))
            else:
                print(f"  {label}: FAILED {raws[name]['error']}\n{raws[name].get('stderr_tail', '')}", flush=True)
            results[name] = entry
        print(f"  group {group} took {time.perf_counter() - t0:.0f} s", flush=True)

    for entry in results.values():
        ref = results.get(entry["reference"])
        if ref and "median_step_s" in ref and "median_step_s" in entry:
            entry["speed_vs_ref"] = entry["response_tokens_per_s"] / ref["response_tokens_per_s"]
            entry["rss_vs_ref"] = entry["peak_rss_mb"] / ref["peak_rss_mb"]

    tables = {}
    for group in groups:
        names = GROUPS[group][0]
        vs = "vs as shipped" if group == "ablation" else "vs TRL"
        headers = ["configuration", "precision", "median step (s)", "response tok/s", "peak RSS (MB)",
                   "loss after", "padding", f"tok/s {vs}", f"RSS {vs}"]
        rows = []
        for name in names:
            e = results[name]
            if "median_step_s" not in e:
                rows.append([e["label"], "-", "failed", "-", "-", "-", "-", "-", "-"])
                continue
            speed = f"{e['speed_vs_ref']:.2f}x" if "speed_vs_ref" in e else "n/a"
            rss = f"{e['rss_vs_ref']:.2f}x" if "rss_vs_ref" in e else "n/a"
            if name == "lt-qlora" and "speed_vs_ref" in e:
                speed, rss = f"{speed} (vs TRL LoRA)", f"{rss} (vs TRL LoRA)"
            rows.append([e["label"], e["raw"]["precision"], f"{e['median_step_s']:.2f}",
                         f"{e['response_tokens_per_s']:.1f}", f"{e['peak_rss_mb']:.0f}", f"{e['loss_after']:.4f}",
                         f"{100 * e['padding_fraction']:.0f}%", speed, rss])
        tables[group] = format_table(headers, rows)
        print(f"\n{group}:\n{tables[group]}")
    payload = {
        "benchmark": "sft_throughput",
        "command": " ".join([".venv/bin/python benchmarks/sft_throughput.py", *sys.argv[1:]]),
        "conditions": {
            "model": MODEL, "weights": "fp32 (converted GGUF cache)", "batch_size": BATCH, "max_length": MAX_LENGTH,
            "examples": N_EXAMPLES, "data": "ChatterBot English dialog pairs, random.Random(0).sample(…, 120)",
            "loss": "responses only", "lr": LR, "lora": LORA, "seed": SEED,
            "groups": {g: {"rows": GROUPS[g][0], "steps": a.steps or GROUPS[g][1],
                           "warmup": a.warmup if a.warmup is not None else GROUPS[g][2]} for g in groups},
            "timing": "each optimizer step after its batch is collated (TRL: on_step_begin..on_step_end); "
                      "the rows of a group take turns step by step",
            "response_tokens": "next-token targets of leantune's response mask of the same examples, for both sides",
            "loss_after": "response-token loss over the 120 examples after training, one function for all rows",
        },
        "machine": facts,
        "total_wall_s": round(time.perf_counter() - t_all, 1),
        "tables": tables,
        "rows": results,
    }
    print(f"\nwrote {write_results(Path(a.out), payload)} in {payload['total_wall_s']:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
