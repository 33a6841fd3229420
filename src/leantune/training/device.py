"""Where a run computes and in which number format, decided once for every stage.

``train.device``: ``auto`` is the local rank's GPU when there is one (``LOCAL_RANK`` under
torchrun / accelerate launch), else the CPU; ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` ask
for one. ``train.precision``: ``auto`` is bf16 where the hardware computes it natively
(Ampere+ GPUs, CPUs with AVX512-BF16 or AMX), fp16 with dynamic loss scaling on older
GPUs (Micikevicius et al. 2018, arXiv:1710.03740), fp32 otherwise. Mixed precision
keeps the trainable parameters in fp32 (the master weights) and runs matmuls in the
half type under autocast; see :func:`keep_fp32_master_weights`.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from ..errors import RecipeError
from .modes import HALF_TYPES

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"


def local_rank() -> int:
    """This process's index on its machine (0 without a launcher)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def resolve_device(spec: str = "auto", rank: int | None = None) -> torch.device:
    """The run's device from ``train.device``; a one-sentence error when it is not there."""
    rank = local_rank() if rank is None else rank
    spec = (spec or "auto").strip().lower()
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "auto":
        return torch.device("cuda", rank % n_gpus) if n_gpus else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise RecipeError("train.device: mps (Apple GPU) is not available on this machine; use auto or cpu")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not n_gpus:
            raise RecipeError(f"train.device: {spec} asks for a GPU, and torch sees none on this machine "
                              f"(torch {torch.__version__}, CUDA {'built in' if torch.version.cuda else 'not built in'})"
                              f"; use device: auto or cpu")
        if spec == "cuda":
            return torch.device("cuda", rank % n_gpus)
        index = spec.removeprefix("cuda:")
        if not index.isdigit() or int(index) >= n_gpus:
            raise RecipeError(f"train.device: {spec} does not exist; this machine has {n_gpus} GPU(s): "
                              f"cuda:0 … cuda:{n_gpus - 1}")
        return torch.device("cuda", int(index))
    raise RecipeError(f"train.device: '{spec}' is not a device; use {DEVICE_HELP}")


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


def available_ram_bytes() -> int | None:
    """What the kernel says can be allocated without swapping (``MemAvailable``); None off Linux."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "mps":
        return True
    return cpu_has_native_bf16()


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``train.precision`` on ``device``."""
    if precision == "auto":
        if bf16_supported(device):
            return "bf16"
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise RecipeError("train.precision: fp16 needs a GPU (CPUs have no fp16 matrix units and torch has no "
                          "loss scaling for them); use bf16 or fp32 on CPU, or precision: auto")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RecipeError(f"train.precision: bf16 is not supported by {torch.cuda.get_device_name(device)}; "
                          f"use fp16 (with loss scaling) or precision: auto")
    return precision


def autocast_context(precision: str, device: torch.device):
    """(autocast context, resolved precision): bf16/fp16 autocast, or nothing for fp32."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return nullcontext(), "fp32"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), precision


def recorded_precision_on(precision: str, device: torch.device) -> str:
    """A finished run's precision where ``device`` computes it natively (bf16 on a CPU with
    AVX512-BF16/AMX or a GPU that has it, fp16 on a GPU), else fp32: ``leantune eval`` on the
    machine that trained reproduces the run's own metrics, elsewhere it does not emulate."""
    if precision == "bf16" and bf16_supported(device) or precision == "fp16" and device.type == "cuda":
        return precision
    return "fp32"


def keep_fp32_master_weights(model: nn.Module) -> int:
    """Trainable parameters stored in bf16/fp16 (frozen weights loaded in the half type by
    ``model.dtype: auto``) become fp32, so optimizer updates are not rounded away; autocast
    still runs the matmuls in the half type. Frozen weights keep their dtype, except beside a
    trainable one in the same module (a LayerNorm whose bias trains: its ops need one dtype).
    An embedding that becomes fp32 in a model that stays half returns the half type, as the
    layers after it (a LayerNorm outside autocast) expect. Returns how many parameters were converted."""
    converted, embeddings = 0, []
    for module in model.modules():
        params = [p for p in module.parameters(recurse=False) if p.dtype in HALF_TYPES]
        if not any(p.requires_grad for p in params):
            continue
        half = params[0].dtype
        for p in params:
            grad, p.grad = p.grad, None  # a gradient left by work before training (PET's autoprompt search)
            p.data = p.data.float()
            p.grad = None if grad is None else grad.float()
            converted += p.requires_grad
        if isinstance(module, nn.Embedding):
            embeddings.append((module, half))
    if any(p.dtype in HALF_TYPES for p in model.parameters()):
        for module, half in embeddings:
            module.register_forward_hook(lambda _m, _inputs, out, half=half: out.to(half))
    return converted


def halve_frozen_weights(model: nn.Module, trained: set[int], half: torch.dtype) -> int:
    """The layout a run with half frozen weights trained in, rebuilt on a model loaded in fp32:
    every module without a trained parameter (``trained``: their ``id``) in ``half``, the rest fp32,
    as ``keep_fp32_master_weights`` left them, a trained embedding returning the half type. Casting
    the fp32-loaded weights rounds them as loading in ``half`` would. Returns how many parameters
    were halved."""
    halved, embeddings = 0, []
    for module in model.modules():
        params = [p for p in module.parameters(recurse=False) if p.dtype == torch.float32]
        if any(id(p) in trained for p in params):
            if isinstance(module, nn.Embedding):
                embeddings.append(module)
            continue
        for p in params:
            p.data = p.data.to(half)
            halved += 1
    if halved:
        for module in embeddings:
            module.register_forward_hook(lambda _m, _inputs, out: out.to(half))
    return halved


def is_quantized(model: nn.Module) -> bool:
    """A bitsandbytes-quantized model: placed at load time, never moved with ``.to``."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
                or getattr(getattr(model, "base_model", None), "is_loaded_in_4bit", False))


def move_to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """The model (with every module a method or stage added) on the run's device."""
    if is_quantized(model):
        for p in model.parameters():  # bitsandbytes placed the 4-bit weights; move only what it did not
            if p.device != device and p.dtype.is_floating_point:
                p.data = p.data.to(device)
        return model
    return model.to(device)
