"""Per-GPU memory of data-parallel training: what each of ``N`` GPUs holds under DDP, ZeRO and FSDP,
and what CPU offload moves to host memory. Applied by ``peak_memory.estimate`` to the whole-model
components (``Setting.gpus``, ``strategy``, ``offload``).

ZeRO (Rajbhandari et al. 2020, *ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models*, arXiv:1910.02054) partitions the model states across the ``N`` data-parallel processes:

* ``ddp``: every GPU holds everything: parameters, gradients, optimizer states;
* ``zero1`` (P_os): the optimizer states are sharded, 1/N on each GPU;
* ``zero2`` (P_os+g): the gradients too;
* ``zero3`` (P_os+g+p): the parameters too; each layer's parameters are all-gathered for its forward
  and backward pass and released after;
* ``fsdp`` (FSDP2, full shard): ZeRO-3's partitioning.

Full fine-tuning with AdamW holds 16 B per parameter, split two ways:

* fp32 parameters (leantune's fp32 master weights under autocast, or fp32 training; FSDP2 keeps its
  shards so): 4 B weights + 4 B gradients + 8 B moments: DDP 16P per GPU, ZeRO-1 4P + 4P + 8P/N,
  ZeRO-2 4P + 12P/N, ZeRO-3 and FSDP 16P/N;
* DeepSpeed under bf16/fp16 casts the model to the half type and keeps the fp32 master weights
  inside its optimizer states (``peak_memory.estimate`` re-splits the components so): 2 + 2 + 12 B,
  the paper's split (K = 12): ZeRO-1 2P + 2P + 12P/N, ZeRO-2 2P + 14P/N, ZeRO-3 16P/N.

Only what exists is sharded: a PEFT method trains few parameters, so ZeRO-1/2 shard only their
gradients and optimizer states, and the frozen base weights stay replicated on every GPU; ZeRO-3 and
FSDP shard the frozen weights too. QLoRA's 4-bit weights cannot be sharded (``docs/distributed.md``).

ZeRO-3/FSDP add the ``gathered`` buffers: the parameters outside the transformer blocks (embeddings,
output head, final norm: FSDP2's root unit, which stays gathered from the forward to the backward
pass) and two blocks (the one computing and the next, prefetched), whole, in the autocast type (FSDP's
mixed-precision policy, which accelerate sets to the run's precision; DeepSpeed's half-precision model),
plus one block's unsharded gradient (what trains of it) before its reduce-scatter. Not
modelled: the gradient reduce-scatter and all-reduce buckets (DeepSpeed's ``reduce_bucket_size``,
DDP's 25 MB buckets), NCCL's own buffers, and fragmentation from gathering and freeing.

Activations, logits and the runtime overhead are per GPU whatever the strategy: each GPU runs its own
micro-batch.

CPU offload (``offload``; DeepSpeed ZeRO-Offload / ZeRO-Infinity, FSDP's ``CPUOffload``):

* ``optimizer``: the optimizer states (each process's shard) live in host memory and the optimizer
  step runs on the CPU;
* ``all`` (``cpu``): with ``zero3`` also the parameter shards (trainable and frozen); under ZeRO-1/2
  parameters are replicated, so only the optimizer states move;
* ``fsdp`` offloads parameters, their gradients and the optimizer step together (``optimizer`` and
  ``all`` are the same there).

Host memory is reported per process; ``N`` processes on one machine need ``N`` times it.
"""
from __future__ import annotations

STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp")
OFFLOADS = ("none", "optimizer", "all", "cpu")  # cpu: all
SHARDED = {"ddp": (), "zero1": ("optimizer",), "zero2": ("optimizer", "gradients"),
           "zero3": ("optimizer", "gradients", "trainable", "weights"),
           "fsdp": ("optimizer", "gradients", "trainable", "weights")}
MODEL_STATES = ("weights", "trainable", "gradients", "optimizer")


