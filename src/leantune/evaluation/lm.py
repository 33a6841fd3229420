"""Language-model evaluation: token-weighted loss and perplexity."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..training.modes import evaluating


def lm_loss_and_perplexity(model: nn.Module, features: list[dict], batch_size: int,
                           collate: Callable[[list[dict]], dict],
                           token_loss: Callable[[nn.Module, dict], tuple[torch.Tensor, int]]) -> dict[str, float]:
    """Mean loss over every labelled token of ``features`` (not a mean of batch means)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with evaluating(model):
        for s in range(0, len(features), batch_size):
            batch = {k: v.to(device) for k, v in collate(features[s: s + batch_size]).items()}
            loss_sum, n = token_loss(model, batch)
            total += float(loss_sum)
            count += n
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
