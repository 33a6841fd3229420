"""Demonstrations for in-context learning: selection, order, rendering, and the embedder.

Selection: ``random``; ``balanced`` (round-robin over labels, so counts differ by at most
one); ``similar`` (nearest by cosine similarity of sentence embeddings; Liu et al. 2022,
What Makes Good In-Context Examples for GPT-3?, arXiv:2101.06804). Order: ``random`` or
``similar_last`` (the most similar demonstration right before the query).

The embedder is any callable ``texts -> Tensor[N, D]``; the default mean-pools a BERT-style
encoder (``minilm-l6``, i.e. all-MiniLM-L6-v2), and tests pass a tiny one.
"""
from __future__ import annotations

import random
from typing import Callable, Protocol

import torch
from transformers import AutoModel, AutoTokenizer

from ..errors import RecipeError
from ..models.loading import resolve_model_path

STRATEGIES = ("random", "balanced", "similar")
ORDERS = ("random", "similar_last")


class Embedder(Protocol):
    def __call__(self, texts: list[str]) -> torch.Tensor: ...


def select(pool: list[dict], k: int, strategy: str, rng: random.Random,
           similarities: torch.Tensor | None = None, label_key: str = "label") -> list[int]:
    """Indices of ``k`` demonstrations from ``pool``."""
    k = min(k, len(pool))
    if k <= 0:
        return []
    if strategy == "random":
        return rng.sample(range(len(pool)), k)
    if strategy == "balanced":
        groups: dict[str, list[int]] = {}
        for i, ex in enumerate(pool):
            groups.setdefault(str(ex.get(label_key)), []).append(i)
        for members in groups.values():
            rng.shuffle(members)
        labels = sorted(groups)
        rng.shuffle(labels)  # which labels get one more when k is not a multiple
        out: list[int] = []
        depth = 0
        while len(out) < k:
            for lab in labels:
                if depth < len(groups[lab]) and len(out) < k:
                    out.append(groups[lab][depth])
            depth += 1
        return out
    if strategy == "similar":
        if similarities is None:
            raise RecipeError("selection 'similar' needs similarities (an embedder)")
        return similarities.topk(k).indices.tolist()
    raise RecipeError(f"demonstration selection {strategy!r}: use one of {', '.join(STRATEGIES)}")


def order(indices: list[int], how: str, rng: random.Random, similarities: torch.Tensor | None = None) -> list[int]:
    if how == "random":
        out = list(indices)
        rng.shuffle(out)
        return out
    if how == "similar_last":
        if similarities is None:
            raise RecipeError("order 'similar_last' needs similarities (an embedder)")
        return sorted(indices, key=lambda i: float(similarities[i]))
    raise RecipeError(f"demonstration order {how!r}: use one of {', '.join(ORDERS)}")


def cosine(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    k = torch.nn.functional.normalize(keys.float(), dim=-1)
    return q @ k.T


def example_text(ex: dict) -> str:
    pair = ex.get("text_pair")
    return f"{ex.get('text', '')} {pair}" if pair else str(ex.get("text", ""))


def render_demonstrations(template, demonstrations: list[dict], fill: Callable[[dict], str | tuple[str, str | None]],
                          sep: str = "\n\n") -> str:
    """The demonstrations as text, each {mask} filled by ``fill(demo)`` (a string, or a
    pair (mask text, label text) for templates with {label}); ends with ``sep``."""
    parts = []
    for d in demonstrations:
        filled = fill(d)
        mask_text, label_text = filled if isinstance(filled, tuple) else (filled, None)
        parts.append(template.render(d, mask_text, label=label_text))
    return "".join(p + sep for p in parts)


class MeanPoolEmbedder:
    """Sentence embeddings: mean of the encoder's last hidden states over real tokens, L2-normalised."""

    def __init__(self, model: str = "minilm-l6", max_length: int = 128, batch_size: int = 32):

        path = resolve_model_path(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model = AutoModel.from_pretrained(path)
        self.model.eval()
        self.max_length, self.batch_size = max_length, batch_size

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = []
        device = next(self.model.parameters()).device
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[s:s + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(device)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 1)


_CACHE: dict[str, MeanPoolEmbedder] = {}


def get_embedder(spec: str | Callable[[list[str]], torch.Tensor]) -> Callable[[list[str]], torch.Tensor]:
    """A callable as is; a model name or folder → a (cached) :class:`MeanPoolEmbedder`."""
    if callable(spec):
        return spec
    if spec not in _CACHE:
        _CACHE[spec] = MeanPoolEmbedder(spec)
    return _CACHE[spec]
