"""PPO for language models, written here (TRL 1.16 no longer has a PPO trainer).

Schulman et al. 2017, Proximal Policy Optimization (arXiv:1707.06347); the RLHF form of
Ziegler et al. 2019 (arXiv:1909.08593) and Ouyang et al. 2022 (arXiv:2203.02155):

* policy = the base model with a LoRA adapter; reference = the same model with the
  adapter disabled (``with model.disable_adapter():``), so there is no second copy;
* value head = one ``nn.Linear`` on the policy's last hidden state, saved beside the adapter;
* per-token reward r_t = −β·(log π(a_t|s_t) − log π_ref(a_t|s_t))  (the k1 KL estimator),
  plus the sequence's score at its last token;
* generalised advantage estimation (Schulman et al. 2016, arXiv:1506.02438) with γ, λ;
* clipped policy loss and clipped value loss, several epochs over each rollout batch, one
  optimizer step per ``grad_accum`` mini-batches (their mean gradient), fp16 with loss scaling.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..training.guard import check_finite
from ..training.losses import unwrap
from ..training.modes import evaluating, set_eval_mode
from .policy import GenerationSettings, generate, response_forward, response_mask, token_logprobs
from .ppo_math import (
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae,
    kl_penalty_rewards,
    masked_mean,
    whiten,
)

VALUE_HEAD_FILE = "value_head.safetensors"


# --------------------------------------------------------------------------- the value head

class ValueHead(nn.Module):
    """V(s) = w·h + b on the last hidden state h; zero-initialised (V = 0 at the start)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)

    def save(self, folder: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(Path(folder) / VALUE_HEAD_FILE))

    @classmethod
    def load(cls, folder: Path) -> "ValueHead":
        state = load_file(str(Path(folder) / VALUE_HEAD_FILE))
        head = cls(state["summary.weight"].shape[1])
        head.load_state_dict(state)
        return head


def hidden_size(model: nn.Module) -> int:
    cfg = unwrap(model).config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return cfg.hidden_size


# --------------------------------------------------------------------------- the trainer

@dataclass
class PPOSettings:
    kl_coef: float = 0.05
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    ppo_epochs: int = 4
    mini_batch_size: int | None = None
    whiten_advantages: bool = True
    max_grad_norm: float | None = 1.0
    grad_accum: int = 1          # mini-batches averaged per optimizer step


@dataclass
class Rollout:
    input_ids: torch.Tensor      # [B, P+T]
    attention_mask: torch.Tensor
    prompt_len: int
    responses: torch.Tensor      # [B, T]
    mask: torch.Tensor           # [B, T] live response tokens
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    rewards: torch.Tensor
    kl: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    entropy: torch.Tensor
    texts: list[str]


