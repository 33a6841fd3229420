"""Batching: dynamic padding to the longest sequence, labels padded with -100; packed rows."""
from __future__ import annotations

import torch

from .packing import SEGMENTS
from .tokenize import IGNORE


def pad_batch(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids``/``labels`` (lists) and build the attention mask."""
    longest = max(len(f["input_ids"]) for f in features)
    batch: dict[str, torch.Tensor] = {}
    ids = torch.full((len(features), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), longest), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"])
        mask[i, :n] = 1
    batch["input_ids"], batch["attention_mask"] = ids, mask
    if "token_type_ids" in features[0]:
        tt = torch.zeros_like(ids)
        for i, f in enumerate(features):
            tt[i, : len(f["token_type_ids"])] = torch.tensor(f["token_type_ids"])
        batch["token_type_ids"] = tt
    if "labels" in features[0]:
        first = features[0]["labels"]
        if isinstance(first, list):
            labels = torch.full((len(features), longest), IGNORE, dtype=torch.long)
            for i, f in enumerate(features):
                labels[i, : len(f["labels"])] = torch.tensor(f["labels"])
        else:
            labels = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        batch["labels"] = labels
    return batch


def pad_packed(rows: list[dict], pad_id: int, one_row: bool = False) -> dict[str, torch.Tensor]:
    """Packed rows (data/packing.py) as a batch with ``position_ids`` restarting at 0 in every
    example; the padding after a shorter row is a segment of its own, without labels.
    ``attention_mask`` marks real tokens (for counting; the loss passes none, so that the
    model masks by segment). ``one_row``: the rows concatenated into a single row without
    padding, the layout FlashAttention's variable-length kernels read."""
    if one_row:
        rows = [{key: [x for r in rows for x in r[key]] for key in ("input_ids", "labels", SEGMENTS)}]
    batch = pad_batch(rows, pad_id)
    positions = torch.zeros_like(batch["input_ids"])
    longest = positions.shape[1]
    for i, r in enumerate(rows):
        spans = [*r[SEGMENTS], longest - len(r["input_ids"])]
        positions[i] = torch.cat([torch.arange(n) for n in spans])
    batch["position_ids"] = positions
    return batch


def mask_tokens(batch: dict[str, torch.Tensor], tokenizer, probability: float,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """BERT masking (Devlin et al. 2019): of the chosen 15%, 80% [MASK], 10% random, 10% kept."""
    ids = batch["input_ids"].clone()
    labels = ids.clone()
    special = torch.tensor(
        [tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True) for row in ids.tolist()],
        dtype=torch.bool,
    ) | (batch["attention_mask"] == 0)
    chosen = (torch.rand(ids.shape, generator=generator) < probability) & ~special
    labels[~chosen] = IGNORE
    to_mask = chosen & (torch.rand(ids.shape, generator=generator) < 0.8)
    ids[to_mask] = tokenizer.mask_token_id
    to_random = chosen & ~to_mask & (torch.rand(ids.shape, generator=generator) < 0.5)
    ids[to_random] = torch.randint(len(tokenizer), ids.shape, generator=generator)[to_random]
    return {**batch, "input_ids": ids, "labels": labels}
