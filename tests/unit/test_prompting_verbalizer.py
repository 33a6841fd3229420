"""Verbalizers and label scoring (mean / first against hand-computed log-probs),
contextual calibration arithmetic, automatic verbalizer and AutoPrompt trigger search."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from leantune.errors import RecipeError
from leantune.models.loading import load_model
from leantune.prompting.autoprompt import search_triggers
from leantune.prompting.calibration import calibrate, content_free_probs
from leantune.prompting.label_scoring import (
    collate_prompts,
    label_scores,
    mlm_token_logprobs,
    pad_words,
    score_labels,
    word_scores,
)
from leantune.prompting.verbalizer import Verbalizer, label_description, search_label_words
from leantune.recipe.template import Template

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_word_and_label_scores_by_hand():
    lp = torch.log(torch.tensor([[[0.1, 0.2, 0.3, 0.4, 0.0 + 1e-9],
                                  [0.5, 0.1, 0.1, 0.2, 0.1]]]))  # [B=1, M=2, V=5]
    words, lengths = pad_words([[1, 2], [3]])
    tok = lp[:, :2].unsqueeze(1).expand(-1, 2, -1, -1).gather(-1, words.view(1, 2, 2, 1)).squeeze(-1)
    mean = word_scores(tok, lengths, "mean")
    first = word_scores(tok, lengths, "first")
    assert mean[0, 0].item() == pytest.approx((math.log(0.2) + math.log(0.1)) / 2)
    assert mean[0, 1].item() == pytest.approx(math.log(0.4))
    assert first[0, 0].item() == pytest.approx(math.log(0.2))
    assert first[0, 1].item() == pytest.approx(math.log(0.4))
    # two words of label 0, one of label 1: log of the mean word probability
    scores = torch.tensor([[math.log(0.2), math.log(0.4), math.log(0.1)]])
    assert label_scores(scores, [0, 0, 1], 2)[0].tolist() == pytest.approx([math.log(0.3), math.log(0.1)])


class FakeMLM(nn.Module):
    """Returns fixed logits whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids=None, attention_mask=None, **_):
        return SimpleNamespace(logits=self.logits.expand(input_ids.shape[0], -1, -1))


def test_mlm_scoring_gathers_each_mask_position():
    V = 6
    logits = torch.randn(1, 5, V, generator=torch.Generator().manual_seed(0))
    model = FakeMLM(logits)
    batch = {"input_ids": torch.zeros(1, 5, dtype=torch.long), "attention_mask": torch.ones(1, 5, dtype=torch.long),
             "mask_positions": torch.tensor([[2, 3]])}
    words, lengths = pad_words([[4, 1], [5]])
    tok = mlm_token_logprobs(model, batch, words)
    lp = logits.log_softmax(-1)[0]
    assert tok[0, 0].tolist() == pytest.approx([lp[2, 4].item(), lp[3, 1].item()])
    assert tok[0, 1, 0].item() == pytest.approx(lp[2, 5].item())
    s = score_labels(model, batch, words, lengths, [0, 1], 2, causal=False, mode="mean")
    assert s[0].tolist() == pytest.approx([(lp[2, 4] + lp[3, 1]).item() / 2, lp[2, 5].item()])
    s = score_labels(model, batch, words, lengths, [0, 1], 2, causal=False, mode="first")
    assert s[0].tolist() == pytest.approx([lp[2, 4].item(), lp[2, 5].item()])


@pytest.fixture(scope="module")
def tiny_llama(tiny_model_dir):
    return load_model(tiny_model_dir("llama"), "causal_lm", "float32")


@pytest.mark.parametrize("mode", ["mean", "first"])
def test_causal_multi_token_scoring_matches_hand_computed(tiny_llama, tiny_tokenizer, mode):
    tok = tiny_tokenizer
    template = Template("{text} It was {mask}.")
    verbalizer = Verbalizer(["pos", "neg"], {"pos": ["good", "fine"], "neg": "bad"}, mode)
    encs = [template.encode(tok, {"text": t}, causal=True) for t in ("nice", "a longer text")]
    words, lengths = verbalizer.encode(tok, prefix_space=encs[0].prefix_space)
    assert tok.decode(words[0, :lengths[0]]) == " good"
    batch = collate_prompts([{"input_ids": e.input_ids, "mask_positions": e.mask_positions} for e in encs],
                            tok.pad_token_id)
    with torch.no_grad():
        got = score_labels(tiny_llama, batch, words, lengths, verbalizer.word_label, 2, causal=True, mode=mode)
        for b, enc in enumerate(encs):
            word_scores_ = []
            for w in verbalizer.token_ids(tok, True):
                seq = torch.tensor([enc.input_ids + w])
                lp = tiny_llama(input_ids=seq).logits.log_softmax(-1)[0]
                n = len(enc.input_ids)
                toks = [lp[n - 1 + j, t].item() for j, t in enumerate(w)]
                word_scores_.append(sum(toks) / len(toks) if mode == "mean" else toks[0])
            pos = math.log((math.exp(word_scores_[0]) + math.exp(word_scores_[1])) / 2)
            assert got[b].tolist() == pytest.approx([pos, word_scores_[2]], abs=1e-4)


