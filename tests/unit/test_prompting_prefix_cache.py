"""A cached shared prompt prefix gives the same label scores as scoring the whole prompts."""
from __future__ import annotations

import pytest
import torch

from leantune.models.loading import load_model
from leantune.prompting.label_scoring import (collate_prompts, pad_words, prefix_cache, score_labels,
                                              shared_prefix_length)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_shared_prefix_length_keeps_one_token_per_row():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 9]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter row keeps its last token
    assert shared_prefix_length([[7, 8], [1, 2]]) == 0
    assert shared_prefix_length([[1, 2, 3]]) == 2
    assert shared_prefix_length([]) == 0


@pytest.mark.parametrize("words, mode", [([[5], [9], [12]], "first"), ([[5, 6], [9], [12, 3, 4]], "mean")])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cached_prefix_scores_equal_uncached(tiny_model_dir, arch, words, mode):
    model = load_model(tiny_model_dir(arch), "causal_lm").eval()
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(5, 200, (23,), generator=gen).tolist()
    queries = [torch.randint(5, 200, (n,), generator=gen).tolist() for n in (4, 9, 1, 6)]  # ragged: padding
    full = [{"input_ids": prefix + q, "mask_positions": [len(prefix) + len(q) - 1]} for q in queries]
    ids, lengths = pad_words(words)
    args = (ids, lengths, [0, 1, 2], 3)
    with torch.no_grad():
        plain = score_labels(model, collate_prompts(full, 0), *args, causal=True, mode=mode)
        cut = shared_prefix_length([f["input_ids"] for f in full])
        assert cut == len(prefix)
        past = prefix_cache(model, torch.tensor([prefix]))
        tails = [{"input_ids": f["input_ids"][cut:], "mask_positions": [f["mask_positions"][0] - cut]} for f in full]
        cached = score_labels(model, collate_prompts(tails, 0), *args, causal=True, mode=mode, past=past)
        again = score_labels(model, collate_prompts(tails[:2], 0), *args, causal=True, mode=mode, past=past)
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, plain[:2], atol=1e-5, rtol=1e-5)  # the cache was not consumed
    assert past[0][0].shape[2] == len(prefix)