def check(gpus: int, strategy: str, offload: str, quantized: bool = False, device: str = "cuda") -> None:
    """Raises ValueError for a combination that does not run."""
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, not {gpus}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
    if offload not in OFFLOADS:
        raise ValueError(f"offload {offload!r}; one of {', '.join(OFFLOADS)}")
    if device != "cuda" and (strategy != "ddp" or offload != "none"):
        raise ValueError(f"{strategy}{' with offload' if offload != 'none' else ''} needs GPUs (--device cuda); "
                         "CPU processes run ddp only")
    if offload != "none" and strategy == "ddp":
        raise ValueError("CPU offload needs ZeRO (zero1, zero2, zero3) or fsdp, not ddp")
    if quantized and strategy in ("zero3", "fsdp"):
        raise ValueError(f"QLoRA's 4-bit weights cannot be sharded: use ddp, zero1 or zero2, not {strategy}")


def unit_params(total: int, block_params: int, layers: int) -> int:
    """Parameters ZeRO-3/FSDP hold gathered at once: those outside the blocks (FSDP2's root unit)
    plus two blocks (the current one and the prefetched next)."""
    per_block = block_params / max(layers, 1)
    return int(min(total, total - block_params + 2 * per_block))


def per_gpu(components: dict[str, float], gpus: int, strategy: str, offload: str = "none",
            gathered: float = 0.0) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """(GPU components, host components, notes) per process from the whole-model ``components``
    (bytes: ``weights``, ``trainable``, ``gradients``, ``optimizer``, and the per-GPU rest).
    ``gathered``: bytes of :func:`unit_params` at their dtype (ZeRO-3/FSDP only)."""
    n = gpus
    gpu = dict(components)
    host: dict[str, float] = {}
    notes: list[str] = []
    sharded = SHARDED[strategy]
    for key in sharded:
        gpu[key] = components.get(key, 0.0) / n
    if strategy == "ddp":
        if n > 1:
            notes.append(f"ddp across {n} GPUs: every GPU holds the whole model, its gradients and optimizer states")
    else:
        what = {"zero1": "optimizer states", "zero2": "optimizer states and gradients",
                "zero3": "optimizer states, gradients and parameters",
                "fsdp": "optimizer states, gradients and parameters (full shard = ZeRO-3)"}[strategy]
        notes.append(f"{strategy} across {n} GPU{'s' if n > 1 else ''}: {what} sharded, 1/{n} on each"
                     + ("; frozen base weights replicated" if strategy in ("zero1", "zero2")
                        and components.get("weights", 0) > 0 else ""))
    if strategy in ("zero3", "fsdp"):
        gpu["gathered"] = gathered
        notes.append("gathered: parameters all-gathered at once, the embeddings/head/final norm (FSDP2's root "
                     "unit) and two transformer blocks (current + prefetched), and one block's gradient before "
                     "its reduce-scatter; other communication buffers not modelled")
    moved: tuple[str, ...] = ()
    if offload != "none":
        if strategy == "fsdp":
            moved = ("weights", "trainable", "gradients", "optimizer")
            notes.append("fsdp CPU offload: parameter shards, their gradients and the optimizer step on the host")
        elif offload in ("all", "cpu") and strategy == "zero3":
            moved = ("weights", "trainable", "optimizer")
            notes.append("zero3 CPU offload: optimizer states and parameter shards on the host (ZeRO-Infinity)")
        else:
            moved = ("optimizer",)
            notes.append("CPU offload: optimizer states on the host, the optimizer step on the CPU (ZeRO-Offload)"
                         + ("; parameters are replicated under zero1/zero2 and stay on the GPU"
                            if offload in ("all", "cpu") else ""))
    for key in moved:
        host[key] = gpu.get(key, 0.0)
        gpu[key] = 0.0
    if host:
        per = sum(host.values()) / 2**30
        notes.append(f"host memory: {per:,.1f} GiB per process" + (f", {per * n:,.1f} GiB for {n} processes on one "
                                                                  f"machine" if n > 1 else ""))
    return gpu, host, notes