def test_verbalizer_validation():
    assert Verbalizer(["a", "b"]).words == {"a": ["a"], "b": ["b"]}
    with pytest.raises(RecipeError, match="not among the labels"):
        Verbalizer(["a"], {"z": "x"})
    with pytest.raises(RecipeError, match="non-empty"):
        Verbalizer(["a"], {"a": [""]})
    with pytest.raises(RecipeError, match="mean or first"):
        Verbalizer(["a"], mode="max")
    assert label_description("rec.sport.hockey") == "rec sport hockey"


def test_calibration_arithmetic():
    p = torch.tensor([[0.7, 0.2, 0.1]])
    p_cf = torch.tensor([0.5, 0.3, 0.2])
    raw = [0.7 / 0.5, 0.2 / 0.3, 0.1 / 0.2]  # [1.4, 0.667, 0.5]
    expected = [x / sum(raw) for x in raw]
    assert calibrate(p, p_cf)[0].tolist() == pytest.approx(expected)
    assert calibrate(p, p_cf)[0].argmax() == 0
    # a biased model: the content-free input already says label 0 with 0.8 → label 1 wins after calibration
    assert calibrate(torch.tensor([0.6, 0.4]), torch.tensor([0.8, 0.2])).argmax() == 1
    # several content-free inputs are averaged
    cf = content_free_probs([torch.tensor([0.6, 0.4]), torch.tensor([0.2, 0.8])])
    assert cf.tolist() == pytest.approx([0.4, 0.6])


TOY = [{"text": "aaaa", "label": "x"}, {"text": "aaab", "label": "x"},
       {"text": "zzzz", "label": "y"}, {"text": "zzzy", "label": "y"}]


@pytest.fixture(scope="module")
def tiny_bert(tiny_model_dir):
    return load_model(tiny_model_dir("bert", "masked_lm"), "masked_lm", "float32")


def test_automatic_verbalizer_search(tiny_bert, tiny_tokenizer):
    words = search_label_words(tiny_bert, tiny_tokenizer, Template("{text} is {mask}."), TOY, ["x", "y"],
                               causal=False, k=2, min_chars=1)
    assert set(words) == {"x", "y"} and all(len(w) == 2 for w in words.values())
    assert not set(words["x"]) & set(words["y"])
    assert all(w.isalpha() for ws in words.values() for w in ws)
    words = search_label_words(tiny_bert, tiny_tokenizer, Template("{text} is {mask}."), TOY, ["x", "y"],
                               causal=False, k=1, candidates=["p", "q", "r"])
    assert {w for ws in words.values() for w in ws} <= {"p", "q", "r"}


def test_autoprompt_finds_triggers(tiny_bert, tiny_tokenizer):
    template = Template("{text} {trigger:2} {mask}.")
    verbalizer = Verbalizer(["x", "y"], {"x": "p", "y": "q"})
    ids, history = search_triggers(tiny_bert, tiny_tokenizer, template, verbalizer, TOY, causal=False,
                                   iterations=3, candidates=4, batch_size=4)
    assert len(ids) == 2 and template.trigger_ids == ids
    assert len(history) == 3 and all(h["slot"] in (0, 1) for h in history)
    # slots start as the mask token (masked LMs) until a search sets trigger_ids
    template2 = Template("{text} {trigger} {mask}.")
    enc = template2.encode(tiny_tokenizer, TOY[0], causal=False)
    assert enc.input_ids[enc.trigger_slots[0]] == tiny_tokenizer.mask_token_id
    with pytest.raises(RecipeError, match="trigger"):
        search_triggers(tiny_bert, tiny_tokenizer, Template("{text} {mask}"), verbalizer, TOY, causal=False)
