"""The training loop shared by every stage.

One loop for all paradigms: deterministic (length-grouped) batch order derived from
the seed, gradient accumulation, bf16 autocast where the hardware has it, a NaN
guard, atomic checkpoints, bit-for-bit resume, Ctrl-C that checkpoints before
exiting, metrics to ``metrics.jsonl`` and a progress bar with tokens per second.
"""
from __future__ import annotations

import ctypes
import json
import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import LeantuneError
from ..recipe import TrainSection
from .checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from .interrupt import stop_on_signals
from .progress import TrainProgress
from .optim import build_optimizer, build_scheduler, param_groups

LossFn = Callable[[nn.Module, dict], torch.Tensor]
Collate = Callable[[list[dict], torch.Generator], dict]


class TrainingDiverged(LeantuneError):
    """The loss became NaN or infinite."""


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


def autocast_context(precision: str, device: torch.device):
    """bf16/fp16 autocast, or nothing for fp32. ``auto`` picks bf16 where matmuls support it."""
    if precision == "auto":
        precision = "bf16" if bf16_supported(device) else "fp32"
    if precision == "fp32":
        return nullcontext(), "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise LeantuneError("train.precision: fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), precision


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX).

    oneDNN also "supports" bf16 on plain AVX-512 by emulation, which is several
    times slower than fp32, so the CPU flags are read instead.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# glibc mallopt parameter: blocks at least this large are served by mmap and unmapped on free.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


def return_freed_memory_to_os(device: torch.device) -> bool:
    """On Linux (glibc) CPU training, give freed activations back to the OS instead of hoarding them.

    glibc raises its mmap threshold (up to 32 MB) each time a large block is freed, so
    afterwards activations come from its heap, which training's ever-changing tensor
    sizes fragment: the heap keeps about as much free memory as it has in use, and
    peak RSS sits far above the live tensors (SmolLM2-135M + LoRA, batch 8 × ≤128,
    8 steps: 3.8 GB peak RSS with 1.5 GB in use in the heap). A fixed 1 MiB threshold
    keeps blocks of that size and more in mmap, so the peak RSS follows the live
    tensors (2.75 GB there). The price is page faults on fresh pages, a few tenths of
    a second of system time per step there. Numerics are untouched. Process-wide, and
    left in place: glibc cannot switch its dynamic threshold back on. Returns whether
    the setting was applied.
    """
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def batch_plan(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """Batches of example indices for one epoch, a pure function of (seed, epoch).

    With ``group_by_length``, examples are shuffled, cut into mega-batches of 50
    batches, sorted by length inside each (less padding), and the batches shuffled.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    if group_by_length:
        mega = batch_size * 50
        order = [i for s in range(0, len(order), mega)
                 for i in sorted(order[s: s + mega], key=lambda j: -lengths[j])]
    batches = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def count_total_steps(n_features: int, cfg: TrainSection) -> int:
    """Optimizer steps of a run: ``max_steps``, or the epochs' micro-batches over ``grad_accum``."""
    micro_per_epoch = math.ceil(n_features / cfg.batch_size)
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * micro_per_epoch / cfg.grad_accum))


