"""The transfer building blocks against hand computations: gradient reversal, the Fisher
estimate, EWC, the replay buffer, distillation losses, task sampling, forgetting."""
from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leantune.stages.continual import forgetting_metrics
from leantune.transfer.distillation import (kd_classification_loss, load_lm_cache, save_lm_cache,
                                            topk_token_kl)
from leantune.transfer.fisher import EWC, diagonal_fisher
from leantune.transfer.grl import DomainClassifier, GradientReversal, dann_lambda, reverse_gradient
from leantune.transfer.replay import ReservoirBuffer, mix_with_replay, replay_count
from leantune.transfer.task_sampling import sample_mixture, task_counts, task_probabilities

pytestmark = pytest.mark.usefixtures("torch_single_thread")


# --------------------------------------------------------------------------- gradient reversal

@pytest.mark.parametrize("lambd", [1.0, 0.3, 2.5])
def test_gradient_reversal_flips_and_scales(lambd):
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    y = GradientReversal(lambd)(x)
    assert torch.equal(y, x)  # identity forward
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -lambd * w)


def test_reversal_reaches_features_but_not_classifier():
    feats = torch.randn(5, 8, requires_grad=True)
    clf = DomainClassifier(8, hidden=4).eval()  # no dropout: both passes see the same network
    clf.grl.lambd = 0.5
    loss = F.binary_cross_entropy_with_logits(clf(feats), torch.ones(5))
    loss.backward()
    plain = feats.detach().clone().requires_grad_(True)
    F.binary_cross_entropy_with_logits(clf.net(plain).squeeze(-1), torch.ones(5)).backward()
    torch.testing.assert_close(feats.grad, -0.5 * plain.grad)
    assert reverse_gradient(torch.ones(1), 0.0).requires_grad is False


def test_dann_lambda_schedule():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_lambda(0.5, gamma=10) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert all(dann_lambda(a / 10) < dann_lambda((a + 1) / 10) for a in range(10))


# --------------------------------------------------------------------------- Fisher / EWC

def test_fisher_matches_per_example_squared_gradients():
    """Softmax regression: ∂CE/∂W = (p − y) xᵀ, ∂CE/∂b = p − y, per example, in closed form."""
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    xs, ys = torch.randn(7, 5), torch.randint(0, 3, (7,))
    examples = [{"x": xs[i: i + 1], "y": ys[i: i + 1]} for i in range(7)]
    fisher = diagonal_fisher(model, examples, lambda m, b: F.cross_entropy(m(b["x"]), b["y"]))
    with torch.no_grad():
        err = F.softmax(model(xs), -1) - F.one_hot(ys, 3).float()  # [N, C]
        gw = err[:, :, None] * xs[:, None, :]  # [N, C, D]
    torch.testing.assert_close(fisher["weight"], (gw ** 2).mean(0))
    torch.testing.assert_close(fisher["bias"], (err ** 2).mean(0))
    # not the square of the mean gradient
    assert not torch.allclose(fisher["weight"], gw.mean(0) ** 2)


