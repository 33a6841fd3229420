"""Label-word log-probabilities from a language model.

Masked LMs (Schick & Schütze 2021, PET, arXiv:2001.07676): the template holds M mask
tokens (M = the longest label word in tokens); word w = t1..tm is scored by the
log-probabilities of t_j at mask j. Causal LMs: the prompt ends where {mask} stood;
w is scored by log p(t1 | prompt), log p(t2 | prompt, t1), … (teacher forcing).

``mean`` averages a word's token log-probabilities, ``first`` keeps the first token's.
Several words of one label are pooled by the mean of their probabilities.

Causal prompts that all start with the same tokens (in-context learning with one fixed set
of demonstrations) can share that prefix: :func:`prefix_cache` runs it once and
``past=`` lets every batch attend to its keys and values instead of recomputing them.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from ..training.losses import fast_path, unwrap, uses_prompt_learning


class SoftPrompt(nn.Module):
    """Learned prompt embeddings placed where the template says ``{soft}`` (P-tuning style:
    mixed with the text, not only prepended). Rows start as copies of token embeddings."""

    def __init__(self, n: int, init: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(init[:n].detach().clone().float())

    def forward(self) -> torch.Tensor:
        return self.weight

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        """Left out of the host model's state dict (a ``full`` save stays a plain model); the
        stage saves it as ``soft_prompt.safetensors`` and checkpoints take trainable parameters."""


def input_embeddings(model: nn.Module) -> nn.Module:
    return unwrap(model).get_input_embeddings()


def _embed(model, input_ids, soft_index, soft: SoftPrompt | None):
    emb = input_embeddings(model)(input_ids)
    if soft is not None and soft_index is not None and bool((soft_index >= 0).any()):
        where = soft_index >= 0
        rows = soft.weight.to(emb.dtype)[soft_index.clamp(min=0)]
        emb = torch.where(where.unsqueeze(-1), rows, emb)
    return emb


def shared_prefix_length(rows: list[list[int]]) -> int:
    """How many leading tokens all ``rows`` have in common, leaving each row at least one
    token of its own (the scored position must be computed, not cached)."""
    if not rows:
        return 0
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for r in rows[1:]:
        i = 0
        while i < n and r[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


def prefix_cache(model: nn.Module, prefix_ids: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Per layer (keys, values) of a causal LM on one prompt prefix ``[1, P]``, for ``past=``."""
    path = None if uses_prompt_learning(model) else fast_path(unwrap(model))
    net = path[0] if path is not None else model
    out = net(input_ids=prefix_ids, attention_mask=torch.ones_like(prefix_ids), use_cache=True)
    return tuple((k, v) for k, v, *_ in out.past_key_values)


def _expand_past(past, batch: int):
    """A fresh cache holding ``past`` (batch 1) for ``batch`` rows; the forward pass appends to
    the new cache's own tensors, so ``past`` itself is never changed."""
    return DynamicCache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in past])


