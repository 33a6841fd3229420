"""The training loop shared by every stage, on ``accelerate.Accelerator``.

One loop for all paradigms and all hardware (one CPU, one GPU, DDP, FSDP2, DeepSpeed:
see :mod:`.runtime`): a deterministic (length-grouped) plan of global batches derived
from the seed, each process taking its slice; gradient accumulation weighted by label
tokens across the window and the processes, so that k micro-batches on N processes give
the gradient of one batch k·N times larger; mixed precision with fp16 loss scaling; a
NaN guard; atomic checkpoints; bit-for-bit resume; Ctrl-C on any process checkpoints
and stops all; metrics to ``metrics.jsonl`` and a progress bar with tokens per second
(rank 0 only).
"""
from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import LeantuneError, RecipeError, RunStateError
from ..recipe import TrainSection
from .adversarial import Adversary
from .allocator import TRAINING_MMAP_THRESHOLD, evaluation_setting, lifted, training_setting
from .checkpoint import (
    begin_checkpoint,
    finish_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    write_trainable,
)
from .compile import CompiledBlocks
from .guard import TrainingDiverged, check_finite
from .interrupt import stop_on_signals
from .metrics_log import append_metrics, truncate_metrics
from .optim import build_optimizer, build_scheduler, param_groups
from .progress import TrainProgress
from .runtime import Runtime, build_runtime

LossFn = Callable[[nn.Module, dict], torch.Tensor]
Collate = Callable[[list[dict], torch.Generator], dict]
__all__ = ["Engine", "TrainResult", "TrainingDiverged", "batch_plan", "count_total_steps", "seed_everything"]


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    wall_time_s: float
    tokens: int
    tokens_per_s: float
    label_tokens_per_s: float
    history: list[dict] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# glibc: blocks at least this large are served by mmap and unmapped on free (train.cpu_heap: release).
MMAP_THRESHOLD_BYTES = TRAINING_MMAP_THRESHOLD


def return_freed_memory_to_os(device: torch.device, cpu_heap: str) -> bool:
    """``train.cpu_heap: release`` on Linux (glibc) CPU training: freed activations go back to the OS.

    By default (``reuse``; ``auto`` unless the pipeline found the run too large for the RAM)
    glibc raises its mmap threshold (up to 32 MiB) each time a large block is freed, so
    activations come from its heap and are reused step after step; training's ever-changing
    tensor sizes fragment it, and the heap keeps free memory beside what is in use (SmolLM2-135M
    + LoRA, batch 8 × ≤128: peak RSS 3.86 GB after 75 steps). A fixed 1 MiB threshold keeps
    blocks of that size and more in mmap, so the peak RSS follows the live tensors (3.04 GB
    there). The price is page faults on fresh pages: 3-4% of the step on one machine, 12-32% on
    a VM that reports free pages to its host (``docs/benchmarks.md``). Numerics are untouched.
    Process-wide while :meth:`Engine.fit` runs (evaluation in it and after it:
    ``allocator.py``). Returns whether the setting was applied.
    """
    return device.type == "cpu" and cpu_heap == "release" and training_setting()


# Length grouping: windows of at most WINDOW_BATCHES batches, and at least MIN_WINDOWS windows per epoch.
WINDOW_BATCHES, MIN_WINDOWS = 4, 4


