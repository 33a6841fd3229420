"""Pairwise reward modelling (Bradley–Terry): P(chosen ≻ rejected) = σ(r_c − r_r).

The reward model is any causal LM loaded as ``AutoModelForSequenceClassification``
with one output (its score read at the last non-pad token); the loss is
−log σ(r_c − r_r) (Ouyang et al. 2022, InstructGPT, arXiv:2203.02155, eq. 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..training.modes import evaluating


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of −log σ(r_c − r_r)."""
    return -F.logsigmoid(chosen.float() - rejected.float()).mean()


def pair_rewards(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scalar rewards of the chosen and the rejected halves of a :func:`collate_pairs` batch."""
    rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    return rewards.float().chunk(2)


def pairwise_metrics(model: nn.Module, features: list[dict], batch_size: int, collate) -> dict[str, float]:
    """Loss, pairwise accuracy (r_c > r_r) and mean margin r_c − r_r over held-out pairs."""
    device = next(model.parameters()).device
    chosen, rejected = [], []
    with evaluating(model):
        for s in range(0, len(features), batch_size):
            batch = collate(features[s: s + batch_size])
            c, r = pair_rewards(model, {k: v.to(device) for k, v in batch.items()})
            chosen.append(c)
            rejected.append(r)
    if not chosen:
        return {}
    c, r = torch.cat(chosen), torch.cat(rejected)
    return {"loss": bradley_terry_loss(c, r).item(), "accuracy": (c > r).float().mean().item(),
            "margin": (c - r).mean().item(), "reward_chosen": c.mean().item(), "reward_rejected": r.mean().item()}