def logprobs_at(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                positions: torch.Tensor, soft_index: torch.Tensor | None = None,
                soft: SoftPrompt | None = None, causal: bool = False,
                inputs_embeds: torch.Tensor | None = None, past=None) -> torch.Tensor:
    """Log-softmax over the vocabulary at ``positions`` [B, P] → [B, P, V] (float32).

    ``past`` (causal LMs, from :func:`prefix_cache`): ``input_ids`` continue that prefix and
    ``positions`` count from the first token after it.
    """
    L = input_ids.shape[1]
    embeds = inputs_embeds if inputs_embeds is not None else (
        _embed(model, input_ids, soft_index, soft) if soft is not None else None)
    kwargs = {"inputs_embeds": embeds} if embeds is not None else {"input_ids": input_ids}
    if past is not None:
        if not causal or uses_prompt_learning(model):
            raise ValueError("a cached prompt prefix works with causal LMs without virtual tokens only")
        B, P = input_ids.shape[0], past[0][0].shape[2]
        kwargs["past_key_values"] = _expand_past(past, B)
        attention_mask = torch.cat([attention_mask.new_ones(B, P), attention_mask], dim=1)
    path = None if (not causal or uses_prompt_learning(model)) else fast_path(unwrap(model))
    idx = positions.unsqueeze(-1)
    if path is not None:  # causal LM: the output head runs only at the scored positions
        backbone, head = path
        hidden = backbone(attention_mask=attention_mask, **kwargs).last_hidden_state
        hidden = hidden[:, hidden.shape[1] - L:]
        picked = hidden.gather(1, idx.expand(-1, -1, hidden.shape[-1]))
        logits = head(picked)
    else:
        with _head_at(model, L, idx) as picked:
            logits = model(attention_mask=attention_mask, **kwargs).logits
        if not picked:  # the output head was not called as a module: pick from the full logits
            logits = logits[:, logits.shape[1] - L:]  # prompt-learning methods prepend virtual tokens
            logits = logits.gather(1, idx.expand(-1, -1, logits.shape[-1]))
    return F.log_softmax(logits.float(), dim=-1)


@contextmanager
def _head_at(model: nn.Module, length: int, idx: torch.Tensor):
    """While inside, the model's output embedding layer sees only the hidden states at
    ``idx`` [B, P, 1] (of the last ``length`` positions): a masked LM's vocabulary
    projection runs at its mask positions only. Yields a list that is non-empty when it did."""
    lm = unwrap(model)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    picked: list[bool] = []

    def pick(module, args):
        x = args[0]
        if picked or x.dim() != 3 or x.shape[0] != idx.shape[0] or x.shape[1] < length:
            return None
        picked.append(True)
        return (x[:, x.shape[1] - length:].gather(1, idx.expand(-1, -1, x.shape[-1])), *args[1:])

    handle = head.register_forward_pre_hook(pick) if isinstance(head, nn.Module) else None
    try:
        yield picked
    finally:
        if handle is not None:
            handle.remove()


