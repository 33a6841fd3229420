"""Retriever-aware instructions: the corpus is read into passages, BM25 puts the planted
passage first, and the passages fit the token budget with the instruction kept whole."""
from __future__ import annotations

import json

import pytest

from leantune.data.retrieval import (
    REFERENCE,
    Bm25Retriever,
    Passage,
    fit_passages,
    load_corpus,
    with_passages,
    words,
)
from leantune.errors import LeantuneError

DOCS = {
    "cp.md": "cp copies files and directories.\n\n-r copies directories recursively. -p keeps modes and times.",
    "grep.md": "grep searches text for lines matching a pattern.\n\n-i ignores case. -n prints line numbers.",
    "tar.md": "tar packs files into an archive.\n\n-c creates, -x extracts, -z compresses with gzip.",
    "du.md": "du estimates the disk space used by files.\n\n-h prints sizes in human-readable units.",
    "chmod.md": "chmod changes the permission bits of files.\n\n+x makes a file executable.",
}


@pytest.fixture
def corpus(tmp_path):
    for name, text in DOCS.items():
        (tmp_path / "docs" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "docs" / name).write_text(text)
    return tmp_path / "docs"


def test_words_keep_flags_and_paths():
    assert words("Use --force on /tmp/a.txt, not -r!") == ["use", "--force", "on", "/tmp/a.txt", "not", "-r"]


def test_folder_corpus_splits_at_blank_lines_and_merges_small_blocks(corpus):
    merged = load_corpus(corpus)
    assert [p.source for p in merged] == sorted(DOCS)  # each file's two short blocks merged into one passage
    split = load_corpus(corpus, max_words=8)
    assert len(split) == 2 * len(DOCS) and split[0] == Passage("chmod.md", "chmod changes the permission bits of "
                                                                           "files.")


@pytest.mark.parametrize("query,source", [
    ("How do I copy a directory with everything inside it?", "cp.md"),
    ("find lines matching a pattern, ignoring case", "grep.md"),
    ("extract a gzip archive", "tar.md"),
    ("how much disk space do these files use, in human-readable sizes", "du.md"),
    ("make my script executable", "chmod.md"),
])
def test_bm25_puts_the_planted_passage_first(corpus, query, source):
    assert Bm25Retriever(load_corpus(corpus)).search(query, 3)[0].source == source


def test_jsonl_corpus_and_its_errors(tmp_path):
    good = tmp_path / "c.jsonl"
    good.write_text(json.dumps({"text": "alpha beta", "source": "a"}) + "\n\n" + json.dumps({"text": "gamma"}) + "\n")
    assert load_corpus(good) == [Passage("a", "alpha beta"), Passage("c.jsonl:3", "gamma")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    with pytest.raises(LeantuneError, match=r"bad.jsonl:2: text"):
        load_corpus(bad)
    with pytest.raises(LeantuneError, match="no such folder"):
        load_corpus(tmp_path / "missing")


def test_passages_fit_the_budget_and_the_last_is_cut_at_a_word():
    count = lambda text: len(text.split())  # noqa: E731 - a tokenizer that counts words
    passages = [Passage("a", "one two three four"), Passage("b", "five six seven eight nine")]
    header = count(REFERENCE)
    assert fit_passages(passages, header + 9, count) == passages  # everything fits
    assert fit_passages(passages, header + 6, count) == [passages[0], Passage("b", "five six")]
    assert fit_passages(passages, header + 2, count) == [Passage("a", "one two")]
    assert fit_passages(passages, header - 1, count) == []


def test_passages_follow_the_last_user_turn_only():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Copy a folder."},
                {"role": "assistant", "content": "cp -r a b"}, {"role": "user", "content": "And keep times?"}]
    out = with_passages(messages, [Passage("cp.md", "-p keeps modes and times.")])
    assert out[:3] == messages[:3]
    assert out[3]["content"] == f"And keep times?\n\n{REFERENCE}\n-p keeps modes and times."
    assert messages[3]["content"] == "And keep times?"  # the input is not changed
    assert with_passages(messages, []) is messages
