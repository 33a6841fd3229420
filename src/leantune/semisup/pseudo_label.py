"""Pseudo-labelling (self-training; Yarowsky 1995, Lee 2013): choose the unlabelled examples
the current model is confident about and take its argmax as their label."""
from __future__ import annotations

import torch


def select_by_threshold(probs: torch.Tensor, threshold: float) -> list[tuple[int, int, float]]:
    """(index, predicted class, confidence) of every row whose top probability is ≥ threshold,
    most confident first."""
    conf, pred = probs.max(-1)
    keep = (conf >= threshold).nonzero().flatten().tolist()
    return sorted(((i, int(pred[i]), float(conf[i])) for i in keep), key=lambda t: (-t[2], t[0]))


def select_top_k_per_class(probs: torch.Tensor, k: int, threshold: float = 0.0) -> list[tuple[int, int, float]]:
    """The k most confident rows predicted as each class (and ≥ ``threshold``); keeps the class
    balance that a single threshold loses when the model prefers one class."""
    conf, pred = probs.max(-1)
    out = []
    for c in range(probs.shape[-1]):
        rows = [i for i in (pred == c).nonzero().flatten().tolist() if float(conf[i]) >= threshold]
        rows.sort(key=lambda i: (-float(conf[i]), i))
        out += [(i, c, float(conf[i])) for i in rows[:k]]
    return sorted(out, key=lambda t: (-t[2], t[0]))


def select(probs: torch.Tensor, *, threshold: float, per_class: int | None) -> list[tuple[int, int, float]]:
    return select_top_k_per_class(probs, per_class, threshold) if per_class else select_by_threshold(probs, threshold)


def pseudo_label_precision(chosen: list[tuple[int, int, float]], gold: list[int | None]) -> float | None:
    """Fraction of chosen pseudo-labels equal to the true label, over those whose label is known."""
    known = [(c, gold[i]) for i, c, _ in chosen if gold[i] is not None]
    if not known:
        return None
    return sum(c == g for c, g in known) / len(known)
