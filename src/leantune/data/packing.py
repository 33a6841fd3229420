"""Padding-free packing (``train.packing``): whole examples placed into rows of at most
``max_length`` tokens, each example a segment of its own.

Krell et al. 2021, Efficient Sequence Packing without Cross-contamination (arXiv:2107.02027):
first-fit decreasing bin packing over example lengths; position ids restart at 0 in every
segment, attention stays inside it (transformers derives the block-diagonal causal mask, or
FlashAttention's variable-length boundaries, from those position ids when no attention mask
is given: ``masking_utils.find_packed_sequence_indices``), and a segment's first token is not
predicted from the previous segment's last one, so the loss over a packed row is the loss
over its examples one by one.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import RecipeError
from .tokenize import IGNORE, TokenizeStats

SEGMENTS = "segments"  # a packed row's example lengths, in order


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into bins whose lengths sum to at most ``capacity``: the
    longest first (ties by index), each into the first bin with room. A max-tree over the bins'
    free room finds that bin in O(log n); bins not opened yet count as empty, so the first of
    them is the next one opened."""
    if any(n > capacity for n in lengths):
        raise ValueError(f"an example of {max(lengths)} tokens does not fit a row of {capacity}")
    size = 1 << max(len(lengths) - 1, 0).bit_length()
    room = [capacity] * (2 * size)
    bins: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        node = 1
        while node < size:
            node = 2 * node if room[2 * node] >= lengths[i] else 2 * node + 1
        if node - size == len(bins):
            bins.append([])
        bins[node - size].append(i)
        room[node] -= lengths[i]
        while node > 1:
            node //= 2
            room[node] = max(room[2 * node], room[2 * node + 1])
    return bins


def pack_features(features: list[dict], max_length: int) -> list[dict]:
    """Causal-LM features (``input_ids``, ``labels``) packed into rows of ``input_ids``,
    ``labels`` (the first label of each example ignored) and ``segments``."""
    rows = []
    for members in first_fit_decreasing([len(f["input_ids"]) for f in features], max_length):
        ids: list[int] = []
        labels: list[int] = []
        for i in members:
            f = features[i]
            ids += f["input_ids"]
            labels += [IGNORE] + list(f["labels"][1:])
        rows.append({"input_ids": ids, "labels": labels, SEGMENTS: [len(features[i]["input_ids"]) for i in members]})
    return rows


def packing_info(features: list[dict], rows: list[dict], max_length: int) -> dict:
    """Examples, rows and how full the rows are (tokens over rows × max_length)."""
    tokens = sum(len(r["input_ids"]) for r in rows)
    return {"examples": len(features), "rows": len(rows), "fill": round(tokens / max(1, len(rows) * max_length), 4)}


def tokenize_documents(examples: list[dict], tokenizer, max_length: int) -> tuple[list[dict], TokenizeStats]:
    """Continued pretraining with packing: every text (EOS after it) its own example, a text
    longer than ``max_length`` cut into pieces of ``max_length``, so that no piece holds two documents."""
    stats = TokenizeStats(examples=len(examples))
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out = []
    for ex in examples:
        ids = tokenizer(ex["text"], add_special_tokens=False)["input_ids"] + eos
        out += [{"input_ids": p, "labels": list(p)} for s in range(0, len(ids), max_length)
                if len(p := ids[s: s + max_length]) > 1]
    stats.tokens = stats.label_tokens = sum(len(f["input_ids"]) for f in out)
    return out, stats


def uses_varlen_attention(model: nn.Module) -> bool:
    """FlashAttention-style kernels: they read packed segments from the position ids of a
    single row only, so a batch goes as one row there."""
    impls = {getattr(m.config, "_attn_implementation", None) or "" for m in model.modules()
             if getattr(m, "config", None) is not None}
    return any("flash" in impl for impl in impls)


def check_packed_attention(model: nn.Module) -> None:
    """Refuse ``train.packing`` for a model that lets packed examples see each other: a second
    example's logits packed behind a first must equal its logits alone."""
    vocab = model.get_input_embeddings().weight.shape[0]
    device = next(model.parameters()).device
    first, second = torch.arange(3, 9, device=device) % vocab, torch.arange(11, 16, device=device) % vocab
    positions = torch.cat([torch.arange(len(first)), torch.arange(len(second))]).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = model(input_ids=torch.cat([first, second])[None], position_ids=positions[None],
                           use_cache=False).logits[0]
            alone = model(input_ids=second[None], use_cache=False).logits[0]
    except (TypeError, ValueError, RuntimeError) as exc:
        raise RecipeError(f"train.packing: {type(model).__name__} cannot run packed rows ({exc}); set "
                          f"train.packing: false") from None
    finally:
        model.train(was_training)
    gap = (packed[len(first):].float() - alone.float()).abs().max().item()
    scale = alone.float().abs().max().item()
    if gap > 1e-2 * scale + 1e-4:
        raise RecipeError(f"train.packing: {type(model).__name__} lets an example attend to the one before it in a "
                          f"packed row (its attention does not follow position ids: logits differ by {gap:.3g}); "
                          f"set train.packing: false")
