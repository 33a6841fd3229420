"""Running TRL trainers (DPO, GRPO, RLOO) inside a leantune run.

* The recipe's ``train`` section becomes the TRL config; device and precision come from the
  run's :class:`~leantune.training.runtime.Runtime`.
* The reference policy is the base model with the adapter disabled: TRL 1.16 does that when
  it is given the *base* model and a ``peft_config`` (``use_adapter(model, None)``). Given an
  already wrapped PeftModel it instead copies the adapter into a frozen "ref" adapter, and
  given a plain model without ``ref_model`` it reloads ``config.name_or_path`` from disk.
  :func:`split_peft` therefore unwraps the method's PEFT model into (base, peft_config).
* TRL's log history goes to ``metrics.jsonl`` with leantune's step numbering.
* Checkpoints: with ``train.save_steps`` TRL writes ``RUN_DIR/checkpoints/checkpoint-N`` (complete
  once it holds ``trainer_state.json``); ``--resume`` continues from the last complete one (the
  Trainer restores weights, optimizer, scheduler and RNG states and skips the batches seen),
  keeping the ``metrics.jsonl`` lines up to its step. Ctrl-C/SIGTERM checkpoints after the
  current step and stops; a non-finite logged loss stops the run (the engine's NaN guard).
"""
from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

from torch import nn
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from ..errors import RecipeError
from ..training.engine import TrainResult
from ..training.guard import check_finite
from ..training.interrupt import stop_on_signals
from ..training.metrics_log import append_metrics, truncate_metrics

TRAINER_STATE = "trainer_state.json"  # written last into a checkpoint-N folder: it is complete
CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


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


def trl_args(recipe, run_dir: Path, runtime) -> dict:
    """Common TRL/Trainer arguments from the recipe's train section and the run's runtime."""
    cfg = recipe.train
    args = dict(
        output_dir=str(checkpoint_root(run_dir)), use_cpu=runtime.device.type == "cpu",
        bf16=runtime.precision == "bf16", fp16=runtime.precision == "fp16",
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=recipe.eval.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio, lr_scheduler_type={"constant": "constant_with_warmup"}.get(cfg.scheduler, cfg.scheduler),
        max_grad_norm=cfg.max_grad_norm or 0.0, seed=cfg.seed, data_seed=cfg.seed, logging_steps=cfg.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss must reach the logs, where the guard sees it
        save_strategy="steps" if cfg.save_steps else "no", save_total_limit=cfg.save_total_limit,
        report_to=[], disable_tqdm=True,
        optim={"adamw": "adamw_torch", "sgd": "sgd"}.get(cfg.optimizer, cfg.optimizer),
        dataloader_num_workers=0, remove_unused_columns=False,
        activation_checkpointing=cfg.gradient_checkpointing,  # TRL's configs default to on
    )
    if cfg.save_steps:
        args["save_steps"] = cfg.save_steps
    if cfg.max_steps:
        args["max_steps"] = cfg.max_steps
    else:
        args["num_train_epochs"] = cfg.epochs
    return args


def checkpoint_root(run_dir: Path) -> Path:
    """TRL's ``output_dir``: it holds only the ``checkpoint-N`` folders (and, while training, a model card)."""
    return Path(run_dir) / "checkpoints"


def last_checkpoint(root: Path) -> Path | None:
    """The newest complete ``checkpoint-N`` under ``root`` (one holding ``trainer_state.json``)."""
    found = [(int(m.group(1)), p) for p in root.glob("checkpoint-*")
             if (m := CHECKPOINT_DIR.match(p.name)) and (p / TRAINER_STATE).is_file()]
    return max(found)[1] if found else None


class MetricsCallback(TrainerCallback):
    """TRL's log entries → ``metrics.jsonl`` (one object per logging step). At the start of
    training the file keeps only the lines up to the step training starts from (0: none)."""

    def __init__(self, path: Path):
        self.path, self.history = Path(path), []

    def on_train_begin(self, args, state, control, **kwargs):
        self.history = truncate_metrics(self.path, state.global_step, rewrite=state.is_world_process_zero)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "train_runtime" in logs:
            return
        record = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
        self.history.append(record)
        if state.is_world_process_zero:
            append_metrics(self.path, record)


class GuardCallback(TrainerCallback):
    """A stop signal checkpoints after the current step and ends training; a logged loss that
    is NaN or infinite raises :class:`~leantune.training.guard.TrainingDiverged`."""

    def __init__(self, stop, ckpt_root: Path):
        self.stop, self.ckpt_root = stop, ckpt_root

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop:  # the Trainer saves whenever control.should_save, whatever save_strategy says
            control.should_save = control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            check_finite(float(logs["loss"]), state.global_step, self.ckpt_root, args.learning_rate)


def run_trainer(trainer, run_dir: Path, resume: bool) -> TrainResult:
    """Train (from the last complete checkpoint with ``resume``), then raise
    :class:`~leantune.training.interrupt.TrainingInterrupted` if a stop signal arrived."""
    root, metrics = checkpoint_root(run_dir), MetricsCallback(Path(run_dir) / "metrics.jsonl")
    start = last_checkpoint(root) if resume else None  # none: the pipeline has said so
    for p in root.glob("checkpoint-*") if resume else ():  # this run's, half-written by a kill: of no use
        if p.name[11:].isdigit() and p.is_dir() and not (p / TRAINER_STATE).is_file():
            shutil.rmtree(p, ignore_errors=True)
    trainer.remove_callback(PrinterCallback)  # leantune prints through its own callbacks only
    trainer.add_callback(metrics)
    try:
        with stop_on_signals() as stop:
            trainer.add_callback(GuardCallback(stop, root))
            out = trainer.train(resume_from_checkpoint=str(start) if start else None)
    finally:
        card = root / "README.md"  # TRL's draft model card, rewritten with each checkpoint: only that file
        if card.is_file() and "It has been trained using [TRL]" in card.read_text(errors="replace"):
            card.unlink()
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()
    if stop:
        raise stop.interrupted(f"step {trainer.state.global_step}", str(root))
    wall = float(out.metrics.get("train_runtime", 0.0))
    losses = [h["loss"] for h in metrics.history if "loss" in h]
    return TrainResult(steps=out.global_step, final_loss=losses[-1] if losses else float(out.training_loss),
                       wall_time_s=wall, tokens=0, tokens_per_s=0.0, label_tokens_per_s=0.0,
                       history=metrics.history)


def trained_model(trainer) -> nn.Module:
    """The trained model, off the accelerator's wrappers."""
    return trainer.accelerator.unwrap_model(trainer.model)
