"""Diversity selection: keep the k most spread-out examples, label balance kept.

k-center greedy (Gonzalez 1985, "Clustering to minimize the maximum intercluster distance"; used
as the core-set selection of Sener & Savarese 2018, arXiv:1708.00489): start from one point, then
add the point farthest from everything chosen so far. The largest distance from a point to its
nearest chosen centre is at most twice the best any k points can achieve.

With labels, each label gets its proportional share of k (Hamilton's largest remainders) and is
selected on its own, so a classification set keeps its label balance.
"""
from __future__ import annotations

import numpy as np


def k_center_greedy(points, k: int, first: int | None = None) -> list[int]:
    """Indices of ``k`` centres in the order chosen; the first is ``first`` or the point nearest the mean."""
    pts = np.asarray(points, dtype=float)
    if k >= len(pts):
        return list(range(len(pts)))
    if k <= 0:
        return []
    if first is None:
        first = int(np.argmin(((pts - pts.mean(0)) ** 2).sum(1)))
    chosen = [first]
    dist = np.linalg.norm(pts - pts[first], axis=1)
    dist[first] = -1.0
    while len(chosen) < k:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(pts - pts[nxt], axis=1))
        dist[chosen] = -1.0  # never again, even among identical points
    return chosen


def proportional_quota(sizes: dict, k: int) -> dict:
    """Hamilton's largest-remainder split of ``k`` among groups of these sizes (ties: larger group, then name)."""
    total = sum(sizes.values())
    exact = {g: k * n / total for g, n in sizes.items()}
    quota = {g: int(x) for g, x in exact.items()}
    order = sorted(sizes, key=lambda g: (-(exact[g] - quota[g]), -sizes[g], str(g)))
    for g in order[:k - sum(quota.values())]:
        quota[g] += 1
    return quota


def select_diverse(vectors, labels: list, k: int) -> dict[int, tuple[int | None, float]]:
    """For every point not among the ``k`` selected: (the nearest selected point of its label and
    its distance), or (None, nan) where its label's share of ``k`` is 0."""
    vectors = np.asarray(vectors, dtype=float)
    groups: dict = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    quota = proportional_quota({g: len(m) for g, m in groups.items()}, k)
    rest: dict[int, tuple[int | None, float]] = {}
    for label, members in groups.items():
        chosen = [members[j] for j in k_center_greedy(vectors[members], quota[label])]
        for i in sorted(set(members) - set(chosen)):
            if not chosen:
                rest[i] = (None, float("nan"))
                continue
            dist = np.linalg.norm(vectors[chosen] - vectors[i], axis=1)
            rest[i] = (chosen[int(np.argmin(dist))], float(dist.min()))
    return rest
