"""The ``data check`` report."""
from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from leantune.data.inspect import Stats, inspect_data


def write_jsonl(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def tokenizer():
    """A word-level tokenizer built in memory: one token per whitespace/punctuation-separated word."""
    vocab = {w: i for i, w in enumerate(["[UNK]", "hi", "there", "bye", "<user>", "<assistant>"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_stats():
    assert Stats.of([]) is None
    s = Stats.of(list(range(1, 21)))
    assert (s.min, s.mean, s.median, s.p95, s.max) == (1, 10.5, 10.5, 19, 20)
    assert str(Stats.of([2, 4, 4])) == "min 2 / mean 3.3 / median 4 / p95 4 / max 4"


def test_chat_report_counts_rows_duplicates_and_turns(tmp_path):
    path = write_jsonl(tmp_path, [
        {"instruction": "hi", "output": "there"},
        {"instruction": "hi", "output": "there", "extra": 1},  # duplicate: extra keys are ignored
        {"instruction": "hi", "output": "bye", "history": [["a", "b"]]},
        "{broken",
        {"instruction": "hi"},
    ])
    report = inspect_data(path, "alpaca")
    assert (report.total_rows, report.valid_rows, report.duplicates) == (5, 3, 1)
    assert (report.turns.min, report.turns.max, report.turns.median) == (2, 4, 2)
    assert report.label_counts is None and report.token_lengths is None
    assert report.table_rows() == [
        ("file", str(path)),
        ("format", "alpaca (chat)"),
        ("rows", "5"),
        ("valid", "3"),
        ("invalid", "2"),
        ("exact duplicates", "1"),
        ("turns per example", "min 2 / mean 2.7 / median 2 / p95 4 / max 4"),
    ]
    assert report.problem_lines() == [
        f"{path}:4: <json>: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        f"{path}:5: output: missing",
    ]
    lines = report.render()
    assert lines[0] == f"file               {path}"
    assert lines[-3:] == ["2 problem(s):", *report.problem_lines()]
    assert report.render(limit=1)[-2:] == [report.problem_lines()[0], "... and 1 more"]


def test_classification_report_counts_labels(tmp_path):
    path = write_jsonl(tmp_path, [
        {"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}, {"text": "c", "label": "pos"},
        {"text": "c", "label": "pos"}, {"text": "d", "label": False},
    ])
    report = inspect_data(path, None)
    assert (report.format, report.kind) == ("classification", "classification")
    assert report.label_counts == {"pos": 3, "neg": 1}
    assert (report.valid_rows, report.duplicates, report.turns) == (4, 1, None)
    assert ("labels (2)", "pos: 3, neg: 1") in report.table_rows()


def test_token_lengths_without_chat_template_join_contents(tmp_path, tokenizer):
    path = write_jsonl(tmp_path, [
        {"prompt": "hi", "completion": "there"},
        {"prompt": "hi there", "completion": "bye bye bye"},
    ])
    report = inspect_data(path, "prompt_completion", tokenizer=tokenizer)
    assert (report.token_lengths.min, report.token_lengths.max) == (2, 5)
    assert report.notes == ["the tokenizer has no chat template; token lengths use the joined message contents"]


def test_token_lengths_use_the_chat_template(tmp_path, tokenizer):
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}> {{ m.content }} {% endfor %}"
    path = write_jsonl(tmp_path, [{"messages": [{"role": "user", "content": "hi"},
                                                {"role": "assistant", "content": "bye bye"}]}])
    report = inspect_data(path, "messages", tokenizer=tokenizer)
    assert report.token_lengths == Stats(5, 5, 5, 5, 5)  # <user> hi <assistant> bye bye
    assert report.notes == []


def test_token_lengths_for_text_and_pairs(tmp_path, tokenizer):
    text = write_jsonl(tmp_path, [{"text": "hi there bye"}], "t.jsonl")
    assert inspect_data(text, "text", tokenizer=tokenizer).token_lengths == Stats(3, 3, 3, 3, 3)
    pairs = write_jsonl(tmp_path, [{"text": "hi", "text_pair": "there bye", "label": 0}], "p.jsonl")
    assert inspect_data(pairs, "classification", tokenizer=tokenizer).token_lengths == Stats(3, 3, 3, 3, 3)


def test_failing_chat_template_falls_back_with_a_note(tmp_path, tokenizer):
    tokenizer.chat_template = (
        "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{{ m.content }} {% endfor %}"
    )
    path = write_jsonl(tmp_path, [
        {"messages": [{"role": "system", "content": "hi"}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "bye"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "there"}]},
    ])
    report = inspect_data(path, "messages", tokenizer=tokenizer)
    assert (report.token_lengths.min, report.token_lengths.max) == (2, 3)
    assert report.notes == ["chat template failed (System role not supported); "
                            "those lengths use the joined message contents"]
