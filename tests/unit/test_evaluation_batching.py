"""Evaluation in length-sorted batches gives what one example at a time gives; label words
scored from the prompt's key/value cache equal scoring each word after the whole prompt;
the allocator setting for training is lifted for evaluation."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from leantune.data.collate import pad_batch
from leantune.evaluation.batching import length_sorted
from leantune.evaluation.classification import predict
from leantune.evaluation.lm import lm_metrics
from leantune.models.loading import load_model, load_tokenizer
from leantune.prompting.label_scoring import causal_token_logprobs, collate_prompts, mlm_token_logprobs, pad_words
from leantune.recipe import TrainSection, load_recipe
from leantune.stages.registry import build_stage
from leantune.training import allocator
from leantune.training.engine import Engine

pytestmark = pytest.mark.usefixtures("torch_single_thread")
LENGTHS = (7, 30, 3, 18, 18, 11, 25, 5, 1, 14)


def token_rows(seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 200, (n,), generator=gen).tolist() for n in LENGTHS]


def test_length_sorted_covers_every_index_once_longest_first():
    feats = [{"input_ids": r} for r in token_rows()]
    batches = list(length_sorted(feats, 3))
    order = [i for idx, _ in batches for i in idx]
    assert sorted(order) == list(range(len(feats)))
    lengths = [len(feats[i]["input_ids"]) for i in order]
    assert lengths == sorted(lengths, reverse=True)
    assert all(chunk == [feats[i] for i in idx] for idx, chunk in batches)


def test_predict_equals_one_example_at_a_time(tiny_model_dir):
    model = load_model(tiny_model_dir("bert", "seq_cls"), "seq_cls")
    n_labels = model.config.num_labels
    feats = [{"input_ids": r, "attention_mask": [1] * len(r), "labels": i % n_labels}
             for i, r in enumerate(token_rows())]
    preds, golds, loss = predict(model, feats, 4, lambda fs: pad_batch(fs, 0))
    ref_preds, ref_losses = [], []
    with torch.no_grad():
        for f in feats:
            logits = model(input_ids=torch.tensor([f["input_ids"]])).logits
            ref_preds.append(int(logits.argmax(-1)))
            ref_losses.append(float(F.cross_entropy(logits, torch.tensor([f["labels"]]))))
    assert preds == ref_preds
    assert golds == [f["labels"] for f in feats]
    assert loss == pytest.approx(sum(ref_losses) / len(feats), abs=1e-5)


def test_lm_metrics_equal_one_example_at_a_time(tiny_model_dir):
    model = load_model(tiny_model_dir("llama"), "causal_lm")
    feats = [{"input_ids": r, "attention_mask": [1] * len(r), "labels": r} for r in token_rows(1) if len(r) > 1]
    got = lm_metrics(model, feats, 3, lambda fs: pad_batch(fs, 0), shifted=True)
    total, count = 0.0, 0
    with torch.no_grad():
        for f in feats:
            ids = torch.tensor([f["input_ids"]])
            total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    assert got["loss"] == pytest.approx(total / count, abs=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


WORDS = [[5, 6], [9], [12, 3, 4], [40, 41]]


def prompts() -> list[dict]:
    return [{"input_ids": r, "mask_positions": [len(r) - 1]} for r in token_rows(2)]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cached_word_scoring_equals_each_word_after_the_whole_prompt(tiny_model_dir, arch):
    model = load_model(tiny_model_dir(arch), "causal_lm").eval()
    feats = prompts()
    ids, lengths = pad_words(WORDS)
    with torch.no_grad():
        got = causal_token_logprobs(model, collate_prompts(feats, 0), ids, lengths, "mean")
        for b, f in enumerate(feats):
            for w, word in enumerate(WORDS):
                seq = torch.tensor([f["input_ids"] + word])
                lp = model(input_ids=seq).logits[0].log_softmax(-1)
                n = len(f["input_ids"])
                want = torch.stack([lp[n - 1 + j, t] for j, t in enumerate(word)])
                torch.testing.assert_close(got[b, w, :len(word)], want, atol=1e-5, rtol=1e-5)


def test_masked_lm_scores_every_word_from_one_forward_at_the_masks(tiny_model_dir):
    model = load_model(tiny_model_dir("bert", "masked_lm"), "masked_lm").eval()
    feats = [{"input_ids": r + [7, 7], "mask_positions": [len(r), len(r) + 1]} for r in token_rows(3)]
    ids, _ = pad_words(WORDS)
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        got = mlm_token_logprobs(model, collate_prompts(feats, 0), ids)
    handle.remove()
    assert len(calls) == 1  # one forward for all words
    with torch.no_grad():
        for b, f in enumerate(feats):
            lp = model(input_ids=torch.tensor([f["input_ids"]])).logits[0].log_softmax(-1)
            for w, word in enumerate(WORDS):
                want = torch.stack([lp[f["mask_positions"][j], t] for j, t in enumerate(word[:2])])
                torch.testing.assert_close(got[b, w, :len(want)], want, atol=1e-5, rtol=1e-5)


PROBE = """
import ctypes, sys
from leantune.training import allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
if not hasattr(libc, "mallinfo2"):
    sys.exit(3)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]


