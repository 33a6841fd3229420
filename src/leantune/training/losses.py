"""Losses that compute only what the gradient needs.

For causal LMs, the output projection runs only at positions that carry a label:
with a 49k-token vocabulary the full logits tensor is the largest activation of a
small model, and in instruction tuning most positions are prompt or padding. Even
those labelled logits are never held whole: the projection and the cross-entropy run
tile by tile, with the gradients computed on the way (:class:`_LinearCrossEntropy`).
Right-padded batches run without an attention mask: under a causal mask no real
token sees the padding after it, and the padding carries no labels, so the loss is
the same while attention takes its plain causal path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.tokenize import IGNORE


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying transformers model (through PEFT and DDP wrappers)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def uses_prompt_learning(model: nn.Module) -> bool:
    cfgs = getattr(model, "peft_config", None) or {}
    return any(getattr(c, "is_prompt_learning", False) for c in cfgs.values())


def _adds_to_loss(model: nn.Module) -> bool:
    """PEFT tuners whose forward adds a regulariser to ``outputs.loss`` (AdaLoRA's orthogonality
    term): in training the model's own loss carries it; evaluation keeps the plain cross-entropy."""
    cfgs = getattr(model, "peft_config", None) or {}
    return model.training and any(getattr(c, "orth_reg_weight", 0) for c in cfgs.values())


def fast_path(lm: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(backbone, output head) when logits are just head(hidden), with no scaling or capping."""
    cfg = getattr(lm, "config", None)
    if cfg is None or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    backbone = getattr(lm, getattr(lm, "base_model_prefix", ""), None)
    if head is None or not isinstance(backbone, nn.Module) or backbone is lm:
        return None
    return backbone, head


def label_count(batch: dict[str, torch.Tensor], shifted: bool = True) -> int:
    """How many labelled positions a token-level loss averages over: next-token prediction
    (``shifted``) never predicts the first position; masked-LM and seq2seq labels are not shifted."""
    labels = batch["labels"][:, 1:] if shifted else batch["labels"]
    return int((labels != IGNORE).sum())


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions."""
    labels = batch["labels"]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if "position_ids" in batch:  # packed rows (data/packing.py): transformers derives the per-example causal
        # mask from position_ids when there is neither an attention mask nor a cache
        inputs.update(attention_mask=None, position_ids=batch["position_ids"])
    if uses_prompt_learning(model):  # PEFT passes the virtual tokens' keys and values as a cache
        return model(**inputs, labels=labels).loss
    inputs["use_cache"] = False  # no key/value cache is filled for a loss (nor guarded by compiled layers)
    if _adds_to_loss(model) or (path := fast_path(unwrap(model))) is None:
        return model(**inputs, labels=labels).loss
    backbone, head = path
    if _only_trailing_padding(inputs["attention_mask"], labels):
        inputs["attention_mask"] = None
    hidden = backbone(**inputs).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    return head_cross_entropy(head, hidden[:, :-1][keep], targets[keep])


def _only_trailing_padding(mask: torch.Tensor | None, labels: torch.Tensor) -> bool:
    """True when every row is real tokens then padding (or no padding), with no label on the padding.

    Then a causal model gives the same hidden states at every real position with or
    without the mask, and only real positions reach the loss.
    """
    if mask is None or mask.dim() != 2 or mask.shape != labels.shape:
        return False
    return bool((mask[:, 1:] <= mask[:, :-1]).all()) and bool((labels[mask == 0] == IGNORE).all())


# Logits per tile of the tiled cross-entropy: 2^23 values (32 MB in fp32, ~170 positions of a 49k vocabulary).
TILE_ELEMENTS = 1 << 23


def head_cross_entropy(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy(head(hidden).float(), targets)`` (targets all valid), tiled when ``head`` is a
    plain ``nn.Linear``; anything else (a PEFT-wrapped or quantized head, hooks) takes the plain route."""
    weight = getattr(head, "weight", None)
    device = hidden.device.type
    autocast = torch.is_autocast_enabled(device)
    dtype = torch.get_autocast_dtype(device) if autocast else weight.dtype if weight is not None else None
    if (type(head) is not nn.Linear or head._forward_hooks or head._forward_pre_hooks or not targets.numel()
            or not (autocast or hidden.dtype == weight.dtype) or not weight.is_floating_point()
            or bool((targets < 0).any())):
        return F.cross_entropy(head(hidden).float(), targets)
    grad = torch.is_grad_enabled()
    needs = (grad and hidden.requires_grad, grad and weight.requires_grad,
             grad and head.bias is not None and head.bias.requires_grad)
    return _LinearCrossEntropy.apply(hidden, weight, head.bias, targets, dtype, needs)


class _LinearCrossEntropy(torch.autograd.Function):
    """mean(cross_entropy(hidden @ weight.T + bias, targets)) without the whole logits tensor.

    The positions are cut into tiles; per tile the logits are computed in the compute
    dtype (the autocast dtype, as ``F.linear`` would), the log-softmax in fp32, and,
    when a gradient is wanted, ``(softmax - onehot) / n`` is turned at once into the
    gradients of hidden, weight and bias: the same products backward would compute
    over the whole tensor, so no recomputation. Peak memory is one tile of logits
    instead of three full (positions × vocabulary) tensors (logits, log-softmax
    saved for backward, its gradient).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, dtype, needs):
        need_h, need_w, need_b = needs
        n, vocab = targets.numel(), weight.shape[0]
        tile = max(1, TILE_ELEMENTS // vocab)
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            grad_b = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if need_b else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for s in range(0, n, tile):
                hs, ts = h[s: s + tile], targets[s: s + tile]
                logp = torch.log_softmax(F.linear(hs, w, b).float(), dim=-1)  # the kernel F.cross_entropy uses
                total -= logp.gather(1, ts[:, None]).sum()
                if not (need_h or need_w or need_b):
                    continue
                g = logp.exp_()  # softmax, in place
                g[torch.arange(len(ts), device=g.device), ts] -= 1.0
                g = g.div_(n).to(dtype)
                if need_h:
                    grad_h[s: s + tile] = g @ w
                if need_w:
                    grad_w += (g.t() @ hs).float()
                if need_b:
                    grad_b += g.float().sum(0)
        ctx.grads = (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                     None if grad_b is None else grad_b.to(bias.dtype))
        return total / n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        if ctx.grads is None:
            raise RuntimeError("the tiled cross-entropy computes its gradients once; backward ran twice")
        scale = None if grad_out.item() == 1.0 else grad_out
        grads = [None if g is None else g if scale is None else g * scale.to(g.dtype) for g in ctx.grads]
        ctx.grads = None  # release them now, not when the graph goes
        return (*grads, None, None, None)


def causal_lm_token_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(summed loss, number of labelled tokens) for exact corpus-level evaluation."""
    loss = causal_lm_loss(model, batch)
    n = int((batch["labels"][:, 1:] != IGNORE).sum())
    return loss * n, n


def model_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's own loss (masked LM, sequence classification, seq2seq)."""
    return model(**batch).loss
