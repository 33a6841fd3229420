"""Language-model evaluation: token-weighted loss and perplexity."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..training.losses import causal_lm_token_losses, label_count, model_loss
from .batching import inference, length_sorted


def lm_loss_and_perplexity(model: nn.Module, features: list[dict], batch_size: int,
                           collate: Callable[[list[dict]], dict],
                           token_loss: Callable[[nn.Module, dict], tuple[torch.Tensor, int]]) -> dict[str, float]:
    """Mean loss over every labelled token of ``features`` (not a mean of batch means); batches
    of similar length, longest first."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with inference(model):
        for _, chunk in length_sorted(features, batch_size):
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            loss_sum, n = token_loss(model, batch)
            total += float(loss_sum)
            count += n
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def model_token_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(summed loss, number of labelled tokens) from the model's own loss over unshifted labels
    (masked LM, seq2seq)."""
    n = label_count(batch, shifted=False)
    return model_loss(model, batch) * n, n


def lm_metrics(model: nn.Module, features: list[dict], batch_size: int,
               collate: Callable[[list[dict]], dict], shifted: bool) -> dict[str, float]:
    """Loss and perplexity of a language model: next-token prediction when ``shifted`` (causal
    LM), else the model's own loss (masked LM with fixed masking, seq2seq)."""
    token_loss = causal_lm_token_losses if shifted else model_token_losses
    return lm_loss_and_perplexity(model, features, batch_size, collate, token_loss)
