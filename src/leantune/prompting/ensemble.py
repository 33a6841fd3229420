"""Multi-prompt learning (Liu et al. 2021, Pre-train, Prompt, and Predict, arXiv:2107.13586, §6).

* parallel ensembles: several templates' label distributions combined by ``average``
  (mean probability) or ``vote`` (majority of argmaxes; ties go to the higher mean
  probability);
* augmentation: similar demonstrations prepended to the query (:func:`augment`; the
  ``icl`` stage's ``selection: similar``);
* composition: sub-templates joined into one (:func:`compose`).
"""
from __future__ import annotations

import torch

from ..recipe.template import Template, compose  # noqa: F401  (re-exported: composition)


def average(probs: list[torch.Tensor], weights: list[float] | None = None) -> torch.Tensor:
    """Weighted mean of [N, L] probability tensors, renormalised."""
    stack = torch.stack([p.float() for p in probs])
    w = torch.tensor(weights if weights is not None else [1.0] * len(probs), dtype=stack.dtype)
    mean = (stack * w.view(-1, 1, 1)).sum(0) / w.sum()
    return mean / mean.sum(-1, keepdim=True)


def vote(probs: list[torch.Tensor]) -> torch.Tensor:
    """Majority vote: [N, L] vote shares (ties broken by the mean probability)."""
    stack = torch.stack([p.float() for p in probs])  # [T, N, L]
    votes = torch.nn.functional.one_hot(stack.argmax(-1), stack.shape[-1]).float().sum(0)  # [N, L]
    shares = votes + 1e-6 * stack.mean(0)
    return shares / shares.sum(-1, keepdim=True)


def combine(probs: list[torch.Tensor], how: str = "average") -> torch.Tensor:
    if how == "average":
        return average(probs)
    if how == "vote":
        return vote(probs)
    raise ValueError(f"ensemble {how!r}: use average or vote")


def augment(template: Template, query: dict, demonstrations: list[dict], fill, mask: str = "[MASK]",
            sep: str = "\n\n") -> str:
    """Prompt augmentation as text: the demonstrations, each {mask} filled by ``fill(demo)``,
    then the query with ``mask`` at its {mask}."""
    from .demonstrations import render_demonstrations

    return render_demonstrations(template, demonstrations, fill, sep=sep) + template.render(query, mask)
