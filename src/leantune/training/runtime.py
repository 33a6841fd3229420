"""The processes of a run, on ``accelerate.Accelerator``: one CPU, one GPU, DDP, FSDP2 or DeepSpeed ZeRO.

A run started alone is one process; under ``leantune train --nproc N``, ``torchrun`` or
``accelerate launch`` it is one of ``WORLD_SIZE`` processes. :func:`build_runtime`
decides once, for every stage, the device (:mod:`.device`), the precision, the strategy
(``train.distributed`` / ``train.deepspeed`` / the accelerate config the launcher passed)
and builds the accelerator that prepares the model and optimizer, runs backward with
fp16 loss scaling, clips gradients and gathers full state dicts. Rank 0 alone writes.
"""
from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import (
    DeepSpeedPlugin,
    DistributedDataParallelKwargs,
    FullyShardedDataParallelPlugin,
    InitProcessGroupKwargs,
)
from torch.distributed.fsdp import FSDPModule

from ..errors import RecipeError
from .device import resolve_device, resolve_precision

STRATEGIES = ("single", "ddp", "fsdp", "deepspeed")
MIXED = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


@dataclass
class Runtime:
    accelerator: object
    device: torch.device
    precision: str          # fp32, bf16 or fp16 (resolved)
    strategy: str           # single, ddp, fsdp or deepspeed
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def local_processes(self) -> int:
        """This machine's processes of the run (torchrun and accelerate set ``LOCAL_WORLD_SIZE``)."""
        return int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size) or self.world_size)

    @property
    def sharded(self) -> bool:
        """Parameters are split over processes: every process must take part in each forward."""
        return self.strategy in ("fsdp", "deepspeed")

    @contextmanager
    def gathered(self, model):
        """Every parameter whole on every process for the block (ZeRO-3 and FSDP split them; a
        PEFT adapter saved from split parameters is empty). Nothing to do for the others."""
        if self.strategy == "deepspeed" and _zero_stage(self.accelerator) == 3:
            import deepspeed  # lazy: optional, only ZeRO-3 runs need it
            with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0):
                yield
        elif self.strategy == "fsdp":
            sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
            for m in sharded:
                m.unshard()
            try:
                yield
            finally:
                for m in sharded:
                    m.reshard()
        else:
            yield

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over every process (float64; the values themselves when alone)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(t)
        return t.tolist()

    def all_max(self, value: int) -> int:
        """The largest ``value`` over every process."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device if self.device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def gather_objects(self, obj) -> list:
        """``obj`` from every process, in rank order (on every process)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def _zero_stage(accelerator) -> int:
    plugin = accelerator.state.deepspeed_plugin
    return int(plugin.zero_stage) if plugin is not None else 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _launcher_strategy() -> str | None:
    """What ``accelerate launch --config_file`` asked for through its environment, if anything."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return None


def resolve_strategy(cfg, device: torch.device, processes: int) -> str:
    """single, ddp, fsdp or deepspeed, with a sentence for each combination that cannot run."""
    if cfg.deepspeed:
        requested = "deepspeed"
    elif cfg.distributed is not None:
        requested = cfg.distributed.strategy
    else:
        requested = _launcher_strategy() or "ddp"
    if requested == "deepspeed":
        if importlib.util.find_spec("deepspeed") is None:
            raise RecipeError("train.distributed.strategy: deepspeed needs the DeepSpeed package, which is not "
                              "installed; install it with `pip install deepspeed` (it compiles its CUDA kernels "
                              "on first use) or use strategy: ddp or fsdp")
        if device.type != "cuda":
            raise RecipeError(f"train.distributed.strategy: deepspeed runs on GPUs; this run's device is "
                              f"{device}. Use strategy: ddp for CPU processes")
        if cfg.deepspeed and not Path(cfg.deepspeed).is_file():
            raise RecipeError(f"train.deepspeed: {cfg.deepspeed} is not a file (a DeepSpeed JSON config, e.g. "
                              f"ds_z3_config.json)")
        return "deepspeed"
    if requested == "fsdp":
        if device.type != "cuda":
            raise RecipeError(f"train.distributed.strategy: fsdp shards over GPUs (accelerate enables FSDP only "
                              f"for multi-GPU runs); this run's device is {device}. Use strategy: ddp on CPU")
        if processes < 2:
            raise RecipeError("train.distributed.strategy: fsdp shards the model over several processes; this "
                              "run has one. Start it with --nproc N (N ≥ 2), or drop train.distributed")
        return "fsdp"
    return "ddp" if processes > 1 else "single"


def check_method_fits(runtime: Runtime, method_names: list[str]) -> None:
    """Methods the strategy cannot split: QLoRA's packed 4-bit weights are not parameters that
    FSDP or ZeRO-3 can shard (they need a float storage type bitsandbytes sets up for that)."""
    splits_weights = runtime.strategy == "fsdp" or (
        runtime.strategy == "deepspeed" and _zero_stage(runtime.accelerator) == 3)
    if splits_weights and "qlora" in method_names:
        raise RecipeError(f"method qlora with train.distributed.strategy: {runtime.strategy}"
                          f"{' (ZeRO-3)' if runtime.strategy == 'deepspeed' else ''}: the 4-bit weights cannot be "
                          f"sharded; use strategy: ddp (each GPU holds the small 4-bit model) or ZeRO stage 1/2")


def _check_gpu_count(device: torch.device, processes: int) -> None:
    local = int(os.environ.get("LOCAL_WORLD_SIZE", processes) or processes)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and local > gpus:
        raise RecipeError(f"--nproc: {local} processes on this machine but {gpus} GPU(s); start at most {gpus}, "
                          f"or set train.device: cpu to run CPU processes")


def _plugins(cfg, strategy: str, processes: int) -> dict:
    """The accelerate plugin for FSDP2 or DeepSpeed from the recipe."""
    dist = cfg.distributed
    if dist is None and not cfg.deepspeed:  # the launcher's accelerate config decides (its env vars)
        return {}
    offload = dist.offload if dist is not None else "none"
    if strategy == "fsdp":
        return {"fsdp_plugin": FullyShardedDataParallelPlugin(
            fsdp_version=2, reshard_after_forward=True, cpu_offload=offload != "none",
            auto_wrap_policy="transformer_based_wrap", state_dict_type="FULL_STATE_DICT")}
    if strategy == "deepspeed":
        if cfg.deepspeed:
            plugin = DeepSpeedPlugin(hf_ds_config=str(cfg.deepspeed), gradient_accumulation_steps=cfg.grad_accum)
        else:
            stage = dist.zero_stage if dist is not None else 2
            plugin = DeepSpeedPlugin(
                zero_stage=stage, gradient_accumulation_steps=cfg.grad_accum,
                offload_optimizer_device="cpu" if offload != "none" else "none",
                offload_param_device="cpu" if offload == "all" and stage == 3 else "none",
                zero3_save_16bit_model=stage == 3)
        _fill_auto(plugin.deepspeed_config, {
            "train_micro_batch_size_per_gpu": cfg.batch_size, "gradient_accumulation_steps": cfg.grad_accum,
            "train_batch_size": cfg.batch_size * processes * cfg.grad_accum,
            "gradient_clipping": cfg.max_grad_norm or 0.0})
        return {"deepspeed_plugin": plugin}
    return {}


def _fill_auto(config: dict, values: dict) -> None:
    """The recipe's numbers where a DeepSpeed config says "auto" or nothing (the engine feeds
    DeepSpeed its own batches, so DeepSpeed cannot infer them from a data loader)."""
    for key, value in values.items():
        if config.get(key, "auto") == "auto":
            config[key] = value


def build_runtime(cfg) -> Runtime:
    """The run's accelerator from the recipe's ``train`` section (see the module docstring)."""
    processes = world_size()
    if processes > 1 and cfg.device.startswith("cuda:"):
        raise RecipeError(f"train.device: {cfg.device} puts every one of the {processes} processes on one GPU; "
                          f"use device: auto (or cuda) so that each process takes its local rank's GPU")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    _check_gpu_count(device, processes)
    strategy = resolve_strategy(cfg, device, processes)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    AcceleratorState._reset_state(reset_partial_state=False)  # a second run in this process starts afresh
    timeout = cfg.distributed.timeout_s if cfg.distributed is not None else 1800
    accelerator = Accelerator(
        cpu=device.type == "cpu", mixed_precision=MIXED[precision],
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout)),
                         DistributedDataParallelKwargs(find_unused_parameters=True)],
        **_plugins(cfg, strategy, processes))
    return Runtime(accelerator=accelerator, device=device if device.type == "cpu" else accelerator.device,
                   precision=precision, strategy=strategy, rank=accelerator.process_index,
                   world_size=accelerator.num_processes)


def shutdown() -> None:
    """Leave the process group at the end of a command (torch warns about one left open)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
