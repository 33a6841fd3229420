"""Shared pieces of the transfer stages: sentence features from a backbone, logits at the
response positions of a causal LM, and loading a task data file."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.paths import resolve_data_path
from ..data.tokenize import IGNORE
from ..training.losses import fast_path, unwrap

ENCODER_TYPES = {"bert", "roberta", "distilbert", "electra", "deberta", "deberta-v2", "xlm-roberta", "albert"}


def is_encoder(model: nn.Module) -> bool:
    return getattr(unwrap(model).config, "model_type", "") in ENCODER_TYPES


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, encoder: bool) -> torch.Tensor:
    """[CLS] (first token) for encoders, the last real token (right padding) for decoders."""
    if encoder:
        return hidden[:, 0]
    last = attention_mask.long().sum(1).clamp(min=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def backbone_of(model: nn.Module) -> nn.Module:
    lm = unwrap(model)
    backbone = getattr(lm, getattr(lm, "base_model_prefix", ""), None)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"{type(lm).__name__}: no backbone under base_model_prefix")
    return backbone


def pooled_features(model: nn.Module, batch: dict) -> torch.Tensor:
    """[B, H] sentence features from the (method-adapted) backbone, no task head."""
    kw = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    hidden = backbone_of(model)(**kw).last_hidden_state
    return pool_hidden(hidden, batch["attention_mask"], is_encoder(model))


def hidden_size(model: nn.Module) -> int:
    cfg = unwrap(model).config
    return getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) or cfg.d_model


def response_logits(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, V], targets [N]) at the labelled next-token positions, row-major order."""
    labels = batch["labels"]
    targets = labels[:, 1:]
    keep = targets != IGNORE
    path = fast_path(unwrap(model))
    prompt = any(getattr(c, "is_prompt_learning", False) for c in (getattr(model, "peft_config", None) or {}).values())
    if path is not None and not prompt:
        backbone, head = path
        hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = head(hidden[:, :-1][keep])
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][keep]
    return logits, targets[keep]


def masked_logits(logits: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Logits with the classes outside ``allowed`` ([B, C] bool) set to −inf."""
    if allowed is None:
        return logits
    return logits.float().masked_fill(~allowed, float("-inf"))


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels)


def resolve(path: str, base_dir: Path | None) -> Path:
    return resolve_data_path(path, base_dir)
