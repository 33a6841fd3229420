"""Demonstration selection and order, the pluggable embedder, and ensembles."""
from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from leantune.prompting.demonstrations import (
    MeanPoolEmbedder,
    cosine,
    get_embedder,
    order,
    render_demonstrations,
    select,
)
from leantune.prompting.ensemble import augment, average, combine, vote
from leantune.recipe.template import Template

pytestmark = pytest.mark.usefixtures("torch_single_thread")

POOL = [{"text": f"t{i}", "label": lab} for i, lab in enumerate("aaaaabbbcccccccc")]


@pytest.mark.parametrize("k, expected", [(6, {"a": 2, "b": 2, "c": 2}), (9, {"a": 3, "b": 3, "c": 3})])
def test_balanced_counts(k, expected):
    for seed in range(5):
        chosen = select(POOL, k, "balanced", random.Random(seed))
        assert len(set(chosen)) == k
        assert Counter(POOL[i]["label"] for i in chosen) == expected


def test_balanced_when_a_class_runs_out():
    for seed in range(5):  # b has only 3: the other two share the rest as evenly as possible
        counts = Counter(POOL[i]["label"] for i in select(POOL, 12, "balanced", random.Random(seed)))
        assert counts["b"] == 3 and sorted((counts["a"], counts["c"])) == [4, 5]


def test_balanced_uneven_k_differs_by_at_most_one():
    counts = Counter(POOL[i]["label"] for i in select(POOL, 7, "balanced", random.Random(0)))
    assert sorted(counts.values()) == [2, 2, 3]


def test_random_is_seeded_and_bounded():
    a = select(POOL, 5, "random", random.Random(1))
    assert a == select(POOL, 5, "random", random.Random(1)) and len(set(a)) == 5
    assert len(select(POOL, 100, "random", random.Random(1))) == len(POOL)
    assert select(POOL, 0, "random", random.Random(1)) == []


class FakeEmbedder:
    """Texts 'v:x,y' embed as the vector (x, y)."""

    def __call__(self, texts):
        return torch.tensor([[float(v) for v in t.split(":")[1].split(",")] for t in texts])


def test_similar_returns_true_nearest_under_fake_embedder():
    # angles: query 16.7°; pool 0°, 90°, 45°, 180°, 18.4° → nearest: 4, then 0, then 2
    pool = [{"text": "v:1,0"}, {"text": "v:0,1"}, {"text": "v:1,1"}, {"text": "v:-1,0"}, {"text": "v:3,1"}]
    embed = get_embedder(FakeEmbedder())
    sims = cosine(embed(["v:1,0.3"]), embed([p["text"] for p in pool]))[0]
    assert select(pool, 1, "similar", random.Random(0), sims) == [4]
    assert select(pool, 3, "similar", random.Random(0), sims) == [4, 0, 2]
    assert order([1, 2, 3, 0, 4], "similar_last", random.Random(0), sims) == [3, 1, 2, 0, 4]


def test_order_random_is_a_permutation():
    out = order([1, 2, 3, 4], "random", random.Random(0))
    assert sorted(out) == [1, 2, 3, 4]


def test_mean_pool_embedder_on_tiny_bert(tiny_model_dir):
    embed = MeanPoolEmbedder(str(tiny_model_dir("bert", "masked_lm")), max_length=16, batch_size=2)
    vecs = embed(["hello", "hello", "something else entirely"])
    assert vecs.shape == (3, 32)
    assert torch.allclose(vecs.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(vecs[0], vecs[1], atol=1e-5)


def test_render_demonstrations_and_augment():
    t = Template("{text} => {mask}")
    demos = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    words = {"pos": "great", "neg": "awful"}
    assert render_demonstrations(t, demos, lambda d: words[d["label"]], sep="\n") == "good => great\nbad => awful\n"
    assert augment(t, {"text": "fine"}, demos, lambda d: words[d["label"]], sep="\n") == \
        "good => great\nbad => awful\nfine => [MASK]"


def test_ensemble_average_vs_vote():
    # three templates, two examples, two labels
    p1 = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
    p2 = torch.tensor([[0.4, 0.6], [0.4, 0.6]])
    p3 = torch.tensor([[0.45, 0.55], [0.45, 0.55]])
    avg = average([p1, p2, p3])
    assert avg[0].tolist() == pytest.approx([(0.9 + 0.4 + 0.45) / 3, (0.1 + 0.6 + 0.55) / 3])
    assert avg.argmax(-1).tolist() == [0, 1]  # one confident template carries example 0
    v = vote([p1, p2, p3])
    assert v.argmax(-1).tolist() == [1, 1]  # two of three templates say label 1
    assert v[0].tolist() == pytest.approx([1 / 3, 2 / 3], abs=1e-5)
    # a tie in votes goes to the higher mean probability
    tie = vote([torch.tensor([[0.9, 0.1]]), torch.tensor([[0.4, 0.6]])])
    assert tie.argmax(-1).item() == 0
    assert torch.equal(combine([p1, p2, p3], "vote"), v)
    assert average([p1, p2], weights=[3, 1])[0, 0].item() == pytest.approx((3 * 0.9 + 0.4) / 4)
    with pytest.raises(ValueError):
        combine([p1], "max")
