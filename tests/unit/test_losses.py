"""The causal-LM loss fast path against the plain computation it replaces.

``head_cross_entropy`` tiles the logits and computes the gradients in its forward;
``causal_lm_loss`` drops the attention mask for right-padded batches. Both must give
what ``F.cross_entropy`` over the model's own logits gives, value and gradients.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from leantune.data.tokenize import IGNORE
from leantune.training import losses
from tests.conftest import build_tiny_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _grads(*tensors):
    return [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("bias", [False, True])
def test_tiled_cross_entropy_equals_plain_value_and_gradients(monkeypatch, bias):
    torch.manual_seed(0)
    n, d, vocab = 37, 16, 50
    monkeypatch.setattr(losses, "TILE_ELEMENTS", 7 * vocab)  # 6 tiles, the last one partial
    head = torch.nn.Linear(d, vocab, bias=bias)
    hidden = torch.randn(n, d, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))

    tiled = losses.head_cross_entropy(head, hidden, targets)
    (2.5 * tiled).backward()  # a non-unit upstream gradient is scaled through
    got = _grads(hidden, head.weight, *([head.bias] if bias else []))

    for t in (hidden, head.weight, *([head.bias] if bias else [])):
        t.grad = None
    plain = F.cross_entropy(head(hidden), targets)
    (2.5 * plain).backward()
    want = _grads(hidden, head.weight, *([head.bias] if bias else []))

    torch.testing.assert_close(tiled, plain, rtol=1e-6, atol=1e-6)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_tiled_cross_entropy_without_gradients_matches_and_frozen_head_gets_none():
    torch.manual_seed(1)
    head = torch.nn.Linear(8, 30, bias=False).requires_grad_(False)
    hidden = torch.randn(9, 8, requires_grad=True)
    targets = torch.randint(0, 30, (9,))
    with torch.no_grad():
        torch.testing.assert_close(losses.head_cross_entropy(head, hidden, targets),
                                   F.cross_entropy(head(hidden), targets))
    losses.head_cross_entropy(head, hidden, targets).backward()
    assert head.weight.grad is None and hidden.grad is not None


def test_causal_lm_loss_fast_path_equals_model_loss_on_right_padding(tiny_tokenizer):
    model = build_tiny_model("llama", "causal_lm", tiny_tokenizer)
    torch.manual_seed(2)
    ids = torch.randint(5, 200, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding
    mask[2, 5:] = 0
    labels = ids.clone()
    labels[mask == 0] = IGNORE
    labels[:, :3] = IGNORE  # prompt tokens
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    assert losses._only_trailing_padding(mask, labels)

    fast = losses.causal_lm_loss(model, batch)
    plain = model(**batch).loss
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)


def test_left_padding_keeps_the_mask(tiny_tokenizer):
    ids = torch.randint(5, 200, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    labels = ids.masked_fill(mask == 0, IGNORE)
    assert not losses._only_trailing_padding(mask, labels)
    model = build_tiny_model("llama", "causal_lm", tiny_tokenizer)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    torch.testing.assert_close(losses.causal_lm_loss(model, batch), model(**batch).loss, rtol=1e-5, atol=1e-6)