class PPO:
    """One policy (PEFT model) + value head; ``step(prompts)`` = rollout + PPO epochs. ``scaler``:
    fp16 loss scaling (none by default); ``ckpt_root``: the run's checkpoints, which the NaN
    guard names."""

    def __init__(self, model: nn.Module, value_head: ValueHead, tokenizer, reward: Callable,
                 optimizer: torch.optim.Optimizer, scheduler=None, settings: PPOSettings | None = None,
                 generation: GenerationSettings | None = None, autocast=None,
                 scaler: torch.amp.GradScaler | None = None, ckpt_root: str | Path = "checkpoints"):
        if not hasattr(model, "disable_adapter"):
            raise ValueError("PPO needs a PEFT model: the reference policy is the model with its adapter disabled")
        self.model, self.value_head, self.tokenizer, self.reward = model, value_head, tokenizer, reward
        self.optimizer, self.scheduler = optimizer, scheduler
        self.s = settings or PPOSettings()
        self.gen = generation or GenerationSettings()
        self.autocast = autocast or nullcontext()
        self.scaler = scaler or torch.amp.GradScaler(enabled=False)
        self.ckpt_root = Path(ckpt_root)
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id

    # ---- forward passes
    def policy_stats(self, input_ids, attention_mask, prompt_len, responses):
        with self.autocast:
            logits, hidden = response_forward(self.model, input_ids, attention_mask, prompt_len,
                                              self.gen.temperature)
        return token_logprobs(logits, responses), self.value_head(hidden.float()), logits

    @torch.no_grad()
    def reference_logprobs(self, input_ids, attention_mask, prompt_len, responses) -> torch.Tensor:
        """log π_ref: the same model with its adapter disabled, without gradients."""
        with self.model.disable_adapter(), self.autocast:
            logits, _ = response_forward(self.model, input_ids, attention_mask, prompt_len, self.gen.temperature)
        return token_logprobs(logits, responses)

    # ---- rollout
    def rollout(self, prompt_ids: list[list[int]], messages: list[list[dict]]) -> Rollout:
        p_ids, p_mask, responses = generate(self.model, prompt_ids, self.pad_id, self.eos_id, self.gen)
        mask = response_mask(responses, self.eos_id)
        input_ids = torch.cat([p_ids, responses], 1)
        attention_mask = torch.cat([p_mask, mask], 1)
        P = p_ids.shape[1]
        texts = [self.tokenizer.decode(r[m.bool()], skip_special_tokens=True) for r, m in zip(responses, mask)]
        scores = self.reward(messages, texts).to(responses.device)
        with evaluating(self.model):
            logprobs, values, logits = self.policy_stats(input_ids, attention_mask, P, responses)
            entropy = masked_mean(entropy_from_logits(logits), mask)
        ref = self.reference_logprobs(input_ids, attention_mask, P, responses)
        return self.finish_rollout(input_ids, attention_mask, P, responses, mask, logprobs, ref, values,
                                   scores, entropy, texts)

    def finish_rollout(self, input_ids, attention_mask, P, responses, mask, logprobs, ref, values, scores,
                       entropy, texts) -> Rollout:
        mask_f = mask.float()
        rewards, kl = kl_penalty_rewards(logprobs, ref, scores.float(), mask_f, self.s.kl_coef)
        adv, returns = gae(rewards, values, mask_f, self.s.gamma, self.s.lam)
        if self.s.whiten_advantages and mask_f.sum() > 1:
            adv = whiten(adv, mask_f)
        return Rollout(input_ids, attention_mask, P, responses, mask_f, logprobs, ref, values * mask_f,
                       scores.float(), rewards, kl, adv, returns, entropy, texts)

    # ---- optimisation
    def update(self, ro: Rollout, step: int = 0) -> dict[str, float]:
        """PPO epochs on one rollout; ``step`` (the iteration) names where a NaN loss stopped the run."""
        B = ro.responses.shape[0]
        mb = self.s.mini_batch_size or B
        stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clip_frac": [], "value_clip_frac": [],
                                         "approx_kl": []}
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        lr = self.optimizer.param_groups[0].get("initial_lr", self.optimizer.param_groups[0]["lr"])
        set_eval_mode(self.model)  # dropout off: the same policy that produced the old log-probs
        self.value_head.train()
        try:
            for _ in range(self.s.ppo_epochs):
                order = torch.randperm(B)
                minibatches = [order[s: s + mb] for s in range(0, B, mb)]
                for g in range(0, len(minibatches), self.s.grad_accum):
                    group = minibatches[g: g + self.s.grad_accum]
                    self.optimizer.zero_grad(set_to_none=True)
                    for idx in group:
                        logprobs, values, _ = self.policy_stats(ro.input_ids[idx], ro.attention_mask[idx],
                                                                ro.prompt_len, ro.responses[idx])
                        m = ro.mask[idx]
                        pg, clip_frac = clipped_policy_loss(logprobs, ro.logprobs[idx], ro.advantages[idx], m,
                                                            self.s.clip_range)
                        vf, vclip = clipped_value_loss(values, ro.values[idx], ro.returns[idx], m,
                                                       self.s.clip_range_value)
                        loss = pg + self.s.vf_coef * vf
                        check_finite(loss.item(), step, self.ckpt_root, lr, "the PPO loss")
                        self.scaler.scale(loss / len(group)).backward()
                        approx_kl = masked_mean(0.5 * (logprobs.detach() - ro.logprobs[idx]) ** 2, m)
                        for key, value in zip(stats, (pg, vf, clip_frac, vclip, approx_kl)):
                            stats[key].append(value.item())
                    if self.s.max_grad_norm:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(params, self.s.max_grad_norm)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    if self.scheduler is not None:
                        self.scheduler.step()
        finally:
            self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        return {k: sum(v) / len(v) for k, v in stats.items()}

    def step(self, prompt_ids: list[list[int]], messages: list[list[dict]],
             iteration: int = 0) -> tuple[dict[str, float], Rollout]:
        ro = self.rollout(prompt_ids, messages)
        stats = self.update(ro, iteration)
        seq_kl = (ro.kl.sum(-1)).mean().item()
        record = {"reward": ro.scores.mean().item(), "reward_std": ro.scores.std().item() if len(ro.scores) > 1 else 0.0,
                  "kl": seq_kl, "entropy": ro.entropy.item(), "response_len": ro.mask.sum(-1).mean().item(),
                  "advantage_mean": masked_mean(ro.advantages, ro.mask).item(),
                  "return_mean": masked_mean(ro.returns, ro.mask).item(), **stats}
        record["loss"] = stats["policy_loss"] + self.s.vf_coef * stats["value_loss"]
        return record, ro


def n_iterations(n_prompts: int, batch_size: int, epochs: float, max_steps: int | None) -> int:
    return max_steps or max(1, math.ceil(epochs * n_prompts / batch_size))


def n_updates(iterations: int, rollout_size: int, settings: PPOSettings) -> int:
    """Optimizer steps of a run: per iteration and PPO epoch, one per ``grad_accum`` mini-batches."""
    minibatches = -(-rollout_size // (settings.mini_batch_size or rollout_size))
    return iterations * settings.ppo_epochs * -(-minibatches // settings.grad_accum)


def prompt_batches(n: int, batch_size: int, seed: int):
    """Endless batches of prompt indices: a fresh seeded permutation per pass."""
    epoch = 0
    while True:
        g = torch.Generator().manual_seed(seed * 7919 + epoch)
        order = torch.randperm(n, generator=g).tolist()
        for s in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield order[s: s + batch_size]
        epoch += 1


def now() -> float:
    return time.perf_counter()
