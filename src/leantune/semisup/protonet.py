"""Prototypical networks (Snell et al. 2017, arXiv:1703.05175): a class is the mean of its
support embeddings; queries are classified by softmax over negative squared Euclidean distance."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def prototypes(support: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """[N, H]: the mean support embedding of each episode class."""
    protos = torch.zeros(n_way, support.shape[-1], dtype=support.dtype, device=support.device)
    protos = protos.index_add(0, labels, support)
    counts = torch.bincount(labels, minlength=n_way).clamp_min(1).to(support.dtype)
    return protos / counts.unsqueeze(-1)


def proto_logits(query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """−‖q − c‖² for every query and prototype."""
    return -torch.cdist(query.float(), protos.float()).pow(2)


def proto_loss(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
               query_labels: torch.Tensor, n_way: int) -> tuple[torch.Tensor, float]:
    """(cross-entropy of the queries, their accuracy)."""
    logits = proto_logits(query, prototypes(support, support_labels, n_way))
    acc = float((logits.argmax(-1) == query_labels).float().mean())
    return F.cross_entropy(logits, query_labels), acc
