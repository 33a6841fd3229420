"""BERT-tiny with its MLM head (the packaged ``bert-tiny-mlm``): continued masked-LM
pretraining (stage ``pt``) on a few hundred 20 Newsgroups posts lowers the
held-out masked-LM loss."""
from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("torch_test_threads")]


N_TRAIN, N_EVAL = 256, 48
MAX_WORDS = 150


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    from leantune.data.builtin import newsgroups, write_jsonl
    from leantune.pipeline import train
    from leantune.recipe import load_recipe

    rows = [r for r in newsgroups("train") if len(r["text"].split()) >= 20]
    random.Random(0).shuffle(rows)
    texts = [{"text": " ".join(r["text"].split()[:MAX_WORDS])} for r in rows[: N_TRAIN + N_EVAL]]
    data = tmp_path_factory.mktemp("20ng-text")
    write_jsonl(texts[:N_TRAIN], data / "train.jsonl")
    write_jsonl(texts[N_TRAIN:], data / "eval.jsonl")
    raw = {
        "model": "bert-tiny-mlm",
        "method": "full",
        "stage": {"name": "pt", "objective": "auto"},
        "data": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl"), "format": "text"},
        "train": {"max_steps": 12, "batch_size": 16, "max_length": 128, "lr": 5e-4, "precision": "fp32",
                  "logging_steps": 5, "seed": 0},
        "eval": {"batch_size": 32},
        "output": {"dir": str(tmp_path_factory.mktemp("runs")), "name": "mlm-bert-tiny"},
    }
    return train(load_recipe(raw=raw), progress=False)


def test_masked_lm_head_is_used(mlm_run):
    import json

    meta = json.loads((Path(mlm_run.run_dir) / "run.json").read_text())
    assert meta["head"] == "masked_lm"
    assert mlm_run.train_examples == N_TRAIN and mlm_run.eval_examples == N_EVAL


def test_eval_loss_falls(mlm_run):
    before, after = mlm_run.eval_before, mlm_run.eval_after
    assert math.isfinite(before["loss"]) and math.isfinite(after["loss"])
    assert after["loss"] < before["loss"] - 0.5, (before, after)
    assert after["perplexity"] < before["perplexity"]