def mmapped():  # whether glibc serves 4 MiB by a fresh mapping (its count of mappings rises)
    before = libc.mallinfo2().hblks
    block = libc.malloc(4 << 20)
    during = libc.mallinfo2().hblks
    libc.free(block)
    return during > before


seen = [allocator.training_setting(), mmapped()]
with allocator.lifted(True):
    seen.append(mmapped())
seen.append(mmapped())
with allocator.lifted(False):
    seen.append(mmapped())
seen += [allocator.evaluation_setting(), mmapped()]
print(seen)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_allocator_settings_read_back_from_malloc():
    """In a fresh process (a heap without large free blocks): 4 MiB blocks are mapped under the
    training setting, come from the heap under the evaluation setting, and lifted() restores."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    if out.returncode == 3:
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[True,", "True,", "False,", "True,", "True,", "True,", "False]"]


def test_fit_scopes_the_training_setting(tiny_model_dir, tmp_path, monkeypatch):
    """train.cpu_heap release: the mmap threshold in force (as last given to mallopt) in training
    steps, in evaluation during training and after fit."""
    if allocator._libc() is None:
        pytest.skip("glibc malloc")
    current = []
    real = allocator._set

    def spy(mmap_threshold, trim_threshold):
        current.append(mmap_threshold)
        return real(mmap_threshold, trim_threshold)

    monkeypatch.setattr(allocator, "_set", spy)
    model = load_model(tiny_model_dir("llama"), "causal_lm", "float32")
    feats = [{"input_ids": r, "attention_mask": [1] * len(r), "labels": r} for r in token_rows(4) if len(r) > 1]
    seen = []

    def loss(m, batch):
        seen.append(("train", current[-1]))
        return m(**batch).loss

    def evaluate(m):
        seen.append(("eval", current[-1]))
        return {"loss": 0.0}

    cfg = TrainSection(batch_size=4, max_steps=3, eval_steps=1, logging_steps=1, precision="fp32", save_steps=100,
                       cpu_heap="release")
    try:
        Engine(model, feats, cfg, tmp_path, lambda fs, generator=None: pad_batch(fs, 0), loss, evaluate,
               progress=False).fit()
    finally:
        allocator.evaluation_setting()
    small, large = allocator.TRAINING_MMAP_THRESHOLD, allocator.EVALUATION_MMAP_THRESHOLD
    assert seen == [("train", small), ("eval", large), ("train", small), ("eval", large), ("train", small)]
    assert current[-2] == large  # set by fit on its way out


def test_pet_template_probs_equal_one_example_at_a_time(tiny_model_dir, tmp_path):
    texts = ["a" * n for n in (3, 17, 6, 11, 1, 9, 14)]
    rows = [{"text": t, "label": "xy"[i % 2]} for i, t in enumerate(texts)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tiny_model_dir("bert", "masked_lm")
    recipe = load_recipe(raw={"model": str(path), "stage": {"name": "pet", "verbalizer": {"x": "p", "y": "q"},
                                                            "templates": ["{text} It was {mask}.", "{mask}: {text}"]},
                              "data": {"train": str(data), "eval": str(data)}, "train": {"max_length": 64},
                              "output": {"dir": str(tmp_path / "runs"), "name": "run"}})
    stage = build_stage(recipe.stage)
    stage.head_name = "masked_lm"
    feats = stage.prepare(recipe, load_tokenizer(path), rows, rows).eval
    model = load_model(path, "masked_lm")
    stage._ready(model)
    got = stage.template_probs(model, feats, 3)
    with torch.no_grad():
        for f in feats:
            want = stage.scores(model, stage.collate([f])).softmax(-1)[0]
            torch.testing.assert_close(got[f["template"]][f["idx"]], want, atol=1e-5, rtol=1e-5)
