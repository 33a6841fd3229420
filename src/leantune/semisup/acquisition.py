"""Acquisition functions of pool-based active learning (Settles 2009, "Active Learning
Literature Survey"): higher score = more informative. Each takes [N, C] class probabilities."""
from __future__ import annotations

import random

import torch


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """−Σ p log p (0 log 0 = 0)."""
    p = probs.float()
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def margin(probs: torch.Tensor) -> torch.Tensor:
    """Negative gap between the two most probable classes (small gap = informative)."""
    top = probs.float().topk(min(2, probs.shape[-1]), dim=-1).values
    gap = top[:, 0] - top[:, 1] if top.shape[-1] > 1 else top[:, 0]
    return -gap


def least_confidence(probs: torch.Tensor) -> torch.Tensor:
    """1 − max_c p_c."""
    return 1.0 - probs.float().max(-1).values


STRATEGIES = {"entropy": entropy, "margin": margin, "least_confidence": least_confidence}


def query(probs: torch.Tensor, n: int, strategy: str, seed: int = 0) -> list[int]:
    """Indices of the ``n`` rows to label next: highest score first (ties by index), or a seeded
    random sample for ``random``."""
    n = min(n, len(probs))
    if strategy == "random":
        return random.Random(seed).sample(range(len(probs)), n)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown acquisition strategy {strategy!r}; one of random, {', '.join(STRATEGIES)}")
    scores = STRATEGIES[strategy](probs).tolist()
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:n]
