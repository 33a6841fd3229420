"""A causal-LM policy's replies: sampling them, the log-probabilities and hidden states of their
tokens, which tokens are live (up to the first EOS), and the KL to the reference policy (the same
model with its adapter disabled). Shared by PPO's rollouts and the PPO stage's evaluation."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..training.losses import fast_path, unwrap
from ..training.modes import evaluating


def response_forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     prompt_len: int, temperature: float = 1.0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (/ temperature) for the response positions and the hidden states that predict them.

    ``input_ids`` = left-padded prompt (``prompt_len`` columns) then the response. Position
    ids follow the attention mask, as in generation. Only the response positions go
    through the output head (the 49k-vocabulary logits are the largest activation).
    """
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    path = fast_path(unwrap(model))
    if path is not None:
        backbone, head = path
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=positions).last_hidden_state[:, prompt_len - 1: -1]
        logits = head(hidden)
    else:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                    output_hidden_states=True)
        hidden = out.hidden_states[-1][:, prompt_len - 1: -1]
        logits = out.logits[:, prompt_len - 1: -1]
    return logits.float() / max(temperature, 1e-6), hidden


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.gather(F.log_softmax(logits, -1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def response_mask(responses: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """1 up to and including the first EOS of each response, 0 after it."""
    if eos_id is None:
        return torch.ones_like(responses)
    is_eos = (responses == eos_id).long()
    after = (is_eos.cumsum(-1) - is_eos) > 0
    return (~after).long()


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), n), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, n - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, n - len(p):] = 1
    return ids, mask


@dataclass
class GenerationSettings:
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def generate(model: nn.Module, prompts: list[list[int]], pad_id: int, eos_id: int | None,
             gen: GenerationSettings, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample responses: (prompt ids [B,P] left-padded, prompt mask, response ids [B,T]).

    Runs under :func:`leantune.training.modes.evaluating` (dropout off, no gradients,
    4-bit layers left in their trainable layout).
    """
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    sample = not greedy and gen.temperature > 0
    kwargs = dict(max_new_tokens=gen.max_new_tokens, do_sample=sample, pad_token_id=pad_id,
                  eos_token_id=eos_id)
    if sample:
        kwargs.update(temperature=gen.temperature, top_k=gen.top_k or None, top_p=gen.top_p)
    else:
        kwargs.update(temperature=None, top_k=None, top_p=None)
    with evaluating(model):
        out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    return ids, mask, out[:, ids.shape[1]:]


@torch.no_grad()
def response_kl(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, responses: torch.Tensor,
                eos_id: int | None, temperature: float = 1.0) -> torch.Tensor:
    """Σ_t log π(a_t) − log π_ref(a_t) over each response's live tokens, π_ref = the model with its
    adapter disabled. For responses sampled from π this is the k1 estimate of KL(π‖π_ref) per
    response, the quantity PPO penalises; log-probs use logits / temperature, as in the rollouts."""
    live = response_mask(responses, eos_id)
    input_ids, attention_mask = torch.cat([prompt_ids, responses], 1), torch.cat([prompt_mask, live], 1)
    P = prompt_ids.shape[1]
    with evaluating(model):
        logp = token_logprobs(response_forward(model, input_ids, attention_mask, P, temperature)[0], responses)
        with model.disable_adapter():
            ref = token_logprobs(response_forward(model, input_ids, attention_mask, P, temperature)[0], responses)
    return ((logp - ref) * live).sum(-1)
