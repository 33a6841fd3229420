"""The workers of ``sft_throughput.py``: one process each, timing its steps with a ``StepClock``.

leantune's engine, TRL's ``SFTTrainer``, the floor (``sft_floor.py``) and leantune with
``train.cpu_heap: release`` (freed activations returned to the OS), on the same data:
SmolLM2-135M, the 120 ChatterBot pairs, leantune's response-masked features.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

from common import StepClock, current_rss_mb, peak_rss_mb
from mfu import token_stats

MODEL = "smollm2-135m"
BATCH, MAX_LENGTH, N_EXAMPLES, DATA_SEED, SEED = 8, 128, 120, 0, 42
LORA = {"r": 16, "alpha": 32, "targets": "all-linear"}
LR = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}  # the same on both sides of a pair
SKIP_LOSS_AFTER = "SFT_THROUGHPUT_SKIP_LOSS_AFTER"


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
    from sft_floor import hf_model
    from transformers import TrainerCallback
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
    # bf16 at equal settings: frozen weights in bf16 as leantune's model.dtype auto loads them (PEFT keeps the
    # adapter fp32); at its defaults TRL loads the checkpoint's dtype, fp32 for the packaged model
    half = precision == "bf16" and bool(options) and method_name != "full"  # {}: TRL's defaults
    model, peft_config = hf_model(path, method_name, half, LORA)
    weights = str(model.dtype).removeprefix("torch.")
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


def worker_leantune_release(method_name: str, precision: str, steps: int, clock: StepClock, options: dict) -> dict:
    """leantune with ``train.cpu_heap: release`` (a 1 MiB mmap threshold): what the lower peak costs."""
    return worker_leantune(method_name, precision, steps, clock, {**options, "cpu_heap": "release"})
