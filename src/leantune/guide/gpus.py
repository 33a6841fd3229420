"""GPUs people have: the memory a training process can use on each, for the estimate's verdict
(``leantune estimate --gpu NAME``), and whether it computes in bf16.

``memory_gib`` is the total the device reports to PyTorch (``torch.cuda.get_device_properties(i)
.total_memory``; ``nvidia-smi`` shows slightly more on GPUs with ECC, whose reserved memory is not
usable), about, from the figures these cards report. The CUDA context is not subtracted here: the
driver, the CUDA runtime and the kernels of cuBLAS/cuDNN/NCCL take 300–600 MB on each GPU outside
PyTorch's allocator (less with CUDA's lazy module loading, more with NCCL for several GPUs), and the
estimate counts it, with the allocator's slack, in its ``overhead`` component (600 MB). So the verdict
compares the estimate with this figure as it is.

``bf16``: Ampere and newer compute in bf16; on older GPUs (T4, V100) ``precision: auto`` picks fp16
with loss scaling and ``model.dtype: auto`` loads the frozen weights in fp16 (``pipeline._model_dtype``).
"""
from __future__ import annotations

from dataclasses import dataclass

from .model_shape import GB


@dataclass(frozen=True)
class Gpu:
    name: str
    label: str
    memory_gib: float               # total the device reports (about)
    bf16: bool = True               # Ampere or newer

    @property
    def usable_bytes(self) -> float:
        return self.memory_gib * GB

    @property
    def half(self) -> str:
        """The half-precision type ``precision: auto`` picks there."""
        return "bf16" if self.bf16 else "fp16"


GPUS: dict[str, Gpu] = {g.name: g for g in (
    Gpu("h200", "H200 141 GB (HBM3e)", 139.8),
    Gpu("h100", "H100 80 GB (SXM / PCIe)", 79.1),
    Gpu("a100-80g", "A100 80 GB", 79.1),
    Gpu("a100-40g", "A100 40 GB", 39.5),
    Gpu("l40s", "L40S 48 GB", 44.4),
    Gpu("a10g", "A10G 24 GB (AWS)", 22.0),
    Gpu("l4", "L4 24 GB", 22.0),
    Gpu("4090", "GeForce RTX 4090 24 GB", 23.6),
    Gpu("3090", "GeForce RTX 3090 24 GB", 23.6),
    Gpu("v100", "V100 16 GB", 15.7, bf16=False),
    Gpu("v100-32g", "V100 32 GB", 31.7, bf16=False),
    Gpu("t4", "T4 16 GB", 14.7, bf16=False),
)}
ALIASES = {"a100": "a100-80g", "a100-80gb": "a100-80g", "a100-40gb": "a100-40g", "h100-80g": "h100",
           "rtx4090": "4090", "rtx-4090": "4090", "rtx3090": "3090", "rtx-3090": "3090", "v100-16g": "v100",
           "v100-32gb": "v100-32g", "l40": "l40s", "a10": "a10g"}


def find_gpu(name: str) -> Gpu:
    """A GPU by its short name (``a100-80g``, ``4090``, …; case, spaces and an ``nvidia``/``rtx`` prefix
    are ignored)."""
    key = name.strip().lower().replace(" ", "-").replace("_", "-").removeprefix("nvidia-")
    key = ALIASES.get(key, key)
    key = ALIASES.get(key.removeprefix("geforce-"), key.removeprefix("geforce-"))
    if key not in GPUS:
        key = ALIASES.get(key.removeprefix("rtx-"), key.removeprefix("rtx-"))
    if key not in GPUS:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(GPUS)} (or give --budget)")
    return GPUS[key]
