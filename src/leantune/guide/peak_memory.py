"""Peak training memory, estimated before training: the arithmetic, from a model's shape
(``model_shape.py``), its parameter counts (``trainable.py``) and the tensors autograd saves
(``activations.py``). The estimate of a recipe: ``estimate.py``.

The estimate is a sum of components (bytes) at the moment of the peak:

* ``weights``: the frozen base weights at the weight dtype (fp32 / bf16 / fp16; ``Setting.weight_dtype``
  when they load in another type than the precision's), or NF4
  with double quantization for QLoRA (0.5 B per quantized weight plus 1/64 + 4/16384 B of
  constants, Dettmers et al. 2023, arXiv:2305.14314) plus one de-quantized linear layer
  (bitsandbytes de-quantizes each layer for its matmul). On CPU, QLoRA also keeps the whole
  checkpoint file resident: transformers memory-maps safetensors, the weights it did not
  quantize (embeddings, norms) stay views of that mapping, and every page of the quantized
  ones was read to quantize them;
* ``trainable``: the trained parameters (fp32 for PEFT adapters, the weight dtype for
  methods that train base weights);
* ``gradients``: one gradient per trainable parameter, same dtype;
* ``optimizer``: AdamW 8 B per trainable parameter (two fp32 moments; 4 B when the
  parameters themselves are half precision), 8-bit AdamW 2 B, SGD with momentum 4 B;
* ``activations``: the tensors autograd saves for backward in every transformer layer
  (:func:`activation_bytes_per_layer`; Korthikanti et al. 2022, arXiv:2205.05198, counted
  for the model's real shapes, precision and device), with gradient checkpointing each
  layer's input plus one layer; under autocast also the half-precision weight copies. QLoRA
  on CPU under autocast: its NF4 layers return fp32 (their compute dtype), so the MLP's
  tensors stay fp32;
* ``logits``: the loss. leantune's causal-LM loss projects only labelled positions and in
  tiles of 2^23 logits (``training/losses.py``), so this is a few tiles, not
  positions × vocabulary; other heads (masked LM, seq2seq) and other trainers
  (``Setting.loss = "full"``) hold full fp32 logits, their log-softmax and its gradient;
* ``overhead``: the runtime before the model loads. CPU: Python, torch, transformers,
  PEFT, the tokenizer and the data, measured at 564–605 MB RSS in ``pipeline.train``
  (``benchmarks/estimate_accuracy.py``); under bf16 autocast plus oneDNN's bf16 kernels and
  caches (``BF16_KERNELS_MB``). CUDA: the CUDA context and allocator slack;
* ``heap`` (CPU): free memory glibc's heap keeps beside the live tensors, by ``train.cpu_heap``
  (``Setting.cpu_heap``). reuse, the default: most of a step's transient memory, which batches of
  changing length leave in holes (:func:`reused_heap_bytes`); release (the engine's 1 MiB mmap
  threshold): the holes of saved tensors under 1 MiB (:func:`heap_retained_bytes`), small in fp32,
  large under bf16 autocast, whose half-size tensors fall under the threshold.

When the peak happens: leantune's engine releases gradients after each optimizer step
(``zero_grad(set_to_none=True)``), so on CPU (calibrated against peak RSS) the estimate
is the larger of two moments: the end of the forward pass (activations, loss tiles and
only the gradients that exist then: the output head's, which the tiled loss computes
during the forward, or all of them under gradient accumulation) and the end of the
backward pass (all gradients, activations freed). On CUDA the estimate keeps the
standard sum of all components, the convention of published memory tables.

Not modelled: under release, heap growth when batch shapes vary (oneDNN caches kernels per
shape, and each new, longer shape leaves holes: under bf16 autocast the 96-step demo reached
3.9 GB peak RSS against 2.55 GB estimated, see docs/guidance.md); under reuse, QLoRA's fp32
de-quantized weights between the activations (SmolLM2 QLoRA fp32: −25 %), the tokenized
dataset held as Python lists (about 90 B per token), and activation memory of methods that
change the forward pass (adapters, prefixes) beyond the base model's.

Precision ``auto`` is what leantune does: on a GPU, ``model.dtype: auto`` loads the frozen weights in
bf16 (fp16 on GPUs before Ampere; ``pipeline._model_dtype``) and ``training/device.keep_fp32_master_weights``
keeps every trainable parameter in fp32, trained under autocast: frozen weights 2 B, trainable 4 B with
fp32 gradients and optimizer states (full fine-tuning: fp32 master weights for all, 16 B per parameter
with AdamW). On CPU ``auto`` is fp32 here (``estimate.setting_from_recipe`` resolves a recipe's
``auto`` as the engine does). ``bf16``/``fp16`` mean pure half precision (other trainers' pure bf16:
half-precision trainable weights and AdamW moments).

Several GPUs (``gpus``, ``strategy``, ``offload``): ``sharding.py`` divides the model states per GPU
(DDP, ZeRO-1/2/3, FSDP) and moves what CPU offload moves to ``Estimate.host``.

Parameter counts are exact where possible: the model is built on the ``meta``
device (no memory, no weights read) and the method applied to it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..training import engine  # its mmap threshold, read when estimating
from ..training.allocator import DYNAMIC_MMAP_THRESHOLD_MAX
from ..training.losses import TILE_ELEMENTS
from .activations import (
    heap_gradient_bytes,
    heap_retained_bytes,
    reused_heap_bytes,
    saved_tensors_per_layer,
    top_activation_bytes,
    weight_copy_sizes,
)
from .model_shape import GB, MB, ModelShape, default_head
from .sharding import SHARDED, STRATEGIES, check, per_gpu, unit_params
from .trainable import BASE_TRAINING, Counts, count_trainable, method_names

OPTIMIZER_BYTES = {"adamw": 8.0, "paged_adamw_32bit": 8.0, "adamw_8bit": 2.0, "paged_adamw_8bit": 2.0, "sgd": 4.0}
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "mixed": 4}  # mixed: fp32 weights, half activations
# NF4 with double quantization (Dettmers et al. 2023): 4 bit + 8-bit absmax per 64 weights
# + fp32 per 256 absmax values = 0.5 + 1/64 + 4/(64·256) bytes per weight; without DQ 0.5 + 4/64.
NF4_BYTES = {True: 0.5 + 1 / 64 + 4 / (64 * 256), False: 0.5 + 4 / 64}
# Runtime before the model loads: CPU measured in pipeline.train (564–605 MB RSS over the six
# estimate_accuracy cases); CUDA: context and allocator slack.
OVERHEAD_MB = {"cpu": 590.0, "cuda": 600.0}
# CPU bf16 autocast (precision "mixed" on CPU), both fitted on benchmarks/estimate_accuracy.py's 12 cases
# (6 × fp32 and bf16 autocast, Xeon with AVX512-BF16 and AMX, 2026-12-02) as measured − estimated =
# BF16_KERNELS_MB + HEAP_RETAINED × the saved bytes under the mmap threshold (heap_retained_bytes):
# * BF16_KERNELS_MB: oneDNN's bf16 (AMX / AVX512-BF16) kernels and caches, a constant per process. Cycling
#   SmolLM2 + LoRA through new batch shapes left ~18 MB more in use in the heap after each step per new
#   shape (primitive cache; ~8 MB with ONEDNN_PRIMITIVE_CACHE_CAPACITY=0), unchanged when a shape recurs:
#   one shape's worth plus the JIT code;
# * HEAP_RETAINED (activations.py): free heap memory kept per byte of small saved tensors.
BF16_KERNELS_MB = 50.0


@dataclass
class Setting:
    """How the model is trained."""

    method: list[dict] = field(default_factory=lambda: [{"name": "lora"}])
    precision: str = "fp32"          # fp32 | bf16 | fp16 (pure) | mixed (autocast) | auto (leantune's default)
    weight_dtype: str | None = None  # frozen weights' dtype when not the precision's (GPU auto: bf16 / fp16)
    quant: str = "none"              # none | nf4 (implied by qlora)
    double_quant: bool = True
    optimizer: str = "adamw"
    batch_size: int = 8
    seq_len: int = 512
    grad_accum: int = 1              # > 1: gradients persist through the next micro-batch's forward
    gradient_checkpointing: bool = False
    label_fraction: float = 1.0      # share of positions with a label (the causal-LM loss projects only those)
    head: str | None = None          # causal_lm | seq_cls | masked_lm | seq2seq (default: from the arch)
    num_labels: int = 2
    attention: str = "sdpa"          # sdpa (flash / memory-efficient kernels, no s² scores) | eager
    device: str = "cpu"
    loss: str = "engine"             # engine: leantune's losses | full: logits at every position (HF-style trainers)
    overhead_mb: float | None = None
    logit_copies: float = 3.0        # full logits: logits, log-softmax, gradient (fp32)
    gpus: int = 1                    # data-parallel processes, one GPU each
    strategy: str = "ddp"            # ddp | zero1 | zero2 | zero3 | fsdp (sharding.py)
    offload: str = "none"            # none | optimizer | all (= cpu): to host memory (sharding.py)
    cpu_heap: str = "reuse"          # reuse | release: what glibc does with freed activations (train.cpu_heap)


@dataclass
class Estimate:
    model: str
    method: str
    trainable_params: int
    total_params: int
    components: dict[str, float]     # bytes
    count_source: str                # meta (exact) | formula
    setting: dict
    notes: list[str] = field(default_factory=list)
    host: dict[str, float] = field(default_factory=dict)  # bytes per process in host memory (CPU offload)

    @property
    def total(self) -> float:
        """Bytes per GPU (per process)."""
        return sum(self.components.values())

    @property
    def total_mb(self) -> float:
        return self.total / MB

    def fits(self, budget_bytes: float) -> bool:
        return self.total <= budget_bytes

    def as_dict(self) -> dict:
        d = asdict(self)
        d["total_bytes"] = self.total
        d["total_mb"] = round(self.total_mb, 1)
        d["host_bytes"] = sum(self.host.values())
        return d

# --------------------------------------------------------------------------- the estimate

def loss_bytes(s: ModelShape, setting: Setting, head: str, counts: Counts) -> tuple[float, float]:
    """(logits, head gradient during the forward) of the loss.

    leantune's causal-LM loss (training/losses.py) projects the ``n`` labelled positions in
    tiles of 2^23 logits and computes the gradients on the way: one tile of fp32 logits, its
    log-softmax and the previous tile's (3 tiles; 2 when one tile holds all ``n``), the
    gathered hidden states and their gradient (``2·n·h``); when the head trains, its fp32
    weight gradient exists from the forward on (returned as the head's gradient) and each
    tile adds a ``vocab × h`` product to it. Full logits (other heads, other trainers):
    ``positions × vocab × 4 B × logit_copies``.
    """
    tokens = setting.batch_size * setting.seq_len
    e = 4 if setting.precision == "fp32" else 2
    if head == "causal_lm" and setting.loss == "engine" and counts.tiled_loss:
        n = max(1, round(tokens * min(max(setting.label_fraction, 0.0), 1.0)))
        rows = min(n, max(1, TILE_ELEMENTS // s.vocab))
        logits = rows * s.vocab * 4 * (3 if n > rows else 2) + 2 * n * s.hidden * e
        if counts.head_trains:
            return logits + s.vocab * s.hidden * e, s.vocab * s.hidden * 4
        return logits, 0.0
    if head in ("causal_lm", "masked_lm", "seq2seq"):
        return tokens * s.vocab * 4 * setting.logit_copies, 0.0
    return setting.batch_size * setting.num_labels * 4 * setting.logit_copies, 0.0


def resolve_precision(setting: Setting, half: str = "bf16") -> Setting:
    """``precision: auto``: on a GPU leantune's default, autocast over trainable fp32 master weights with
    the frozen weights in ``weight_dtype`` (``half`` unless set: bf16, fp16 before Ampere); on CPU fp32."""
    if setting.precision != "auto":
        return setting
    if setting.device == "cuda":
        return replace(setting, precision="mixed", weight_dtype=setting.weight_dtype or half)
    return replace(setting, precision="fp32")


def estimate(shape: ModelShape, setting: Setting) -> Estimate:
    setting = resolve_precision(setting)
    names = method_names(setting.method)
    head = setting.head or default_head(shape)
    notes: list[str] = []
    quant = "nf4" if "qlora" in names else setting.quant
    counts = count_trainable(shape, setting.method, head, setting.num_labels)
    trainable, total = counts.trainable, counts.total
    wb = DTYPE_BYTES[setting.weight_dtype or setting.precision]
    cpu = setting.device == "cpu"
    base_trained = bool(set(names) & BASE_TRAINING)
    # PEFT keeps adapter weights in fp32; trained base weights keep the precision's type (fp32 master
    # weights under autocast: keep_fp32_master_weights converts half-precision trainable weights)
    tb = DTYPE_BYTES[setting.precision] if base_trained else 4
    frozen = max(total - trainable, 0)
    half_frozen = setting.precision == "mixed" and wb == 2  # frozen weights half, trainable fp32 master
    # DeepSpeed under autocast: the whole model in the half type, fp32 master weights in its optimizer
    deepspeed_half = setting.device == "cuda" and setting.strategy.startswith("zero") and setting.precision == "mixed"
    if half_frozen and not deepspeed_half:
        notes.append(f"{setting.weight_dtype} autocast; trainable parameters as fp32 master weights (4 B) with fp32 "
                     f"gradients and optimizer states" + (f"; frozen weights in {setting.weight_dtype} (2 B, "
                                                          f"model.dtype auto on a GPU)" if frozen else ""))
    qcfg = next((m for m in setting.method if m["name"] == "qlora"), {})
    # NF4 layers compute in bnb's compute dtype: fp32 on CPU by default (methods/qlora.py), bf16 on CUDA
    nf4_fp32 = quant == "nf4" and qcfg.get("compute_dtype", "auto") in (("auto", "float32") if cpu else ("float32",))
    if quant == "nf4":
        q = min(shape.quantizable_params, frozen)
        largest = shape.hidden * max(shape.intermediate, shape.hidden)
        compute = 4 if setting.precision == "fp32" or nf4_fp32 else 2
        weights = q * NF4_BYTES[setting.double_quant] + (frozen - q) * wb + min(largest, q) * compute
        notes.append(f"NF4{' + double quantization' if setting.double_quant else ''}: "
                     f"{NF4_BYTES[setting.double_quant]:.4f} B per quantized weight ({q:,} weights)")
        if cpu and (shape.checkpoint_bytes or wb) == wb:
            weights += q * wb
            notes.append("CPU: the memory-mapped checkpoint stays resident (embeddings and norms are views "
                         "of it, the quantized weights' pages were read to quantize them)")
    else:
        weights = frozen * wb
    opt = OPTIMIZER_BYTES.get(setting.optimizer, 8.0)
    if setting.optimizer in ("adamw", "paged_adamw_32bit") and tb == 2:
        opt = 4.0  # torch AdamW keeps moments in the parameter dtype
        notes.append("pure half-precision training: AdamW moments in bf16/fp16 (4 B per parameter)")
    tokens = setting.batch_size * setting.seq_len
    train_norms = "full" in names or "ln_tuning" in names
    adapters = bool(set(names) & {"lora", "qlora", "adalora"})
    mlp_element = 4 if nf4_fp32 and setting.precision == "mixed" else None  # fp32 NF4 outputs under autocast
    # frozen half-precision embeddings make the residual stream half too (fp32 + bf16 would promote)
    residual = 2 if deepspeed_half or (half_frozen and not set(names) & {"full", "embedding"}) else None
    tensors = saved_tensors_per_layer(shape, tokens, setting.seq_len, setting.precision, setting.device,
                                      setting.attention, train_norms, adapters, mlp_element, residual)
    per_layer = sum(size * n for size, n in tensors)
    top = top_activation_bytes(shape, tokens, setting.precision, setting.device, train_norms, residual)
    layers = max(shape.layers, 1)
    if setting.gradient_checkpointing:
        r = residual or (4 if setting.precision in ("fp32", "mixed") else 2)
        acts = shape.layers * r * tokens * shape.hidden + per_layer + top
        kept = [(r * tokens * shape.hidden, shape.layers)] + tensors  # layer inputs + the recomputed layer
        notes.append("gradient checkpointing: layer inputs kept, one layer recomputed at a time")
    else:
        acts = shape.layers * per_layer + top
        kept = [(size, n * shape.layers) for size, n in tensors]
    if setting.precision == "mixed" and quant != "nf4":  # autocast's half-precision weight copies, kept for
        # backward; with checkpointing only the recomputed layer's. Of fp32 weights only: half frozen need none
        copied = 0 if deepspeed_half else min(shape.linear_params, trainable) if half_frozen else shape.linear_params
        copies = copied * 2
        acts += copies / layers if setting.gradient_checkpointing else copies
        # the copies' sizes from the layer's shapes, scaled to the exact count
        scale = copied / layers / max(sum(size / 2 * n for size, n in weight_copy_sizes(shape)), 1)
        kept += [(size * scale, n * (1 if setting.gradient_checkpointing else layers))
                 for size, n in weight_copy_sizes(shape)]
        if copied and not (half_frozen and not base_trained):  # PEFT over half weights: the adapters' only
            notes.append("mixed precision: half-precision weight copies saved for backward")
    logits, head_grad = loss_bytes(shape, setting, head, counts)
    overhead_mb = setting.overhead_mb if setting.overhead_mb is not None else OVERHEAD_MB.get(setting.device,
                                                                                            OVERHEAD_MB["cpu"])
    if setting.overhead_mb is None and cpu and setting.precision == "mixed":
        overhead_mb += BF16_KERNELS_MB
        notes.append(f"CPU bf16 autocast: + {BF16_KERNELS_MB:.0f} MB for oneDNN's bf16 kernels and caches")
    overhead = overhead_mb * MB
    grads = trainable * tb
    components = {"weights": weights, "trainable": grads, "gradients": grads, "optimizer": trainable * opt,
                  "activations": acts, "logits": logits, "overhead": overhead}
    if cpu:  # glibc's heap: the holes of small saved tensors (release), or a step's freed memory kept (reuse)
        held = heap_retained_bytes(kept, engine.MMAP_THRESHOLD_BYTES)
        ceiling = DYNAMIC_MMAP_THRESHOLD_MAX
        components["heap"] = held if setting.cpu_heap == "release" else reused_heap_bytes(
            acts + logits + held, kept, ceiling, heap_gradient_bytes(shape, grads, tb, base_trained, ceiling))
        if setting.cpu_heap == "reuse":
            notes.append("train.cpu_heap reuse: glibc's heap keeps a step's freed activations for the next "
                         "(train.cpu_heap: release lowers the peak, slower steps)")
    if cpu:  # the larger of the end of the forward and the end of the backward pass
        forward_grads = grads if setting.grad_accum > 1 else head_grad
        if forward_grads + acts + logits >= grads:
            components["gradients"] = forward_grads
        else:
            components["activations"] = components["logits"] = 0.0
            notes.append("peak at the end of the backward pass: all gradients, activations already freed")
    check(setting.gpus, setting.strategy, setting.offload, quant == "nf4", setting.device)
    host: dict[str, float] = {}
    if deepspeed_half:
        components.update(trainable=trainable * 2, gradients=trainable * 2, optimizer=trainable * (opt + 4))
        if quant != "nf4":
            components["weights"] = frozen * 2
        notes.append("DeepSpeed under autocast casts the model to the half type and keeps fp32 master weights in "
                     "its optimizer states: 2 + 2 + 12 B per trained parameter with AdamW (the ZeRO paper's split)")
    if setting.device == "cuda":
        gathered = 0.0
        if "weights" in SHARDED[setting.strategy]:  # FSDP gathers in the autocast type (accelerate's policy)
            e = 4 if setting.precision == "fp32" else 2
            block_grads = min(trainable, shape.linear_params) / layers  # one block's, before the reduce-scatter
            gathered = (unit_params(total, shape.linear_params, shape.layers) + block_grads) * e
        components, host, more = per_gpu(components, setting.gpus, setting.strategy, setting.offload, gathered)
        notes += more
    elif setting.gpus > 1:
        notes.append(f"per process ({setting.gpus} CPU processes, ddp)")
    d = asdict(setting)
    d["head"], d["quant"] = head, quant
    return Estimate(model=shape.name, method="+".join(names), trainable_params=int(trainable),
                    total_params=int(total), components=components, count_source=counts.source, setting=d,
                    notes=notes, host=host)


# --------------------------------------------------------------------------- against a budget

def verdict(est: Estimate, budget: float) -> str:
    if est.total <= 0.8 * budget:
        return "fits"
    if est.total <= budget:
        return "tight"
    return "does not fit"


def suggestions(shape: ModelShape, setting: Setting, budget: float) -> list[str]:
    """What to change so the run fits ``budget``: tried one by one, cumulative."""
    tries: list[tuple[str, dict]] = []
    names = method_names(setting.method)
    if setting.device == "cpu" and setting.cpu_heap == "reuse":  # the same training, slower steps
        tries.append(("train.cpu_heap=release", {"cpu_heap": "release"}))
    if not setting.gradient_checkpointing:
        tries.append(("train.gradient_checkpointing=true", {"gradient_checkpointing": True}))
    if setting.optimizer in ("adamw", "paged_adamw_32bit") and setting.device == "cuda":
        tries.append(("train.optimizer=paged_adamw_8bit", {"optimizer": "paged_adamw_8bit"}))
    if setting.device == "cuda" and setting.gpus > 1 and "qlora" not in names:
        for stage in ("zero2", "zero3"):
            if STRATEGIES.index(setting.strategy) < STRATEGIES.index(stage) and setting.strategy != "fsdp":
                tries.append((f"train.distributed: {{strategy: deepspeed, zero_stage: {stage[-1]}}}",
                              {"strategy": stage}))
    if "full" in names:
        tries.append(("method: lora", {"method": [{"name": "lora"}]}))
    if "qlora" not in names:
        tries.append(("method: qlora", {"method": [{"name": "qlora"}]}))
    if setting.batch_size > 1:
        tries.append(("train.batch_size=1 (raise train.grad_accum)", {"batch_size": 1}))
    out, current = [], Setting(**asdict(setting))
    for label, change in tries:
        current = Setting(**{**asdict(current), **change})
        est = estimate(shape, current)
        out.append(f"{label}: {est.total / GB:.2f} GB")
        if est.total <= budget:
            break
    return out


def max_batch(shape: ModelShape, setting: Setting, budget: float, limit: int = 1 << 16) -> int:
    """The largest micro-batch whose estimate (per GPU) fits ``budget``; 0 when batch 1 does not.
    Doubling, then bisection: the estimate grows with the batch."""
    def fits(b: int) -> bool:
        return estimate(shape, replace(setting, batch_size=b)).total <= budget

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
