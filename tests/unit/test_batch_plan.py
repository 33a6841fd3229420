"""The training batch plan (training/engine.py ``batch_plan``): every example once per epoch, a pure
function of (seed, epoch), less padding than random batches with length grouping, and grouped
batches that stay mixed in labels and change from epoch to epoch."""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest

from leantune.training.engine import batch_plan


def padding_fraction(plan: list[list[int]], lengths: list[int]) -> float:
    real = sum(lengths[i] for b in plan for i in b)
    return 1 - real / sum(max(lengths[i] for i in b) * len(b) for b in plan)


def epochs(lengths: list[int], group: bool, n_epochs: int = 20, batch_size: int = 8) -> list[list[list[int]]]:
    return [batch_plan(lengths, batch_size, seed=0, epoch=e, group_by_length=group) for e in range(n_epochs)]


def length_decides_label(n: int, n_labels: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Distinct lengths in random order; the label is the length's rank bucket (shortest n/n_labels: label 0, …)."""
    lengths = (np.random.default_rng(seed).permutation(n) + 10).tolist()
    return lengths, [(length - 10) * n_labels // n for length in lengths]


@pytest.mark.parametrize("n,batch_size", [(1, 4), (5, 8), (32, 8), (63, 8), (64, 8), (129, 8), (1000, 16), (5000, 8)])
@pytest.mark.parametrize("group", [False, True])
def test_every_index_exactly_once_per_epoch(n, batch_size, group):
    lengths = [(i * 37) % 101 + 1 for i in range(n)]
    for epoch in range(3):
        plan = batch_plan(lengths, batch_size, seed=1, epoch=epoch, group_by_length=group)
        assert sorted(i for b in plan for i in b) == list(range(n))
        assert len(plan) == math.ceil(n / batch_size)
        assert sum(len(b) < batch_size for b in plan) <= 1  # only one batch of an epoch may be short


@pytest.mark.parametrize("n", [40, 64, 1000])
@pytest.mark.parametrize("group", [False, True])
def test_determined_by_seed_and_epoch(n, group):
    lengths = np.random.default_rng(5).integers(1, 300, n).tolist()
    snapshot = list(lengths)
    first = batch_plan(lengths, 8, seed=7, epoch=3, group_by_length=group)
    np.random.seed(123)  # the global random state plays no part
    assert batch_plan(lengths, 8, seed=7, epoch=3, group_by_length=group) == first
    assert lengths == snapshot
    assert batch_plan(lengths, 8, seed=7, epoch=4, group_by_length=group) != first
    assert batch_plan(lengths, 8, seed=8, epoch=3, group_by_length=group) != first


def test_grouping_cuts_padding_on_skewed_lengths():
    # log-normal lengths (median 90, a long tail), as in chat and news data; random batches pad ~56% here
    lengths = (np.exp(np.random.default_rng(0).normal(4.5, 0.7, 2000)).round() + 1).astype(int).tolist()
    plain = np.mean([padding_fraction(p, lengths) for p in epochs(lengths, False, 5)])
    grouped = np.mean([padding_fraction(p, lengths) for p in epochs(lengths, True, 5)])
    assert plain > 0.4
    assert grouped < 0.7 * plain


def test_grouped_batches_stay_mixed_where_length_decides_the_label():
    # 64 examples, 8 labels: sorting the whole set (the plan before issue #19) makes every batch one label
    lengths, labels = length_decides_label(64, 8)
    whole_sort = sorted(range(64), key=lambda i: lengths[i])
    assert all(len({labels[i] for i in whole_sort[s: s + 8]}) == 1 for s in range(0, 64, 8))

    def distinct(group: bool) -> list[int]:
        return [len({labels[i] for i in b}) for plan in epochs(lengths, group) for b in plan]

    grouped, plain = distinct(True), distinct(False)
    assert min(grouped) >= 2  # no single-label batch in 20 epochs
    assert np.mean(grouped) >= 0.6 * np.mean(plain)


def test_grouped_batches_change_from_epoch_to_epoch():
    lengths, _ = length_decides_label(64, 8)

    def repeated_pairs(group: bool) -> float:
        """Mean share of the pairs batched together in one epoch that are batched together in the next."""
        pairs = [{frozenset(p) for b in plan for p in combinations(b, 2)} for plan in epochs(lengths, group)]
        return float(np.mean([len(a & b) / len(b) for a, b in zip(pairs, pairs[1:])]))

    assert repeated_pairs(True) < 2 * repeated_pairs(False)


def test_large_sets_keep_label_mixing_bounded():
    # 400 examples, 8 labels decided by length: windows of 4 batches, not the whole set, are sorted
    lengths, labels = length_decides_label(400, 8)
    sizes = [len({labels[i] for i in b}) for plan in epochs(lengths, True) for b in plan]
    assert np.mean([s == 1 for s in sizes]) < 0.05
    assert np.mean(sizes) > 2
