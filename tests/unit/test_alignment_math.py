"""PPO and reward-model math against hand-computed values (no models)."""
from __future__ import annotations

import math

import pytest
import torch

from leantune.alignment.policy import response_mask
from leantune.alignment.ppo_math import (
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_penalty_rewards,
    masked_mean,
    whiten,
)
from leantune.alignment.reward_model import bradley_terry_loss

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_gae_matches_hand_computation():
    # one sequence of 3 live tokens, then padding
    rewards = torch.tensor([[0.0, 0.5, 1.0, 9.0]])
    values = torch.tensor([[0.2, 0.4, 0.6, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.8
    d2 = 1.0 + gamma * 0.0 - 0.6            # last live token: no next value
    d1 = 0.5 + gamma * 0.6 - 0.4
    d0 = 0.0 + gamma * 0.4 - 0.2
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    adv, ret = gae(rewards, values, mask, gamma, lam)
    assert adv[0].tolist() == pytest.approx([a0, a1, a2, 0.0])
    assert ret[0].tolist() == pytest.approx([a0 + 0.2, a1 + 0.4, a2 + 0.6, 0.0])


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, 1.0, 1.0)
    assert torch.allclose(ret, torch.tensor([[6.0, 5.0, 3.0], [9.0, 5.0, 0.0]]))
    assert torch.allclose(adv, torch.tensor([[5.5, 4.5, 2.5], [8.0, 4.0, 0.0]]))


def test_clipped_policy_loss_hand_values():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))     # ratios 1.5, 0.5, 1.1 against old log-prob 0
    old = torch.zeros(1, 3)
    adv = torch.tensor([[2.0, -1.0, 3.0]])
    mask = torch.ones(1, 3)
    # token 0: A>0, ratio 1.5 -> clipped to 1.2: max(-3.0, -2.4) = -2.4 (clipped)
    # token 1: A<0, ratio 0.5 -> clipped to 0.8: max(0.5, 0.8) = 0.8 (clipped)
    # token 2: ratio 1.1 inside the range: -3.3
    loss, frac = clipped_policy_loss(logp, old, adv, mask, 0.2)
    assert loss.item() == pytest.approx((-2.4 + 0.8 - 3.3) / 3)
    assert frac.item() == pytest.approx(2 / 3)
    # masked tokens do not count
    loss_m, _ = clipped_policy_loss(logp, old, adv, torch.tensor([[1.0, 0.0, 1.0]]), 0.2)
    assert loss_m.item() == pytest.approx((-2.4 - 3.3) / 2)


def test_clipped_value_loss_hand_values():
    v = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.5, 0.1]])
    ret = torch.tensor([[2.0, 0.0]])
    # token 0: v_clip = 0.5 + clip(0.5, ±0.2) = 0.7: max((1-2)^2=1, (0.7-2)^2=1.69) = 1.69
    # token 1: v_clip = 0.1 + clip(-0.1) = 0.0: both 0
    loss, frac = clipped_value_loss(v, old, ret, torch.ones(1, 2), 0.2)
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.0) / 2)
    assert frac.item() == pytest.approx(0.5)


def test_kl_penalty_rewards_and_score_at_last_token():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = kl_penalty_rewards(logp, ref, torch.tensor([10.0, 20.0]), mask, kl_coef=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, -1.0], [0.0, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.0, 10.1], [0.0, 20.0, 0.0]]))
    # policy == reference: no penalty at all
    rewards, kl = kl_penalty_rewards(logp, logp.clone(), torch.zeros(2), mask, kl_coef=1.0)
    assert kl.abs().sum().item() == 0.0 and rewards.abs().sum().item() == 0.0


def test_response_mask_stops_after_first_eos():
    resp = torch.tensor([[5, 6, 2, 7, 2], [5, 5, 5, 5, 5]])
    assert response_mask(resp, 2).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_whiten_zero_mean_unit_variance_on_live_entries():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = whiten(x, mask)
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_mean(w ** 2, mask).item() == pytest.approx(1.0, abs=1e-4)
    assert w[0, 3].item() == 0.0


def test_bradley_terry_loss_hand_value():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    expected = (-math.log(1 / (1 + math.exp(-1.0))) - math.log(1 / (1 + math.exp(1.0)))) / 2
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected)
    assert bradley_terry_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2))
