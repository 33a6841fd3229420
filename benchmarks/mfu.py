"""Model FLOPs utilisation of causal-LM fine-tuning: FLOPs per step and the matmul peak.

Model FLOPs of one optimizer step (Kaplan et al. 2020, arXiv:2001.08361, §2.1; Chowdhery
et al. 2022, PaLM, arXiv:2204.02311, App. B), counted per batch:
  forward  2·N_lin·T + 4·n_layers·d_attn·K + 2·V·d·R  (+ 2·N_adapter·T for LoRA)
  backward full fine-tuning: 2 × forward. LoRA/QLoRA: the frozen weights need only the
           input gradients (1 × their forward: linear layers and LM head), attention
           2 × its forward, the adapters 2 × theirs.
N_lin: the linear layers' weights (no embeddings), T: real (non-pad) tokens, K: Σ over
real tokens of (position + 1), the keys a causal token attends to, R: response tokens
(the LM head runs at labelled positions only), N_adapter = Σ r·(in + out). Recomputation
under gradient checkpointing is not counted (model FLOPs, not hardware FLOPs).
"""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path


def model_shapes(config_path: Path, rank: int) -> dict:
    """The sizes the count needs, from a transformers ``config.json`` (LLaMA-style blocks)."""
    c = json.loads(Path(config_path).read_text())
    d, layers, ffn, heads = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["num_attention_heads"]
    head_dim = c.get("head_dim") or d // heads
    q, kv = heads * head_dim, c.get("num_key_value_heads", heads) * head_dim
    projections = [(d, q), (d, kv), (d, kv), (q, d), (d, ffn), (d, ffn), (ffn, d)]  # q k v o gate up down
    return {"d": d, "ffn": ffn, "layers": layers, "d_attn": q, "vocab": c["vocab_size"],
            "n_linear": layers * sum(i * o for i, o in projections),
            "n_adapter": layers * sum(rank * (i + o) for i, o in projections)}


def token_stats(batch: dict) -> dict:
    """Padded and real tokens of a batch and K = Σ (position + 1) over its real tokens
    (packed rows: positions restart per example, from ``position_ids``)."""
    import torch  # lazy: the driver of a benchmark reads this module before its workers load torch

    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    positions = batch["position_ids"] if "position_ids" in batch else mask.cumsum(1) - 1
    return {"padded_tokens": ids.numel(), "real_tokens": int(mask.sum()),
            "attention_keys": int(((positions + 1) * mask).sum())}


def step_flops(step: dict, method: str, s: dict) -> float:
    """Model FLOPs of one step with ``token_stats`` and ``response_tokens`` (formula above)."""
    t, k, r = step["real_tokens"], step["attention_keys"], step["response_tokens"]
    linear, attention, head = 2 * s["n_linear"] * t, 4 * s["layers"] * s["d_attn"] * k, 2 * s["vocab"] * s["d"] * r
    if method == "full":
        return 3 * (linear + attention + head)
    return 2 * (linear + head) + 3 * attention + 3 * 2 * s["n_adapter"] * t


def matmul_peak(s: dict, tokens: list[int], seconds: float = 1.0, device: str = "cpu",
                precisions: tuple[str, ...] = ("fp32", "bf16")) -> dict:
    """GFLOP/s of ``torch.matmul`` at the model's linear shapes (tokens × d·d, d·ffn, ffn·d) in
    each of ``precisions`` on ``device`` (a CPU: this process's threads; a GPU: timed between
    synchronisations); ``peak_gflops`` is the best shape."""
    import torch  # lazy: as in token_stats

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    out: dict = {"threads": torch.get_num_threads(), "device": device}
    for name in precisions:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        rates = {}
        for m, (k, n) in itertools.product(tokens, ((s["d"], s["d"]), (s["d"], s["ffn"]), (s["ffn"], s["d"]))):
            a = torch.randn(m, k, dtype=dtype, device=device)
            b = torch.randn(k, n, dtype=dtype, device=device)
            for _ in range(3):
                torch.matmul(a, b)
            sync()
            count, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds:
                for _ in range(20 if cuda else 1):  # a GPU queues work: time whole groups
                    torch.matmul(a, b)
                count += 20 if cuda else 1
                sync()
            elapsed = time.perf_counter() - t0
            rates[f"{m}x{k}x{n}"] = round(2 * m * k * n * count / elapsed / 1e9, 1)
        out[name] = {"peak_gflops": max(rates.values()), "shapes": rates}
    return out
