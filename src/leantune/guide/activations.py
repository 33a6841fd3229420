"""What autograd keeps for backward, per transformer layer and outside the layers, for the memory
estimate (Korthikanti et al. 2022, *Reducing Activation Recomputation in Large Transformer Models*,
arXiv:2205.05198, counted for the model's real shapes, precision and device), and the part of it glibc's
heap retains on CPU."""
from __future__ import annotations

from .model_shape import ModelShape

# Free heap memory glibc keeps per byte of saved tensors under the engine's mmap threshold (it keeps about
# as much free as it has in use: 291 MB free beside 272 MB of such tensors, SmolLM2 LoRA bf16, batch 8 × 94);
# fitted with BF16_KERNELS_MB (peak_memory.py) on benchmarks/estimate_accuracy.py's 12 cases.
HEAP_RETAINED = 1.15
# train.cpu_heap reuse (glibc's dynamic mmap threshold): free heap memory kept per byte of a step's transient
# memory (reused_heap_bytes); fitted on four 24-step runs over batches of varying length (SmolLM2 LoRA fp32
# and bf16 autocast, SmolLM2 and MiniLM full fp32: 0.96, 0.83, 0.44, 0.77 of it measured), checked on
# benchmarks/estimate_accuracy.py's 12 cases.
HEAP_REUSED = 0.8

def activation_bytes_per_layer(s: ModelShape, tokens: int, seq: int, precision: str = "fp32", device: str = "cpu",
                               attention: str = "sdpa", train_norms: bool = False, adapters: bool = False,
                               mlp_element: int | None = None) -> float:
    """Bytes autograd saves for backward in one transformer layer, ``tokens = batch·seq``.

    Korthikanti et al. (2022) count ``sbh(34 + 5as/h)`` bytes per layer for a half-precision
    GPT layer with a 4h GELU MLP and dropout; the same tensors, for the model's shapes, are:

    * linear inputs: the norm outputs feeding Q/K/V and the MLP, ``2·h`` elements; under
      autocast every linear that keeps its input casts its own half-precision copy (Q, K, V,
      gate, up: 5 copies; PEFT adapters add one more for the attention output, because PEFT
      casts it to the adapter's fp32 dtype and autocast casts back);
    * attention: Q and K after the rotary embedding (K, V at the grouped-query width ``h_kv``),
      V and the attention output (shared with the output projection's input), ``2h + 2h_kv``;
      scores ``b·a·s²``: none with SDPA's flash / memory-efficient kernels (only the row
      log-sum-exp, 4 B), the softmax output with eager attention, plus the dropout mask and the
      dropped probabilities when attention dropout is on. On CPU attention dropout sends SDPA
      to its math kernel, which keeps all three;
    * MLP: gate, up, activation output and their product (gated, ``4f``) or the activation's
      input and output (GELU, ``2f``), at ``mlp_element`` bytes when given: NF4 layers computing
      in fp32 (QLoRA's default on CPU) return fp32 outputs even under autocast, so the MLP's
      element-wise tensors stay fp32 (saved tensors of SmolLM2 QLoRA under bf16 autocast:
      ``(8, 94, 1536)`` fp32, 397 MB, and 785 MB in all where the formula without it gave 580);
    * norms: their inputs, the residual stream (RMSNorm upcasts to fp32: 4 B); the normalised
      output too when the norm weights train (RMSNorm; LayerNorm recomputes it from its saved
      statistics);
    * dropout masks after attention and MLP: 1 B per element on CUDA (bool), a float mask of
      the activation dtype on CPU.

    Element sizes: ``e`` (activations) 4 in fp32, 2 otherwise; ``r`` (residual stream, norm
    outputs) the weights' dtype: 4 in fp32 and mixed, 2 in pure bf16/fp16. Measured here with
    ``torch.autograd.graph.saved_tensors_hooks`` on SmolLM2 and MiniLM (unit tests check the
    closed form); for pure half precision, eager attention and dropout on CUDA it equals
    Korthikanti's count exactly.
    """
    return sum(size * n for size, n in saved_tensors_per_layer(s, tokens, seq, precision, device, attention,
                                                               train_norms, adapters, mlp_element))


def saved_tensors_per_layer(s: ModelShape, tokens: int, seq: int, precision: str = "fp32", device: str = "cpu",
                            attention: str = "sdpa", train_norms: bool = False, adapters: bool = False,
                            mlp_element: int | None = None, residual: int | None = None) -> list[tuple[float, float]]:
    """The tensors of :func:`activation_bytes_per_layer`: (bytes of one tensor, tensors per layer).
    One tensor's size decides where the CPU allocator serves it from (:func:`heap_retained_bytes`).
    ``residual``: bytes of the residual stream when not the precision's (GPU autocast over frozen bf16
    embeddings: 2)."""
    h, f, kv, t = s.hidden, s.intermediate, s.kv_hidden, tokens
    e = 4 if precision == "fp32" else 2
    r = residual or (4 if precision in ("fp32", "mixed") else 2)
    mask = e if device == "cpu" else 1
    mlp_inputs = 2 if s.gated_mlp else 1
    copies = (3 + mlp_inputs + (1 if adapters else 0)) if precision == "mixed" else 2
    batch = tokens / max(seq, 1)
    dropout = s.attn_dropout > 0
    out = [(t * h * e, copies), (t * h * e, 2), (t * kv * e, 2)]  # linear inputs; Q, attention output; K, V
    if attention == "eager" or (device == "cpu" and dropout):
        scores = batch * s.heads * seq * seq
        out += [(scores * e, 1)] + ([(scores * mask, 1), (scores * e, 1)] if dropout else [])
    else:
        out.append((batch * s.heads * seq * 4, 1))  # SDPA's row log-sum-exp
    out.append((t * f * (mlp_element or e), 4 if s.gated_mlp else 2))
    out.append((t * h * (4 if s.norm == "rms" else r), 2))
    if train_norms and s.norm == "rms":
        out.append((t * h * r, 2))
    if s.hidden_dropout > 0:
        out.append((t * h * mask, 2))
    return out