def pad_words(words: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Word token ids padded to [W, M] (pad 0) and their lengths [W]."""
    m = max(len(w) for w in words)
    ids = torch.zeros(len(words), m, dtype=torch.long)
    for i, w in enumerate(words):
        ids[i, :len(w)] = torch.tensor(w)
    return ids, torch.tensor([len(w) for w in words])


def word_scores(token_logprobs: torch.Tensor, lengths: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """[B, W, M] per-token log-probs (padded) → [B, W]: ``mean`` over a word's tokens or ``first``."""
    if mode == "first":
        return token_logprobs[..., 0]
    if mode != "mean":
        raise ValueError(f"scoring mode {mode!r}: use mean or first")
    m = token_logprobs.shape[-1]
    keep = (torch.arange(m, device=token_logprobs.device) < lengths.to(token_logprobs.device).unsqueeze(-1))
    return (token_logprobs * keep).sum(-1) / lengths.to(token_logprobs.device)


def label_scores(scores: torch.Tensor, word_label: list[int], n_labels: int) -> torch.Tensor:
    """[B, W] word scores → [B, L]: log of the mean probability of each label's words."""
    out = []
    index = torch.tensor(word_label, device=scores.device)
    for lab in range(n_labels):
        sel = scores[:, index == lab]
        out.append(torch.logsumexp(sel, dim=-1) - math.log(sel.shape[-1]))
    return torch.stack(out, dim=-1)


def mlm_token_logprobs(model, batch: dict, words: torch.Tensor, soft: SoftPrompt | None = None) -> torch.Tensor:
    """Masked LM: [B, W, M] log p(word token j at mask j)."""
    lp = logprobs_at(model, batch["input_ids"], batch["attention_mask"], batch["mask_positions"],
                     batch.get("soft_index"), soft, causal=False)  # [B, P, V]
    m = min(words.shape[1], lp.shape[1])
    words = words[:, :m].to(lp.device)
    # lp[b, j, words[w, j]] → [B, W, m]
    gathered = lp[:, :m].unsqueeze(1).expand(-1, words.shape[0], -1, -1)
    return gathered.gather(-1, words.unsqueeze(0).unsqueeze(-1).expand(lp.shape[0], -1, -1, 1)).squeeze(-1)


def causal_token_logprobs(model, batch: dict, words: torch.Tensor, lengths: torch.Tensor, mode: str,
                          soft: SoftPrompt | None = None, past=None) -> torch.Tensor:
    """Causal LM: [B, W, M] teacher-forced log-probs of each word after each prompt.

    With ``first`` scoring (or one-token words) one forward pass over the prompts suffices;
    otherwise the prompts run once and every word continues from their key/value cache
    (:func:`cached_word_logprobs`). Prompt-learning methods, whose virtual tokens rule out
    that cache, run every (prompt, word) pair as one row of a single expanded batch.
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    last = batch["mask_positions"][:, :1]  # [B, 1] last prompt position
    words = words.to(ids.device)
    B, W, M = ids.shape[0], words.shape[0], words.shape[1]
    if mode == "first" or M == 1:
        lp = logprobs_at(model, ids, mask, last, batch.get("soft_index"), soft, causal=True, past=past)[:, 0]
        first = lp[:, words[:, 0]]  # [B, W]
        return torch.cat([first.unsqueeze(-1), first.new_zeros(B, W, M - 1)], dim=-1)
    if not uses_prompt_learning(model):
        return cached_word_logprobs(model, batch, words, lengths, soft, past)
    soft_index = batch.get("soft_index")
    rows, soft_rows, pos_rows = [], [], []
    n = last[:, 0] + 1  # prompt lengths
    for b in range(B):
        for w in range(W):
            k = int(lengths[w])
            rows.append(torch.cat([ids[b, :n[b]], words[w, :k - 1]]))
            if soft_index is not None:
                soft_rows.append(torch.cat([soft_index[b, :n[b]], soft_index.new_full((k - 1,), -1)]))
            pos_rows.append(torch.arange(M, device=ids.device).clamp(max=k - 1) + n[b] - 1)
    width = max(len(r) for r in rows)
    x = ids.new_full((len(rows), width), 0)
    am = torch.zeros_like(x)
    si = torch.full_like(x, -1) if soft_index is not None else None
    for i, r in enumerate(rows):
        x[i, :len(r)] = r
        am[i, :len(r)] = 1
        if si is not None:
            si[i, :len(r)] = soft_rows[i]
    lp = logprobs_at(model, x, am, torch.stack(pos_rows), si, soft, causal=True, past=past)  # [B*W, M, V]
    targets = words.unsqueeze(0).expand(B, -1, -1).reshape(B * W, M, 1)
    return lp.gather(-1, targets).squeeze(-1).view(B, W, M)


def _causal_pass(model: nn.Module, cache: DynamicCache, attention_mask: torch.Tensor, **inputs):
    """One forward of a causal LM that appends to ``cache``: hidden states and the output head
    that turns them into logits (or the logits and the identity, without a fast path)."""
    path = fast_path(unwrap(model))
    net = path[0] if path is not None else model
    out = net(attention_mask=attention_mask, past_key_values=cache, use_cache=True, **inputs)
    if path is not None:
        return out.last_hidden_state, path[1]
    return out.logits, nn.Identity()


def cached_word_logprobs(model, batch: dict, words: torch.Tensor, lengths: torch.Tensor,
                         soft: SoftPrompt | None = None, past=None) -> torch.Tensor:
    """Causal LM: [B, W, M] teacher-forced log-probs of each word after each prompt, with each
    prompt run once. Its keys and values are repeated for the W words, whose tokens t1..t(M-1)
    then run as one batch at the positions after the prompt's last real token (the prompts are
    right-padded; the padding stays masked). Position j of word w reads the state after
    t1..t(min(j, k_w - 1)) and scores token j of the padded word, as the expanded batch does."""
    ids, mask, last = batch["input_ids"], batch["attention_mask"], batch["mask_positions"][:, 0]
    B, L = ids.shape
    W, M = words.shape
    P = past[0][0].shape[2] if past is not None else 0
    cache = _expand_past(past, B) if past is not None else DynamicCache(config=unwrap(model).config)
    prompt_mask = torch.cat([mask.new_ones(B, P), mask], dim=1)
    inputs = ({"inputs_embeds": _embed(model, ids, batch.get("soft_index"), soft)} if soft is not None
              else {"input_ids": ids})
    hidden, head = _causal_pass(model, cache, prompt_mask, **inputs)
    first = hidden[:, hidden.shape[1] - L:][torch.arange(B, device=ids.device), last]  # [B, H] at the prompt end
    cache.batch_repeat_interleave(W)  # row b * W + w
    rest = words[:, :M - 1].repeat(B, 1)  # [B*W, M-1] t1..t(M-1)
    positions = (P + last + 1).repeat_interleave(W).unsqueeze(1) + torch.arange(M - 1, device=ids.device)
    cont_mask = torch.cat([prompt_mask.repeat_interleave(W, dim=0), mask.new_ones(B * W, M - 1)], dim=1)
    cont, _ = _causal_pass(model, cache, cont_mask, input_ids=rest, position_ids=positions)
    states = torch.cat([first.repeat_interleave(W, dim=0).unsqueeze(1), cont], dim=1)  # [B*W, M, H]
    k = lengths.to(ids.device).repeat(B)
    at = torch.arange(M, device=ids.device).unsqueeze(0).clamp(max=(k - 1).unsqueeze(1))  # [B*W, M]
    picked = states.gather(1, at.unsqueeze(-1).expand(-1, -1, states.shape[-1]))
    lp = F.log_softmax(head(picked).float(), dim=-1)
    targets = words.unsqueeze(0).expand(B, -1, -1).reshape(B * W, M, 1)
    return lp.gather(-1, targets).squeeze(-1).view(B, W, M)


def score_labels(model, batch: dict, words: torch.Tensor, lengths: torch.Tensor, word_label: list[int],
                 n_labels: int, *, causal: bool, mode: str = "mean", soft: SoftPrompt | None = None,
                 past=None) -> torch.Tensor:
    """[B, L] label log-scores (log of the mean label-word probability); ``past``: see
    :func:`logprobs_at` (causal LMs)."""
    if causal:
        tok = causal_token_logprobs(model, batch, words, lengths, mode, soft, past)
    else:
        tok = mlm_token_logprobs(model, batch, words, soft)
        lengths = lengths.clamp(max=tok.shape[-1])
    return label_scores(word_scores(tok, lengths, mode), word_label, n_labels)


def collate_prompts(features: list[dict], pad_id: int) -> dict:
    """Right-pad prompt features (``input_ids``, ``mask_positions``, optional ``soft_index``,
    ``labels``) into tensors; ``template`` (list of ints) passes through."""
    longest = max(len(f["input_ids"]) for f in features)
    B = len(features)
    ids = torch.full((B, longest), pad_id, dtype=torch.long)
    mask = torch.zeros((B, longest), dtype=torch.long)
    soft = torch.full((B, longest), -1, dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"])
        mask[i, :n] = 1
        if f.get("soft_index") is not None:
            soft[i, :n] = torch.tensor(f["soft_index"])
    batch = {"input_ids": ids, "attention_mask": mask,
             "mask_positions": torch.tensor([f["mask_positions"] for f in features], dtype=torch.long)}
    if bool((soft >= 0).any()):
        batch["soft_index"] = soft
    if "labels" in features[0]:
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
    return batch
