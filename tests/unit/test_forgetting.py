"""The forgetting probe (``eval.forgetting``): the built-in questions are well formed, option
scoring equals a direct per-option log-likelihood, and general perplexity rises when the tiny
llama is over-trained on one repeated string."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from leantune.data.paths import resolve_data_path
from leantune.errors import DataValidationError, RecipeError
from leantune.evaluation.forgetting import (
    BUILTIN_PROBE,
    continuation_logprobs,
    forgetting_probe,
    probe_accuracy,
    probe_context,
    read_probe,
)
from leantune.export.run_loading import load_run
from leantune.models.loading import load_model, load_tokenizer
from leantune.pipeline import train
from leantune.recipe import load_recipe
from leantune.workflows.compare import pick_metric

pytestmark = pytest.mark.usefixtures("torch_single_thread")

GENERAL = [
    "The river runs past the old mill and under the stone bridge before it reaches the sea.",
    "She opened the window, and the smell of fresh bread came up from the bakery below.",
    "Most people sleep better in a cool, dark and quiet room.",
    "The train to the city leaves every hour, and the trip takes forty minutes.",
]
NARROW = "zq#7 zq#7 zq#7 zq#7 zq#7 zq#7 zq#7 zq#7"


def test_builtin_probe_is_well_formed():
    path = resolve_data_path(BUILTIN_PROBE)
    items = read_probe(path)  # raises on a missing field, a bad answer index or repeated options
    assert 60 <= len(items) <= 100
    assert all(len(it["options"]) == 4 and 0 <= it["answer"] < 4 for it in items)
    assert len({it["question"] for it in items}) == len(items)
    assert all(len(set(it["options"])) == 4 for it in items)
    assert set(Counter(it["category"] for it in items)) == {"general knowledge", "arithmetic", "word meaning",
                                                            "common sense"}
    positions = Counter(it["answer"] for it in items)
    assert max(positions.values()) - min(positions.values()) <= 2  # no position favoured by a lazy model
    assert (path.parent / "README.md").is_file()


def test_bad_probe_rows_are_named(tmp_path):
    path = tmp_path / "probe.jsonl"
    path.write_text(json.dumps({"question": "Q?", "options": ["a", "b"], "answer": 2}) + "\n"
                    + json.dumps({"question": "R?", "options": ["a", "a"], "answer": 0}) + "\n")
    with pytest.raises(DataValidationError) as err:
        read_probe(path)
    assert f"{path}:1: answer" in str(err.value) and f"{path}:2: options" in str(err.value)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    path = tiny_model_dir("llama")
    return load_model(path, "causal_lm", "float32"), load_tokenizer(path)


def direct_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """One unpadded forward pass, full logits; with the byte-level tokenizer the continuation is
    the last len(bytes) tokens."""
    ids = tokenizer.encode(context + continuation)
    n = len(continuation.encode())
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    return sum(float(logp[p - 1, ids[p]]) for p in range(len(ids) - n, len(ids)))


def test_option_scoring_equals_direct_loglikelihood(tiny):
    model, tok = tiny
    items = read_probe(resolve_data_path(BUILTIN_PROBE))[:6]
    pairs = [(probe_context(it["question"]), " " + o) for it in items for o in it["options"]]
    batched = continuation_logprobs(model, tok, pairs, batch_size=5)  # mixed lengths: padding inside batches
    direct = [direct_logprob(model, tok, c, x) for c, x in pairs]
    assert batched == pytest.approx(direct, rel=1e-4, abs=1e-4)
    picks = [max(range(4), key=lambda j: direct[4 * i + j] / len(it["options"][j])) for i, it in enumerate(items)]
    assert probe_accuracy(model, tok, items, batch_size=3) == sum(
        p == it["answer"] for p, it in zip(picks, items)) / len(items)


def test_forgetting_needs_a_causal_lm(tiny):
    with pytest.raises(RecipeError, match="eval.forgetting"):
        forgetting_probe(True, tiny[1], None, "seq_cls")
    assert forgetting_probe(None, tiny[1], None, "causal_lm") is None


def test_compare_never_ranks_by_the_forgetting_probe():
    rows = [{"eval_after": {"general_perplexity": 30.0, "probe_accuracy": 0.5}}]
    assert pick_metric(rows) is None
    assert pick_metric([{"eval_after": {**rows[0]["eval_after"], "loss": 1.0}}]) == "loss"


def perplexity(model, tokenizer, texts: list[str]) -> float:
    """Token-weighted perplexity, one text at a time, from the model's own loss."""
    total = count = 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer.encode(text)])
            n = ids.shape[1] - 1
            total += float(model(input_ids=ids, labels=ids).loss) * n
            count += n
    return math.exp(total / count)


def test_general_perplexity_rises_when_overtrained(tiny_model_dir, tmp_path):
    text = tmp_path / "general.txt"
    text.write_text("\n\n".join(GENERAL) + "\n")
    probe = tmp_path / "probe.jsonl"
    items = read_probe(resolve_data_path(BUILTIN_PROBE))[:8]
    probe.write_text("".join(json.dumps(it) + "\n" for it in items))
    train_file = tmp_path / "narrow.jsonl"
    train_file.write_text(json.dumps({"text": NARROW}) + "\n")
    recipe = load_recipe(raw={
        "model": str(tiny_model_dir("llama")), "method": "full", "stage": "pt",
        "data": {"train": str(train_file), "format": "text", "eval_split": 0.0},
        "train": {"max_steps": 30, "batch_size": 1, "lr": 1e-2, "precision": "fp32", "max_length": 64},
        "eval": {"forgetting": {"text": str(text), "probe": str(probe)}},
        "output": {"dir": str(tmp_path / "runs"), "name": "narrow"}})
    summary = train(recipe, progress=False)
    before, after = summary.eval_before, summary.eval_after
    assert set(before) == set(after) == {"general_perplexity", "probe_accuracy"}
    assert after["general_perplexity"] > 1.5 * before["general_perplexity"]
    run = load_run(summary.run_dir)
    assert after["general_perplexity"] == pytest.approx(perplexity(run.model, run.tokenizer, GENERAL), rel=1e-4)
    report = (Path(summary.run_dir) / "report.md").read_text()
    assert "| general_perplexity |" in report and "| probe_accuracy |" in report
    written = json.loads((Path(summary.run_dir) / "eval.json").read_text())
    assert written["after"]["general_perplexity"] == after["general_perplexity"]
