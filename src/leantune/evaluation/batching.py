"""Evaluation batches: longest examples first, so that each batch pads to lengths close to
its own (results go back to the input order by index), run without autograd."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from ..training.modes import evaluating

FOUR_BIT = {"Linear4bit", "LinearNF4", "LinearFP4"}


def length_sorted(features: list[dict], batch_size: int,
                  length: Callable[[dict], int] = lambda f: len(f.get("input_ids", ()))
                  ) -> Iterator[tuple[list[int], list[dict]]]:
    """(indices into ``features``, those features) per batch, longest first; ties keep input order."""
    order = sorted(range(len(features)), key=lambda i: -length(features[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        yield idx, [features[i] for i in idx]


@contextmanager
def inference(model: nn.Module):
    """:func:`evaluating` under ``torch.inference_mode`` (no version counters or view
    tracking); under ``no_grad`` where bitsandbytes 4-bit layers must keep their training layout."""
    four_bit = any(type(m).__name__ in FOUR_BIT for m in model.modules())
    with evaluating(model), (torch.no_grad() if four_bit else torch.inference_mode()):
        yield model
