"""all-MiniLM-L6-v2 (the packaged ``minilm-l6``) as a 4-way 20 Newsgroups classifier.

A balanced few-shot subset (40 train / 25 test posts per class, four distant
groups) is written to JSONL; a short LoRA run must beat chance (0.25) by far,
and ``leantune eval RUN --data test.jsonl`` must print the same accuracy.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("torch_test_threads")]


LABELS = ["comp.graphics", "rec.sport.hockey", "sci.med", "talk.politics.guns"]
PER_CLASS_TRAIN, PER_CLASS_TEST = 40, 25
MAX_WORDS = 200  # the tokenizer cuts at train.max_length=128 tokens anyway; keeps tokenizing cheap


def _subset(split: str, per_class: int) -> list[dict]:
    from leantune.data.builtin import newsgroups, sample_per_class

    rows = [r for r in newsgroups(split) if r["label"] in LABELS]
    return [{"text": " ".join(r["text"].split()[:MAX_WORDS]), "label": r["label"]}
            for r in sample_per_class(rows, per_class, seed=0)]


@pytest.fixture(scope="module")
def news_data(tmp_path_factory) -> Path:
    from leantune.data.builtin import write_jsonl

    folder = tmp_path_factory.mktemp("20ng")
    write_jsonl(_subset("train", PER_CLASS_TRAIN), folder / "train.jsonl")
    write_jsonl(_subset("test", PER_CLASS_TEST), folder / "test.jsonl")
    return folder


@pytest.fixture(scope="module")
def cls_run(news_data, tmp_path_factory):
    from leantune.pipeline import train
    from leantune.recipe import load_recipe

    raw = {
        "model": "minilm-l6",
        "method": {"name": "lora", "r": 16, "alpha": 32},
        "stage": "cls",
        "data": {"train": str(news_data / "train.jsonl"), "eval": str(news_data / "test.jsonl")},
        "train": {"epochs": 2, "batch_size": 8, "max_length": 128, "lr": 1e-3, "warmup_ratio": 0.1,
                  "precision": "fp32", "logging_steps": 5, "seed": 0},
        "eval": {"batch_size": 25, "before": False},
        "output": {"dir": str(tmp_path_factory.mktemp("runs")), "name": "cls-minilm"},
    }
    return train(load_recipe(raw=raw), progress=False)


def test_data_subset_is_balanced(news_data):
    for name, per_class in (("train.jsonl", PER_CLASS_TRAIN), ("test.jsonl", PER_CLASS_TEST)):
        rows = [json.loads(line) for line in (news_data / name).read_text().splitlines()]
        assert sorted({r["label"] for r in rows}) == LABELS
        assert all(sum(r["label"] == label for r in rows) == per_class for label in LABELS)


def test_accuracy_well_above_chance(cls_run):
    metrics = cls_run.eval_after
    assert cls_run.eval_examples == len(LABELS) * PER_CLASS_TEST
    assert metrics["accuracy"] >= 0.8, metrics  # chance is 0.25
    assert 0.75 <= metrics["macro_f1"] <= 1.0, metrics
    losses = [h["loss"] for h in cls_run.history if "loss" in h]
    assert losses[-1] < losses[0], losses
    assert json.loads((Path(cls_run.run_dir) / "run.json").read_text())["labels"] == LABELS


def test_eval_cli_prints_matching_accuracy(cls_run, news_data):
    from typer.testing import CliRunner

    from leantune.cli import app

    result = CliRunner().invoke(app, ["eval", cls_run.run_dir, "--data", str(news_data / "test.jsonl")])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout[result.stdout.index("{"):])  # stdout holds just the JSON
    assert printed["accuracy"] == pytest.approx(cls_run.eval_after["accuracy"], abs=1e-9)
    assert printed["macro_f1"] == pytest.approx(cls_run.eval_after["macro_f1"], abs=1e-9)
    assert printed["loss"] == pytest.approx(cls_run.eval_after["loss"], abs=1e-4)