def batch_plan(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """Batches of example indices for one epoch, a pure function of (seed, epoch).

    With ``group_by_length``, examples are shuffled, cut into windows of ``w = min(4,
    n_batches // 4)`` batches (at least 1), sorted by length inside each window, cut into
    batches, and the batches shuffled. Windows of 50 batches (HF's mega-batches, used
    before) sort a small set whole, so each epoch repeats nearly the same batches: of the
    pairs of examples batched together in one epoch, 27-97% again in the next (64
    newsgroup posts, 128 few-shot posts; random batches 5-11%, these windows 12-19%), and
    where length decides the label, batches hold one label. Padding (random / 50 / these
    windows; benchmarks/batching.py): demo SFT data 15.1 / 0.6 / 5.8%, 128 few-shot posts
    16 / 2.6 / 6.4%, 64 posts at ≤ 512 tokens 51 / 10 / 32% (at ≤ 128 tokens, most posts
    cut to the same length: 12 / 4 / 12%). A recipe that leaves ``group_by_length`` unset
    gets it on for sft and pt only (``recipe.stage_settings.LENGTH_GROUPED_STAGES``).
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    if not group_by_length:
        return [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
    n_batches = math.ceil(len(order) / batch_size)
    window = batch_size * max(1, min(WINDOW_BATCHES, n_batches // MIN_WINDOWS))
    order = [i for s in range(0, len(order), window)
             for i in sorted(order[s: s + window], key=lambda j: -lengths[j])]
    batches = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def count_total_steps(n_features: int, cfg: TrainSection, world_size: int = 1) -> int:
    """Optimizer steps of a run: ``max_steps``, or epochs × steps per epoch; one step takes
    ``batch_size × world_size × grad_accum`` examples (the last of an epoch takes what is left)."""
    steps_per_epoch = math.ceil(n_features / (cfg.batch_size * world_size * cfg.grad_accum))
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))


class TrainStep(nn.Module):
    """The model and its loss as one module. DDP, FSDP and DeepSpeed hook the forward of the
    module they wrap, and the losses reach past ``model.forward`` (the tiled causal-LM loss
    calls the backbone itself), so the wrapped forward is the whole loss."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn
        if getattr(model, "config", None) is not None:  # DeepSpeed "auto" bucket sizes read the hidden size
            self.config = model.config

    def forward(self, batch: dict) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


class Engine:
    def __init__(self, model: nn.Module, features: list[dict], cfg: TrainSection, run_dir: Path,
                 collate: Collate, loss_fn: LossFn, evaluate: Callable[[nn.Module], dict] | None = None,
                 after_optimizer_step: Callable[[nn.Module, int], None] | None = None,
                 progress: bool = True,
                 param_groups: Callable[[nn.Module, float, float], list[dict] | None] | None = None,
                 loss_weight: Callable[[dict], int] | None = None, runtime: Runtime | None = None):
        if not features:
            raise LeantuneError("no training examples left after tokenization")
        self.model, self.features, self.cfg, self.run_dir = model, features, cfg, Path(run_dir)
        self.collate, self.loss_fn, self.evaluate, self.after_optimizer_step = collate, loss_fn, evaluate, after_optimizer_step
        self.runtime = runtime or build_runtime(cfg)
        self.progress = progress and self.runtime.is_main
        self.param_groups_fn = param_groups  # a method's own optimizer groups (e.g. layer-wise lr decay)
        self.loss_weight = loss_weight or (lambda batch: len(batch["input_ids"]))
        self.device = self.runtime.device
        self.precision = self.runtime.precision
        world = self.runtime.world_size
        self.lengths = [len(f["input_ids"]) for f in features]
        self.steps_per_epoch = math.ceil(len(features) / (cfg.batch_size * world * cfg.grad_accum))
        self.total_steps = count_total_steps(len(features), cfg, world)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._plans: dict[int, list[list[int]]] = {}
        self.adversary = None  # train.adversarial: FGM/PGD on the input embeddings (training/adversarial.py)
        if getattr(cfg, "adversarial", None) is not None:
            if self.runtime.distributed:
                raise RecipeError("train.adversarial: adversarial training runs in one process; drop it or "
                                  "train without --nproc")
            self.adversary = Adversary(cfg.adversarial)

    # ------------------------------------------------------------------ data
    def micro_batch(self, step_index: int, k: int) -> tuple[dict, int]:
        """This process's ``k``-th micro-batch of optimizer step ``step_index`` (0-based; CPU
        tensors) and its loss weight. The plan holds whole steps (``batch_size × processes ×
        grad_accum`` examples), so accumulating or adding processes never changes which
        examples make a step. A process whose slice is empty (the last step of an epoch)
        takes the step's first example with weight 0: it joins the gradient exchange, adding nothing."""
        epoch, pos = divmod(step_index, self.steps_per_epoch)
        world, rank, size = self.runtime.world_size, self.runtime.rank, self.cfg.batch_size
        if epoch not in self._plans:
            self._plans = {epoch: batch_plan(self.lengths, size * world * self.cfg.grad_accum, self.cfg.seed,
                                             epoch, self.cfg.group_by_length)}
        idx = self._plans[epoch][pos]
        m = step_index * self.cfg.grad_accum + k  # the global micro-batch
        mine = idx[(k * world + rank) * size: (k * world + rank + 1) * size]
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + m * world + rank)
        batch = self.collate([self.features[i] for i in (mine or idx[:1])], gen)
        return batch, int(self.loss_weight(batch)) if mine else 0

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    # ------------------------------------------------------------------ metrics
    def _log(self, record: dict) -> None:
        if self.runtime.is_main:
            append_metrics(self.metrics_path, record)

    # ------------------------------------------------------------------ state
    def _save(self, step: int, optimizer, scheduler, loss_value: float) -> None:
        """Rank 0 writes the checkpoint, with every process's random state. Under ZeRO / FSDP the
        optimizer state is split over the processes: each writes its part through
        ``accelerator.save_state`` and the trainable weights are gathered whole."""
        rt = self.runtime
        info = {"loss": loss_value, "world_size": rt.world_size, "strategy": rt.strategy}
        if rt.distributed:
            info["rng_ranks"] = rt.gather_objects(rng_state())
        if not rt.sharded:
            if rt.is_main:
                save_checkpoint(self.ckpt_root, step, self.model, optimizer, scheduler, info, self.cfg.save_total_limit)
            rt.barrier()
            return
        tmp = begin_checkpoint(self.ckpt_root, step) if rt.is_main else self.ckpt_root / f".tmp-step-{step}"
        rt.barrier()
        rt.accelerator.save_state(str(tmp / "accelerate"))
        with rt.gathered(self.model):
            if rt.is_main:
                write_trainable(self.model, tmp)
        rt.barrier()
        if rt.is_main:
            finish_checkpoint(self.ckpt_root, step, tmp, info, self.cfg.save_total_limit)
        rt.barrier()

    def _last_checkpoint(self) -> Path | None:
        """The checkpoint to resume from, checked against this run's processes and strategy."""
        ckpts = list_checkpoints(self.ckpt_root)
        if not ckpts:
            return None
        state = json.loads((ckpts[-1] / "state.json").read_text())
        saved, strategy = state.get("world_size", 1), state.get("strategy", "single")
        if saved != self.runtime.world_size:
            raise RunStateError(
                f"--resume: {ckpts[-1]} was written by a run of {saved} process(es) and this one has "
                f"{self.runtime.world_size}; the global batch (train.batch_size × processes) would change mid-run. "
                f"Resume with --nproc {saved}")
        if (strategy in ("fsdp", "deepspeed")) != self.runtime.sharded or (
                self.runtime.sharded and strategy != self.runtime.strategy):
            raise RunStateError(f"--resume: {ckpts[-1]} was written under strategy {strategy} and this run uses "
                                f"{self.runtime.strategy}; its optimizer state is laid out for {strategy}. Resume "
                                f"with the same train.distributed settings")
        return ckpts[-1]

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> TrainResult:
        self.small_mmap = return_freed_memory_to_os(self.device, self.cfg.cpu_heap)
        self.compiled: CompiledBlocks | None = None  # train.compile
        try:
            return self._fit(resume)
        finally:
            if self.small_mmap:  # evaluation after training runs with the fast setting
                evaluation_setting()
            if self.compiled is not None:  # and with the eager layers
                self.compiled.release()

    def _fit(self, resume: bool) -> TrainResult:
        cfg, model, rt = self.cfg, self.model, self.runtime
        accelerator = rt.accelerator
        seed_everything(cfg.seed)
        if cfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        if cfg.compile:
            self.compiled = CompiledBlocks(model, self.device)
        groups = self.param_groups_fn(model, cfg.lr, cfg.weight_decay) if self.param_groups_fn else None
        optimizer = build_optimizer(cfg.optimizer, groups or param_groups(model, cfg.lr, cfg.weight_decay), cfg.lr)
        scheduler = build_scheduler(cfg.scheduler, optimizer, self.total_steps, cfg.warmup_ratio)
        ckpt = self._last_checkpoint() if resume else None
        if ckpt is not None and not rt.sharded:
            load_checkpoint(ckpt, model, optimizer, scheduler, rank=rt.rank)
        step_module, prepared_optimizer = accelerator.prepare(TrainStep(model, self.loss_fn), optimizer)
        if rt.sharded:  # its state travels with accelerate's save_state / load_state
            accelerator.register_for_checkpointing(scheduler)
        if ckpt is not None and rt.sharded:
            accelerator.load_state(str(ckpt / "accelerate"))
        start = json.loads((ckpt / "state.json").read_text())["step"] if ckpt is not None else 0
        history = truncate_metrics(self.metrics_path, start, rewrite=rt.is_main)  # start 0: file removed
        # DeepSpeed divides each backward by its accumulation steps itself
        accum_scale = cfg.grad_accum if rt.strategy == "deepspeed" else 1
        step_module.train()
        bar = TrainProgress(self.total_steps, start, enabled=self.progress)
        t0, tokens, label_tokens, loss_value, step = time.perf_counter(), 0, 0, float("nan"), start
        with stop_on_signals() as stop, bar:
            for step in range(start + 1, self.total_steps + 1):
                window = [self.micro_batch(step - 1, k) for k in range(cfg.grad_accum)]
                total_weight = rt.all_sum([sum(w for _, w in window)])[0]
                loss_sum, step_tokens, step_labels = 0.0, 0, 0
                for k, (batch, weight) in enumerate(window):
                    batch = self._to_device(batch)
                    last = k == len(window) - 1
                    sync = nullcontext() if last or not rt.distributed else accelerator.no_sync(step_module)
                    with sync:
                        with accelerator.autocast(), (self.adversary.watch(model) if self.adversary else nullcontext()):
                            loss = step_module(batch)
                        share = weight * rt.world_size * accum_scale / max(total_weight, 1)
                        accelerator.backward(loss * share)
                        if self.adversary:  # extra forward/backward on perturbed embeddings
                            with accelerator.autocast():
                                self.adversary.attack(model, lambda: self.loss_fn(model, batch), share)
                    loss_sum += loss.item() * weight
                    step_tokens += int(batch["attention_mask"].sum()) if weight and "attention_mask" in batch else 0
                    if weight and "labels" in batch and batch["labels"].dim() == 2:
                        step_labels += int((batch["labels"] != -100).sum())
                loss_sum, step_tokens, step_labels = rt.all_sum([loss_sum, step_tokens, step_labels])
                stop.signum = rt.all_max(stop.signum or 0) or None  # a signal to any process stops all
                stopped = bool(stop)
                loss_value = loss_sum / max(total_weight, 1)
                check_finite(loss_value, step, self.ckpt_root, cfg.lr)
                tokens, label_tokens = tokens + int(step_tokens), label_tokens + int(step_labels)
                if cfg.max_grad_norm and rt.strategy != "deepspeed":
                    accelerator.clip_grad_norm_([p for p in step_module.parameters() if p.requires_grad],
                                                cfg.max_grad_norm)
                prepared_optimizer.step()
                if self.after_optimizer_step:
                    self.after_optimizer_step(model, step)
                if not accelerator.optimizer_step_was_skipped:  # fp16: an overflow skips the step
                    scheduler.step()
                prepared_optimizer.zero_grad(set_to_none=True)
                elapsed = time.perf_counter() - t0
                bar.update(step, loss_value, tokens / max(elapsed, 1e-9))
                if step % cfg.logging_steps == 0 or step == self.total_steps:
                    rec = {"step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                           "epoch": round(step / self.steps_per_epoch, 4),
                           "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1)}
                    history.append(rec)
                    self._log(rec)
                if self.evaluate and cfg.eval_steps and step % cfg.eval_steps == 0 and step < self.total_steps:
                    with lifted(self.small_mmap), self.compiled.paused() if self.compiled else nullcontext():
                        metrics = self.evaluate(model)
                    rec = {"step": step, **{f"eval_{k}": v for k, v in metrics.items()}}
                    step_module.train()
                    history.append(rec)
                    self._log(rec)
                if (cfg.save_steps and step % cfg.save_steps == 0) or stopped:
                    self._save(step, optimizer, scheduler, loss_value)
                if stopped:
                    raise stop.interrupted(f"step {step}", str(self.ckpt_root))
        wall = time.perf_counter() - t0
        return TrainResult(steps=step, final_loss=loss_value, wall_time_s=wall, tokens=tokens,
                           tokens_per_s=tokens / max(wall, 1e-9), label_tokens_per_s=label_tokens / max(wall, 1e-9),
                           history=history)
