"""Contextual calibration (Zhao et al. 2021, Calibrate Before Use, arXiv:2102.09690).

The prompt is run on a content-free input ("N/A", or several averaged) to estimate the
model's bias p_cf over labels; each prediction is then corrected with
W = diag(p_cf)^-1, i.e. p_cal ∝ p / p_cf, renormalised over the labels.
"""
from __future__ import annotations

import torch

CONTENT_FREE = ("N/A",)


def calibrate(probs: torch.Tensor, p_cf: torch.Tensor) -> torch.Tensor:
    """p_cal ∝ p / p_cf over the last dimension."""
    p_cf = p_cf.to(probs)
    scaled = probs / p_cf.clamp_min(1e-12)
    return scaled / scaled.sum(-1, keepdim=True)


def content_free_probs(probs: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """The mean over several content-free inputs' label distributions, renormalised."""
    p = torch.stack(list(probs)) if isinstance(probs, (list, tuple)) else probs
    p = p.reshape(-1, p.shape[-1]).mean(0)
    return p / p.sum()


def content_free_example(text: str = "N/A", pair: bool = False) -> dict:
    return {"text": text, "text_pair": text if pair else None}