def test_fisher_on_tiny_bert_matches_direct_loop(tiny_model_dir):
    from leantune.models.loading import load_model

    model = load_model(tiny_model_dir("bert", "seq_cls"), "seq_cls")
    ids = [[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]
    examples = [{"input_ids": torch.tensor([i]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
                 "labels": torch.tensor([k % 3])} for k, i in enumerate(ids)]
    nll = lambda m, b: m(**b).loss  # noqa: E731
    fisher = diagonal_fisher(model, examples, nll)
    model.eval()
    direct = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for b in examples:
        model.zero_grad()
        nll(model, b).backward()
        for n, p in model.named_parameters():
            direct[n] += p.grad ** 2 / len(examples)
    for n in direct:
        torch.testing.assert_close(fisher[n], direct[n])
    assert fisher["classifier.weight"].abs().sum() > 0


def test_ewc_penalty():
    model = nn.Linear(2, 1)
    ewc = EWC(lam=4.0)
    fisher = {"weight": torch.tensor([[1.0, 2.0]]), "bias": torch.tensor([3.0])}
    ewc.consolidate(model, fisher)
    assert ewc.penalty(model).item() == 0.0
    with torch.no_grad():
        model.weight += torch.tensor([[1.0, -1.0]])
        model.bias += 2.0
    # λ/2 · (1·1² + 2·1² + 3·2²) = 2 · 15
    assert ewc.penalty(model).item() == pytest.approx(30.0)
    ewc.consolidate(model, fisher)  # a second task anchored here adds its own term (0 now)
    assert ewc.penalty(model).item() == pytest.approx(30.0)


# --------------------------------------------------------------------------- replay

def test_reservoir_keeps_a_uniform_sample():
    n, k, trials = 20, 5, 4000
    counts = Counter()
    for seed in range(trials):
        buf = ReservoirBuffer(k, seed=seed)
        buf.extend(range(n))
        assert len(buf) == k and len(set(buf.items)) == k
        counts.update(buf.items)
    for item in range(n):  # P(kept) = k / n = 0.25 for every item, early or late
        assert counts[item] / trials == pytest.approx(k / n, abs=0.03)


def test_replay_mixing_ratio():
    assert replay_count(80, 0.2) == 20
    assert replay_count(10, 0.0) == 0
    buf = ReservoirBuffer(50, seed=1)
    buf.extend([("old", i) for i in range(200)])
    mixed = mix_with_replay([("new", i) for i in range(300)], buf, 0.25, seed=0)
    share = sum(kind == "old" for kind, _ in mixed) / len(mixed)
    assert share == pytest.approx(0.25, abs=0.005) and len(mixed) == 400
    assert mix_with_replay([1, 2], ReservoirBuffer(3), 0.5, 0) in ([1, 2], [2, 1])  # empty buffer: nothing added
    draws = Counter(buf.sample(20000, random.Random(0)))  # sampling from the buffer is uniform
    assert max(draws.values()) / min(draws.values()) < 1.5


# --------------------------------------------------------------------------- distillation

def test_kd_classification_against_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[2.0, 0.0, 1.0]])
    T, alpha, y = 2.0, 0.7, 1

    def softmax(z):
        e = [math.exp(v / T) for v in z]
        return [v / sum(e) for v in e]
    ps, pt = softmax(s[0].tolist()), softmax(t[0].tolist())
    kl = sum(a * math.log(a / b) for a, b in zip(pt, ps))
    ce = -math.log(math.exp(2.0) / sum(math.exp(v) for v in s[0].tolist()))
    expected = alpha * T * T * kl + (1 - alpha) * ce
    got = kd_classification_loss(s, t, torch.tensor([y]), T, alpha)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert kd_classification_loss(s, t, None, T, 1.0).item() == pytest.approx(T * T * kl, rel=1e-5)
    assert kd_classification_loss(t, t, torch.tensor([0]), T, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_token_kl_full_support_equals_exact_kl():
    torch.manual_seed(0)
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    T = 1.5
    vals, idx = t.topk(6, dim=-1)  # k = V: the top-k distribution is the full one
    ls, lt = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    forward = (lt.exp() * (lt - ls)).sum(-1).mean() * T * T
    reverse = (ls.exp() * (ls - lt)).sum(-1).mean() * T * T
    assert topk_token_kl(s, idx, vals, T, "forward").item() == pytest.approx(forward.item(), rel=1e-5)
    assert topk_token_kl(s, idx, vals, T, "reverse").item() == pytest.approx(reverse.item(), rel=1e-5)


def test_token_kl_topk_by_hand():
    s = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    idx, val = torch.tensor([[3, 1]]), torch.tensor([[2.0, 1.0]])
    pt = [math.exp(2) / (math.exp(2) + math.e), math.e / (math.exp(2) + math.e)]
    z = sum(math.exp(v) for v in (0, 1, 2, 3))
    ps = [math.exp(3) / z, math.exp(1) / z]  # full-vocabulary student probabilities at the k tokens
    expected = sum(a * math.log(a / b) for a, b in zip(pt, ps))
    assert topk_token_kl(s, idx, val, 1.0, "forward").item() == pytest.approx(expected, rel=1e-5)
    qs = [math.exp(3) / (math.exp(3) + math.e), math.e / (math.exp(3) + math.e)]  # renormalised on top-k
    rev = sum(a * math.log(a / b) for a, b in zip(qs, pt))
    assert topk_token_kl(s, idx, val, 1.0, "reverse").item() == pytest.approx(rev, rel=1e-5)


def test_lm_cache_roundtrip(tmp_path):
    items = [(torch.randint(0, 50, (3, 4), dtype=torch.int32), torch.randn(3, 4).half()),
             (torch.randint(0, 50, (0, 4), dtype=torch.int32), torch.randn(0, 4).half()),
             (torch.randint(0, 50, (2, 4), dtype=torch.int32), torch.randn(2, 4).half())]
    save_lm_cache(tmp_path / "c.safetensors", items)
    back = load_lm_cache(tmp_path / "c.safetensors")
    assert len(back) == 3
    for (a, b), (c, d) in zip(items, back):
        assert torch.equal(a, c) and torch.equal(b, d)


# --------------------------------------------------------------------------- task sampling

def test_task_probabilities_temperature():
    assert task_probabilities([300, 100], 1.0) == pytest.approx([0.75, 0.25])
    assert task_probabilities([400, 100], 2.0) == pytest.approx([2 / 3, 1 / 3])  # √400 : √100
    assert task_probabilities([10_000, 1], 1e9) == pytest.approx([0.5, 0.5], abs=1e-6)
    with pytest.raises(ValueError):
        task_probabilities([1, 0], 1.0)


def test_sample_mixture_proportions():
    tasks = [[("a", i) for i in range(90)], [("b", i) for i in range(10)]]
    assert task_counts([90, 10], 2.0, 100) == [75, 25]  # 3 : 1
    mix = sample_mixture(tasks, 2.0, seed=0)
    c = Counter(t for t, _ in mix)
    assert c == {"a": 75, "b": 25}
    assert len({i for t, i in mix if t == "b"}) == 10  # up-sampling cycles through every example
    assert len({i for t, i in mix if t == "a"}) == 75  # down-sampling takes distinct examples


# --------------------------------------------------------------------------- continual metrics

def test_forgetting_chaudhry():
    R = [[0.9, 0.1, 0.2],
         [0.6, 0.8, 0.3],
         [0.5, 0.7, 0.9]]
    m = forgetting_metrics(R)
    assert m["average_accuracy"] == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert m["per_task_forgetting"] == pytest.approx([0.4, 0.1])  # max over earlier rows − last row
    assert m["forgetting"] == pytest.approx(0.25)
    assert m["backward_transfer"] == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
