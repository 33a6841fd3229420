"""Verbalizers: label → label words, manual or found automatically.

Manual: ``{"positive": ["great", "good"], "negative": "bad"}``; a missing verbalizer uses
the label names themselves. Multi-token words are scored by the ``mean`` of their
token log-probabilities or by the ``first`` token (see :mod:`.label_scoring`).

Automatic search (in the spirit of PETAL, Schick, Schmid & Schütze 2020, arXiv:2010.13641):
each vocabulary token v is scored for label y by the likelihood ratio
mean_{x∈y} log p(v | P(x)) − mean_{x∉y} log p(v | P(x)) at the mask position over the
labelled examples; each label takes its k best word-like tokens not taken by another label.
"""
from __future__ import annotations

import re

import torch

from ..data.collate import pad_batch
from ..errors import RecipeError
from ..training.modes import evaluating
from .label_scoring import logprobs_at, pad_words

# Zero-shot by an NLI-style template (K = 0): each candidate label is written into the
# prompt and the model says whether it fits. Masked LMs: the form of the issue; causal LMs
# must see {label} before the answer position.
PRESETS = {
    "nli": {"template": '"{text}" ? {mask}, this is about {label}.',
            "verbalizer": {"yes": ["Yes"], "no": ["No"]}},
    "nli_causal": {"template": '"{text}"\nQuestion: Is this text about {label}? Answer: {mask}',
                   "verbalizer": {"yes": ["Yes"], "no": ["No"]}},
}


def label_description(label: str) -> str:
    """A readable form of a label name: ``rec.sport.hockey`` → ``rec sport hockey``."""
    return re.sub(r"[._\-/]+", " ", str(label)).strip()


class Verbalizer:
    def __init__(self, labels: list[str], words: dict[str, list[str] | str] | None = None, mode: str = "mean"):
        if mode not in ("mean", "first"):
            raise RecipeError(f"verbalizer scoring {mode!r}: use mean or first")
        self.labels = [str(x) for x in labels]
        words = {str(k): v for k, v in (words or {}).items()}
        unknown = sorted(set(words) - set(self.labels))
        if unknown:
            raise RecipeError(f"verbalizer names label(s) {unknown} that are not among the labels {self.labels[:20]}")
        self.words: dict[str, list[str]] = {}
        for label in self.labels:
            w = words.get(label, [label])
            w = [w] if isinstance(w, str) else list(w)
            if not w or any(not isinstance(x, str) or not x.strip() for x in w):
                raise RecipeError(f"verbalizer: label {label!r} needs at least one non-empty label word")
            self.words[label] = w
        self.mode = mode

    @property
    def flat(self) -> list[tuple[int, str]]:
        return [(i, w) for i, label in enumerate(self.labels) for w in self.words[label]]

    @property
    def word_label(self) -> list[int]:
        return [i for i, _ in self.flat]

    def token_ids(self, tokenizer, prefix_space: bool) -> list[list[int]]:
        out = []
        for _, word in self.flat:
            text = (" " + word.lstrip()) if prefix_space else word
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if not ids:
                raise RecipeError(f"label word {word!r} tokenizes to nothing")
            out.append(ids)
        return out

    def encode(self, tokenizer, prefix_space: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(word ids [W, M], lengths [W])."""
        return pad_words(self.token_ids(tokenizer, prefix_space))

    def max_tokens(self, tokenizer, prefix_space: bool = False) -> int:
        return max(len(w) for w in self.token_ids(tokenizer, prefix_space))

    def first_word(self, label: str) -> str:
        return self.words[str(label)][0]

    def as_dict(self) -> dict:
        return {"words": self.words, "mode": self.mode}


def _word_like(token: str, min_chars: int) -> bool:
    core = token.strip().lstrip("#")
    return len(core) >= min_chars and core.isalpha()


def search_label_words(model, tokenizer, template, examples: list[dict], labels: list[str], *, causal: bool,
                       k: int = 1, max_length: int = 256, batch_size: int = 8, min_chars: int = 2,
                       candidates: list[str] | None = None) -> dict[str, list[str]]:
    """The k best single-token label words per label by likelihood ratio (see module doc)."""
    by_label = {str(lab): i for i, lab in enumerate(labels)}
    feats = []
    for ex in examples:
        enc = template.encode(tokenizer, ex, causal=causal, max_length=max_length)
        feats.append({"input_ids": enc.input_ids, "pos": enc.mask_positions[0], "y": by_label[str(ex["label"])],
                      "space": enc.prefix_space})
    device = next(model.parameters()).device
    sums = None
    counts = torch.zeros(len(labels))
    with evaluating(model):
        for s in range(0, len(feats), batch_size):
            chunk = feats[s:s + batch_size]
            b = pad_batch([{"input_ids": f["input_ids"]} for f in chunk], tokenizer.pad_token_id or 0)
            pos = torch.tensor([[f["pos"]] for f in chunk])
            lp = logprobs_at(model, b["input_ids"].to(device), b["attention_mask"].to(device), pos.to(device),
                             causal=causal)[:, 0].cpu()
            if sums is None:
                sums = torch.zeros(len(labels), lp.shape[-1])
            for row, f in zip(lp, chunk):
                sums[f["y"]] += row
                counts[f["y"]] += 1
    if sums is None or (counts == 0).any():
        missing = [labels[i] for i in range(len(labels)) if counts[i] == 0]
        raise RecipeError(f"automatic verbalizer search needs labelled examples of every label; none for {missing}")
    total = sums.sum(0)
    ratio = torch.stack([sums[i] / counts[i] - (total - sums[i]) / max(float(counts.sum() - counts[i]), 1.0)
                         for i in range(len(labels))])
    space = feats[0]["space"] if feats else False
    vocab = ratio.shape[-1]
    allowed = torch.zeros(vocab, dtype=torch.bool)
    if candidates:
        for word in candidates:
            ids = tokenizer((" " + word) if space else word, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                allowed[ids[0]] = True
    else:
        special = set(tokenizer.all_special_ids)
        for min_c in (min_chars, 1):
            for t in range(min(vocab, len(tokenizer))):
                if t not in special and _word_like(tokenizer.decode([t]), min_c):
                    allowed[t] = True
            if allowed.sum() >= k * len(labels):
                break
    if allowed.sum() < k * len(labels):
        raise RecipeError("automatic verbalizer search: too few word-like candidate tokens")
    ratio[:, ~allowed] = float("-inf")
    taken: set[int] = set()
    chosen: dict[str, list[str]] = {}
    # labels pick in turn, strongest evidence first, so that no word serves two labels
    picks = {i: [] for i in range(len(labels))}
    order = ratio.argsort(dim=-1, descending=True)
    cursor = [0] * len(labels)
    for _ in range(k):
        for i in range(len(labels)):
            while int(order[i, cursor[i]]) in taken:
                cursor[i] += 1
            t = int(order[i, cursor[i]])
            taken.add(t)
            picks[i].append(t)
    for i, label in enumerate(labels):
        chosen[str(label)] = [tokenizer.decode([t]).strip() or tokenizer.decode([t]) for t in picks[i]]
    return chosen
