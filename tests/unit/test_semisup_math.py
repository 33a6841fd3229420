"""The few-labels building blocks against hand-computed values (leantune.semisup)."""
from __future__ import annotations

import math
import random

import pytest
import torch

from leantune.semisup import acquisition
from leantune.semisup.contrastive import info_nce, knn_accuracy, mean_pool, recall_at_1, supcon_loss
from leantune.semisup.episodes import sample_episode
from leantune.semisup.protonet import proto_logits, prototypes
from leantune.semisup.pseudo_label import pseudo_label_precision, select_by_threshold, select_top_k_per_class
from leantune.training.adversarial import fgm_perturbation, per_example_normalize, project

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_info_nce_hand_computed():
    # unit vectors: q0·k0 = 1, q0·k1 = 0, q1·k0 = 0.6, q1·k1 = 0.8
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tau = 0.5
    l0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0 / tau)))
    l1 = -math.log(math.exp(0.8 / tau) / (math.exp(0.6 / tau) + math.exp(0.8 / tau)))
    assert info_nce(q, k, tau).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    assert info_nce(3 * q, 2 * k, tau).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)  # cosine


def test_supcon_hand_computed():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    # anchors 0 and 1: one positive (sim 1), one negative (sim 0); anchor 2 has no positive
    expected = -math.log(math.e / (math.e + 1.0))
    assert supcon_loss(z, y, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)
    assert supcon_loss(z, torch.tensor([0, 1, 2])).item() == 0.0


def test_mean_pool_recall_and_knn():
    h = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    assert mean_pool(h, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 2.0]]
    a = torch.eye(3)
    assert recall_at_1(a, a) == 1.0 and recall_at_1(a, a[[1, 0, 2]]) == pytest.approx(1 / 3)
    memory = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    assert knn_accuracy(torch.tensor([[1.0, 0.05], [0.1, 1.0]]), ["a", "b"], memory, ["a", "a", "b"]) == 1.0
    assert knn_accuracy(torch.tensor([[0.2, 1.0]]), ["b"], memory, ["a", "a", "b"], k=3) == 0.0  # 2 votes for a


def test_fgm_perturbation_norm_is_epsilon():
    g = torch.randn(4, 7, 5)
    r = fgm_perturbation(g, epsilon=0.3)
    assert torch.allclose(r.flatten(1).norm(dim=1), torch.full((4,), 0.3), atol=1e-6)
    assert torch.allclose(per_example_normalize(g) * g.flatten(1).norm(dim=1).view(-1, 1, 1), g, atol=1e-5)
    big = torch.ones(2, 3) * torch.tensor([[10.0], [0.01]])
    p = project(big, 1.0)
    assert p[0].norm().item() == pytest.approx(1.0, rel=1e-5) and torch.equal(p[1], big[1])


def test_pseudo_label_threshold_and_per_class():
    probs = torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.2, 0.8], [0.99, 0.01], [0.1, 0.9]])
    assert select_by_threshold(probs, 0.9) == [(3, 0, pytest.approx(0.99)), (0, 0, pytest.approx(0.95)),
                                               (4, 1, pytest.approx(0.9))]
    per = select_top_k_per_class(probs, 1)
    assert [(i, c) for i, c, _ in per] == [(3, 0), (4, 1)]
    assert [(i, c) for i, c, _ in select_top_k_per_class(probs, 2, threshold=0.85)] == [(3, 0), (0, 0), (4, 1)]
    chosen = [(3, 0, 0.99), (0, 0, 0.95), (4, 1, 0.9)]
    assert pseudo_label_precision(chosen, [0, None, None, 1, 1]) == pytest.approx(2 / 3)  # row 3 is wrong
    assert pseudo_label_precision(chosen, [None] * 5) is None


def test_acquisition_functions_on_hand_made_probabilities():
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1]])
    ent = acquisition.entropy(probs)
    assert ent.tolist() == pytest.approx([0.0, math.log(2), math.log(3),
                                          -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1))])
    assert acquisition.margin(probs).tolist() == pytest.approx([-1.0, 0.0, 0.0, -0.3])
    assert acquisition.least_confidence(probs).tolist() == pytest.approx([0.0, 0.5, 2 / 3, 0.4])
    assert acquisition.query(probs, 2, "entropy") == [2, 3]  # H(.6,.3,.1) = 0.90 > log 2
    assert acquisition.query(probs, 2, "margin") == [1, 2]  # ties by index
    assert acquisition.query(probs, 2, "least_confidence") == [2, 1]
    r = acquisition.query(probs, 3, "random", seed=1)
    assert len(set(r)) == 3 and r == acquisition.query(probs, 3, "random", seed=1)
    with pytest.raises(ValueError):
        acquisition.query(probs, 1, "bald")


def test_episode_sampler_counts_and_disjoint():
    labels = [c for c in "abcdef" for _ in range(9)]
    rng = random.Random(0)
    for _ in range(20):
        ep = sample_episode(labels, n_way=4, k_shot=3, n_query=5, rng=rng)
        assert len(set(ep.classes)) == 4 and len(ep.support) == 12 and len(ep.query) == 20
        assert not set(ep.support) & set(ep.query)
        for c, name in enumerate(ep.classes):
            assert ep.support_labels.count(c) == 3 and ep.query_labels.count(c) == 5
            assert all(labels[i] == name for i, lab in zip(ep.support + ep.query, ep.support_labels + ep.query_labels)
                       if lab == c)
    with pytest.raises(ValueError, match="classes"):
        sample_episode(labels, n_way=7, k_shot=1, n_query=1, rng=rng)


def test_prototypes_and_logits():
    s = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    protos = prototypes(s, torch.tensor([0, 0, 1]), 2)
    assert protos.tolist() == [[1.0, 0.0], [0.0, 4.0]]
    assert proto_logits(torch.tensor([[1.0, 1.0]]), protos).tolist()[0] == pytest.approx([-1.0, -10.0])


def test_protonet_step_on_tiny_model(tiny_model_dir, tiny_tokenizer):
    from leantune.data.collate import pad_batch
    from leantune.models.loading import load_model
    from leantune.semisup.contrastive import encode
    from leantune.semisup.protonet import proto_loss

    model = load_model(tiny_model_dir("bert", "seq_cls"), "encoder", "float32")
    model.train()
    texts = ["aaaa", "aaa", "aaaaa", "zzzz", "zzz", "zzzzz"]
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    batch = pad_batch([{"input_ids": tiny_tokenizer(t)["input_ids"]} for t in texts], tiny_tokenizer.pad_token_id)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sup, qry = [0, 1, 3, 4], [2, 5]

    def step():
        z = encode(model, batch)
        return proto_loss(z[sup], labels[sup], z[qry], labels[qry], 2)

    torch.manual_seed(0)
    first, _ = step()
    first.backward()
    assert model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    opt.step()
    for _ in range(5):
        opt.zero_grad()
        loss, acc = step()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss) and loss.item() <= first.item() and acc == 1.0
