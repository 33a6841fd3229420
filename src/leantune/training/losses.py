"""Losses that compute only what the gradient needs.

For causal LMs, the output projection runs only at positions that carry a label:
with a 49k-token vocabulary the full logits tensor is the largest activation of a
small model, and in instruction tuning most positions are prompt or padding.
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


def _uses_prompt_learning(model: nn.Module) -> bool:
    cfgs = getattr(model, "peft_config", None) or {}
    return any(getattr(c, "is_prompt_learning", False) for c in cfgs.values())


def _adds_to_loss(model: nn.Module) -> bool:
    """PEFT tuners whose forward adds a regulariser to ``outputs.loss`` (AdaLoRA's orthogonality
    term): in training the model's own loss carries it; evaluation keeps the plain cross-entropy."""
    cfgs = getattr(model, "peft_config", None) or {}
    return model.training and any(getattr(c, "orth_reg_weight", 0) for c in cfgs.values())


def _fast_path(lm: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(backbone, output head) when logits are just head(hidden), with no scaling or capping."""
    cfg = getattr(lm, "config", None)
    if cfg is None or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    backbone = getattr(lm, getattr(lm, "base_model_prefix", ""), None)
    if head is None or not isinstance(backbone, nn.Module) or backbone is lm:
        return None
    return backbone, head


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions."""
    labels = batch["labels"]
    if _uses_prompt_learning(model) or _adds_to_loss(model) or (path := _fast_path(unwrap(model))) is None:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    backbone, head = path
    hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logits = head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep])


def causal_lm_token_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(summed loss, number of labelled tokens) for exact corpus-level evaluation."""
    loss = causal_lm_loss(model, batch)
    n = int((batch["labels"][:, 1:] != IGNORE).sum())
    return loss * n, n


def model_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's own loss (masked LM, sequence classification, seq2seq)."""
    return model(**batch).loss
