"""Embedding tuning: train only the input embedding matrix, or only the rows of new tokens.

The usual companion of vocabulary extension (added special or domain tokens):
the backbone stays frozen and only ``E`` (or ``E[first_new_token:]``) learns.
With ``new_tokens_only`` the new rows live in a separate trainable tensor that a
forward hook on the embedding layer substitutes for the ids ≥ ``first_new_token``; the other rows get
no gradient at all — the same as masking their gradient to zero, but immune to
weight decay and optimizer momentum, so they stay bit-for-bit unchanged. Merge
writes the rows back. When the output head is tied to the input embedding (GPT-2,
T5) full embedding tuning trains the tied head too; ``new_tokens_only`` does not.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import MethodError
from ..recipe.method_settings import EmbeddingSettings
from .injection import InjectedMethod, attach, detach
from .registry import register


class NewRows(nn.Module):
    """The trainable rows of ids ≥ ``start``; a forward hook on the embedding substitutes them."""

    def __init__(self, base: nn.Embedding, start: int):
        super().__init__()
        self.start = start
        self.weight = nn.Parameter(base.weight.detach()[start:].clone())

    def substitute(self, module, args, out):
        ids = args[0]
        new = ids >= self.start
        rows = nn.functional.embedding((ids - self.start).clamp(min=0), self.weight).to(out.dtype)
        return torch.where(new.unsqueeze(-1), rows, out)


NEW_ROWS_CHILD = "leantune_new_rows"


@register
class EmbeddingTuning(InjectedMethod):
    name = "embedding"
    Config = EmbeddingSettings

    def inject(self, model: nn.Module, head: str) -> list[nn.Parameter]:
        emb = model.get_input_embeddings()
        if emb is None or not isinstance(emb, nn.Embedding):
            raise MethodError("method 'embedding': the model has no input embedding layer")
        if not self.config.new_tokens_only:
            return [emb.weight]
        start, vocab = self.config.first_new_token, emb.num_embeddings
        if start >= vocab:
            raise MethodError(f"method 'embedding': first_new_token {start} is past the vocabulary ({vocab} rows); "
                              f"resize the embeddings after adding tokens")
        rows = NewRows(emb, start)
        attach(emb, NEW_ROWS_CHILD, rows, emb.register_forward_hook(rows.substitute))
        return [rows.weight]

    def merge(self, model: nn.Module) -> nn.Module:
        emb = model.get_input_embeddings()
        if NEW_ROWS_CHILD in emb._modules:
            rows = emb._modules[NEW_ROWS_CHILD]
            with torch.no_grad():
                emb.weight[rows.start:] = rows.weight.to(emb.weight.dtype)
            detach(emb, NEW_ROWS_CHILD)
        model.requires_grad_(False)
        return model