def weight_copy_sizes(s: ModelShape) -> list[tuple[float, float]]:
    """Autocast's half-precision copies of one layer's block linears: (bytes of one copy, copies per
    layer) from the layer's shapes: Q and O ``h×h_q`` (h_q = heads × head_dim, h unless the config
    sets head_dim: Gemma, Qwen3), K and V ``h×h_kv``, the MLP's ``h×f``."""
    return [(2 * s.hidden * s.q_hidden, 2), (2 * s.hidden * s.kv_hidden, 2),
            (2 * s.hidden * s.intermediate, 3 if s.gated_mlp else 2)]


def heap_retained_bytes(tensors: list[tuple[float, float]], threshold: float) -> float:
    """What glibc's heap keeps resident for saved tensors smaller than the mmap threshold.

    The engine (``training/engine.py: return_freed_memory_to_os``) serves blocks of 1 MiB and
    more from mmap, returned to the OS when freed; smaller ones come from the heap, which keeps
    the holes they leave (and those of the backward pass's equally small gradients) resident.
    Under bf16 autocast most of a small model's saved tensors are half the size and fall under
    the threshold: SmolLM2 LoRA at batch 8 × 94 keeps 272 MB of saved tensors below 1 MiB
    (formula 267 MB) against 39 MB in fp32, and glibc's heap at the end of the forward pass
    held 291 MB free beside them (fp32: 155 MB). ``HEAP_RETAINED`` × those bytes, fitted on the
    12 cases of ``benchmarks/estimate_accuracy.py`` (fp32 and bf16 autocast).
    """
    return HEAP_RETAINED * sum(size * n for size, n in tensors if size < threshold)


def reused_heap_bytes(transient: float, kept: list[tuple[float, float]], ceiling: float,
                      refilled: float = 0.0) -> float:
    """What glibc's heap keeps free beside the live tensors under ``train.cpu_heap: reuse``.

    glibc raises its mmap threshold to the size of each large block freed, up to ``ceiling``
    (32 MiB), so after the first steps a step's activations, logits and their gradients come from
    the heap and go back to it; batches of changing length leave holes the next step's tensors fit
    only in part, and the heap holds much of a step's ``transient`` memory free beside the step in
    flight (SmolLM2 LoRA, 24 steps over batches of varying length, fp32: 1.22 GB free beside
    1.14 GB of activations, logits and small-tensor holes). Saved tensors (``kept``: bytes of one,
    count) of ``ceiling`` or more are always mapped and returned; the parameters' gradients in the
    heap (``refilled``), freed after each optimizer step, are the first holes the next forward
    fills (full fine-tuning: 0.52 GB free beside 1.37 GB). ``HEAP_REUSED`` × what remains.
    """
    mapped = sum(size * n for size, n in kept if size >= ceiling)
    return HEAP_REUSED * max(transient - mapped - refilled, 0.0)


def heap_gradient_bytes(s: ModelShape, gradients: float, element: int, base_trained: bool, ceiling: float) -> float:
    """The parameters' gradients glibc serves from its heap: all of them, but for trained base weights
    those of ``ceiling`` bytes or more (the embedding matrix, large block weights), which are mapped."""
    if not base_trained:
        return gradients
    embedding = s.vocab * s.hidden * element
    mapped = embedding if embedding >= ceiling else 0.0
    for size, n in weight_copy_sizes(s):  # half-precision copy sizes: the weights' shapes
        if size / 2 * element >= ceiling:
            mapped += size / 2 * element * n * s.layers
    return max(gradients - mapped, 0.0)


def top_activation_bytes(s: ModelShape, tokens: int, precision: str, device: str, train_norms: bool,
                         residual: int | None = None) -> float:
    """Saved tensors outside the layers: the final norm's input (decoders) or the embedding
    LayerNorm's input, its dropout mask and the pooled last hidden state (encoders)."""
    h, t = s.hidden, tokens
    e = 4 if precision == "fp32" else 2
    r = residual or (4 if precision in ("fp32", "mixed") else 2)
    top = t * h * (4 if s.norm == "rms" else r)
    if train_norms and s.norm == "rms":
        top += t * h * r
    if s.encoder:
        top += t * h * e + (t * h * (e if device == "cpu" else 1) if s.hidden_dropout > 0 else 0)
    return top
