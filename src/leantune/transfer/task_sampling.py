"""Temperature-based task sampling for multi-task training (Arivazhagan et al. 2019,
arXiv:1907.05019; mT5/T5): task i is drawn with probability p_i ∝ n_i^{1/T}.

T = 1: proportional to the data sizes; T → ∞: uniform over tasks (small tasks up-sampled)."""
from __future__ import annotations

import random
from typing import Any


def task_probabilities(sizes: list[int], temperature: float) -> list[float]:
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if not sizes or any(n <= 0 for n in sizes):
        raise ValueError("every task needs at least one example")
    weights = [n ** (1.0 / temperature) for n in sizes]
    total = sum(weights)
    return [w / total for w in weights]


def task_counts(sizes: list[int], temperature: float, total: int) -> list[int]:
    """Examples per task in a mixture of ``total``, by largest remainder (sums to ``total``)."""
    probs = task_probabilities(sizes, temperature)
    raw = [p * total for p in probs]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: total - sum(counts)]:
        counts[i] += 1
    return counts


def sample_mixture(tasks: list[list[Any]], temperature: float, total: int | None = None,
                   seed: int = 0) -> list[Any]:
    """A shuffled training mixture of ``total`` examples (default: all examples of all tasks)
    in which task i makes up p_i ∝ n_i^{1/T}. A task's examples are each used once per pass
    before any is repeated (up-sampling cycles through a shuffled copy; down-sampling takes a
    random subset)."""
    rng = random.Random(seed)
    sizes = [len(t) for t in tasks]
    total = sum(sizes) if total is None else total
    out: list[Any] = []
    for items, k in zip(tasks, task_counts(sizes, temperature, total)):
        while k > 0:
            order = list(items)
            rng.shuffle(order)
            out += order[:k]
            k -= len(order)
    rng.shuffle(out)
    return out