class Engine:
    def __init__(self, model: nn.Module, features: list[dict], cfg: TrainSection, run_dir: Path,
                 collate: Collate, loss_fn: LossFn, evaluate: Callable[[nn.Module], dict] | None = None,
                 after_backward: Callable[[nn.Module, int], None] | None = None,
                 progress: bool = True,
                 param_groups: Callable[[nn.Module, float, float], list[dict] | None] | None = None):
        if not features:
            raise LeantuneError("no training examples left after tokenization")
        self.model, self.features, self.cfg, self.run_dir = model, features, cfg, Path(run_dir)
        self.collate, self.loss_fn, self.evaluate, self.after_backward = collate, loss_fn, evaluate, after_backward
        self.progress = progress
        self.param_groups_fn = param_groups  # a method's own optimizer groups (e.g. layer-wise lr decay)
        self.device = next(model.parameters()).device
        self.lengths = [len(f["input_ids"]) for f in features]
        self.micro_per_epoch = math.ceil(len(features) / cfg.batch_size)
        self.total_steps = count_total_steps(len(features), cfg)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._plans: dict[int, list[list[int]]] = {}
        self.adversary = None  # train.adversarial: FGM/PGD on the input embeddings (semisup/adversarial.py)
        if getattr(cfg, "adversarial", None) is not None:
            from ..semisup.adversarial import Adversary

            self.adversary = Adversary(cfg.adversarial)

    # ------------------------------------------------------------------ data
    def micro_batch(self, m: int) -> dict:
        epoch, pos = divmod(m, self.micro_per_epoch)
        if epoch not in self._plans:
            self._plans = {epoch: batch_plan(self.lengths, self.cfg.batch_size, self.cfg.seed, epoch,
                                             self.cfg.group_by_length)}
        idx = self._plans[epoch][pos]
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + m)
        batch = self.collate([self.features[i] for i in idx], gen)
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    # ------------------------------------------------------------------ metrics
    def _log(self, record: dict) -> None:
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _truncate_metrics(self, step: int) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if record.get("step", 0) <= step:
                kept.append(record)
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(self.metrics_path)
        return kept

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> TrainResult:
        cfg, model = self.cfg, self.model
        seed_everything(cfg.seed)
        return_freed_memory_to_os(self.device)
        if cfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        groups = self.param_groups_fn(model, cfg.lr, cfg.weight_decay) if self.param_groups_fn else None
        optimizer = build_optimizer(cfg.optimizer, groups or param_groups(model, cfg.lr, cfg.weight_decay), cfg.lr)
        scheduler = build_scheduler(cfg.scheduler, optimizer, self.total_steps, cfg.warmup_ratio)
        autocast, self.precision = autocast_context(cfg.precision, self.device)
        start, history = 0, []
        if resume and (ckpts := list_checkpoints(self.ckpt_root)):
            state = load_checkpoint(ckpts[-1], model, optimizer, scheduler)
            start = state["step"]
            history = self._truncate_metrics(start)
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        model.train()
        bar = TrainProgress(self.total_steps, start, enabled=self.progress)
        t0, tokens, label_tokens, loss_value, step = time.perf_counter(), 0, 0, float("nan"), start
        with stop_on_signals() as stop, bar:
            for step in range(start + 1, self.total_steps + 1):
                loss_sum = 0.0
                for k in range(cfg.grad_accum):
                    batch = self.micro_batch((step - 1) * cfg.grad_accum + k)
                    with autocast, (self.adversary.watch(model) if self.adversary else nullcontext()):
                        loss = self.loss_fn(model, batch)
                    if not torch.isfinite(loss):
                        self._diverged(step, loss)
                    (loss / cfg.grad_accum).backward()
                    if self.adversary:  # extra forward/backward on perturbed embeddings
                        with autocast:
                            self.adversary.attack(model, lambda: self.loss_fn(model, batch), 1 / cfg.grad_accum)
                    loss_sum += loss.item()
                    tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
                    if "labels" in batch and batch["labels"].dim() == 2:
                        label_tokens += int((batch["labels"] != -100).sum())
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                   cfg.max_grad_norm)
                optimizer.step()
                if self.after_backward:
                    self.after_backward(model, step)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss_value = loss_sum / cfg.grad_accum
                elapsed = time.perf_counter() - t0
                bar.update(step, loss_value, tokens / max(elapsed, 1e-9))
                if step % cfg.logging_steps == 0 or step == self.total_steps:
                    rec = {"step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                           "epoch": round((step * cfg.grad_accum) / self.micro_per_epoch, 4),
                           "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1)}
                    history.append(rec)
                    self._log(rec)
                if self.evaluate and cfg.eval_steps and step % cfg.eval_steps == 0 and step < self.total_steps:
                    rec = {"step": step, **{f"eval_{k}": v for k, v in self.evaluate(model).items()}}
                    model.train()
                    history.append(rec)
                    self._log(rec)
                if (cfg.save_steps and step % cfg.save_steps == 0) or stop:
                    save_checkpoint(self.ckpt_root, step, model, optimizer, scheduler,
                                    {"loss": loss_value}, cfg.save_total_limit)
                if stop:
                    raise stop.interrupted(f"step {step}", str(self.ckpt_root))
        wall = time.perf_counter() - t0
        return TrainResult(steps=step, final_loss=loss_value, wall_time_s=wall, tokens=tokens,
                           tokens_per_s=tokens / max(wall, 1e-9), label_tokens_per_s=label_tokens / max(wall, 1e-9),
                           history=history)

    def _diverged(self, step: int, loss: torch.Tensor) -> None:
        ckpts = list_checkpoints(self.ckpt_root)
        kept = f"the last good checkpoint is {ckpts[-1]}" if ckpts else "no checkpoint had been written yet"
        raise TrainingDiverged(
            f"training stopped: the loss became {loss.item()} at step {step}; {kept}. "
            f"Lower train.lr (now {self.cfg.lr}), set train.max_grad_norm, or check the data for empty targets."
        )
