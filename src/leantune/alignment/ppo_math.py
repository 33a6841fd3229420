"""The arithmetic of PPO on token sequences, with masks for the live response tokens (no models):
KL-penalised per-token rewards, generalised advantage estimation (Schulman et al. 2016,
arXiv:1506.02438), the clipped policy and value losses (Schulman et al. 2017, arXiv:1707.06347)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x − mean) / std over the masked entries (the mean kept when ``shift_mean`` is False)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def kl_penalty_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor,
                       mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards −β·KL_t with the score added at each sequence's last token; also KL_t.

    KL_t = log π(a_t) − log π_ref(a_t), the k1 estimator (unbiased; its mean over samples is
    KL(π‖π_ref)).
    """
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages A_t = Σ_k (γλ)^k δ_{t+k} with δ_t = r_t + γ V_{t+1} − V_t, and returns A_t + V_t.

    Positions outside ``mask`` (after the end of a response) have no value: V = 0 there.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        next_live = mask[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * next_live * running
        adv[:, t] = running
    adv = adv * mask
    return adv, (adv + values) * mask


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) averaged over live tokens; also the clipped fraction."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    clip_frac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_frac


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """½·max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²) over live tokens; also the clipped fraction."""
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    l1, l2 = (values - returns) ** 2, (v_clipped - returns) ** 2
    return 0.5 * masked_mean(torch.max(l1, l2), mask), masked_mean((l2 > l1).float(), mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1)
