"""Running TRL trainers (DPO, GRPO, RLOO) inside a leantune run.

* The recipe's ``train`` section becomes the TRL config (CPU: ``use_cpu=True, bf16=False``).
* The reference policy is the base model with the adapter disabled: TRL 1.16 does that when
  it is given the *base* model and a ``peft_config`` (``use_adapter(model, None)``). Given an
  already wrapped PeftModel it instead copies the adapter into a frozen "ref" adapter, and
  given a plain model without ``ref_model`` it reloads ``config.name_or_path`` from disk.
  :func:`split_peft` therefore unwraps the method's PEFT model into (base, peft_config).
* TRL's log history goes to ``metrics.jsonl`` with leantune's step numbering.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from ..errors import RecipeError
from ..training.engine import TrainResult, bf16_supported


def split_peft(model: nn.Module) -> tuple[nn.Module, object | None, nn.Module | None]:
    """(model for TRL, peft_config or None, ref_model or None).

    A single-adapter PeftModel is unloaded back to its base (TRL re-creates the adapter from
    the config and uses the disabled adapter as reference). Any other model (full, freeze…)
    gets a frozen deep copy as the explicit reference, so TRL never reloads from disk.
    """
    cfgs = getattr(model, "peft_config", None)
    if cfgs and hasattr(model, "unload"):
        if len(cfgs) != 1:
            raise RecipeError("TRL stages support one PEFT adapter (got several)")
        peft_config = copy.deepcopy(next(iter(cfgs.values())))
        if getattr(peft_config, "is_prompt_learning", False):
            raise RecipeError("TRL stages: prompt-learning methods are not supported; use lora (or another "
                              "adapter method)")
        return model.unload(), peft_config, None
    if cfgs:
        raise RecipeError("TRL stages: this PEFT method cannot be unloaded to its base model; use lora")
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return model, None, ref


def trl_args(recipe, run_dir: Path) -> dict:
    """Common TRL/Trainer arguments from the recipe's train section."""
    cfg = recipe.train
    cuda = torch.cuda.is_available()
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if cuda and bf16_supported(torch.device("cuda")) else "fp32"
    if precision == "fp16" and not cuda:
        raise RecipeError("train.precision: fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    args = dict(
        output_dir=str(Path(run_dir) / "trl"), use_cpu=not cuda, bf16=precision == "bf16", fp16=precision == "fp16",
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=recipe.eval.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio, lr_scheduler_type={"constant": "constant_with_warmup"}.get(cfg.scheduler, cfg.scheduler),
        max_grad_norm=cfg.max_grad_norm or 0.0, seed=cfg.seed, data_seed=cfg.seed, logging_steps=cfg.logging_steps,
        save_strategy="no", report_to=[], disable_tqdm=True,
        optim={"adamw": "adamw_torch", "sgd": "sgd"}.get(cfg.optimizer, cfg.optimizer),
        dataloader_num_workers=0, remove_unused_columns=False,
    )
    if cfg.gradient_checkpointing:
        args["gradient_checkpointing"] = True
    if cfg.max_steps:
        args["max_steps"] = cfg.max_steps
    else:
        args["num_train_epochs"] = cfg.epochs
    return args, precision


class MetricsCallback(TrainerCallback):
    """TRL's log entries → ``metrics.jsonl`` (one object per logging step)."""

    def __init__(self, path: Path):
        self.path, self.history = Path(path), []
        self.path.unlink(missing_ok=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "train_runtime" in logs:
            return
        record = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
        self.history.append(record)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def run_trainer(trainer, callback: MetricsCallback) -> TrainResult:
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # leantune prints through its own callbacks only
    out = trainer.train()
    runtime = float(out.metrics.get("train_runtime", 0.0))
    losses = [h["loss"] for h in callback.history if "loss" in h]
    return TrainResult(steps=out.global_step, final_loss=losses[-1] if losses else float(out.training_loss),
                       wall_time_s=runtime, tokens=0, tokens_per_s=0.0, label_tokens_per_s=0.0,
                       history=callback.history)


def trained_model(trainer) -> nn.Module:
    """The trained model, off the accelerator's wrappers."""
    return trainer.accelerator.unwrap_model(trainer.model)
