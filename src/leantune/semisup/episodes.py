"""N-way K-shot episodes (Vinyals et al. 2016) for meta-learning."""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Episode:
    classes: list[str]          # the N classes; class i of the episode is classes[i]
    support: list[int]          # example indices, K per class
    support_labels: list[int]   # episode-local class ids
    query: list[int]
    query_labels: list[int]


def index_by_label(labels: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        out.setdefault(str(lab), []).append(i)
    return out


def sample_episode(labels: list[str], n_way: int, k_shot: int, n_query: int, rng: random.Random) -> Episode:
    """N classes with at least K + 1 examples; per class K support and up to ``n_query`` query
    examples, disjoint."""
    by = index_by_label(labels)
    usable = sorted(c for c, idx in by.items() if len(idx) >= k_shot + 1)
    if len(usable) < n_way:
        raise ValueError(f"{n_way}-way {k_shot}-shot episodes need {n_way} classes with ≥ {k_shot + 1} "
                         f"examples; the data has {len(usable)}")
    classes = rng.sample(usable, n_way)
    support, s_lab, query, q_lab = [], [], [], []
    for c, name in enumerate(classes):
        idx = rng.sample(by[name], min(len(by[name]), k_shot + n_query))
        support += idx[:k_shot]
        s_lab += [c] * k_shot
        query += idx[k_shot:]
        q_lab += [c] * len(idx[k_shot:])
    return Episode(classes, support, s_lab, query, q_lab)
