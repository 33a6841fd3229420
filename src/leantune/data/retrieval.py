"""Retriever-aware instructions (Gorilla, Patil et al. 2023, arXiv:2305.15334): each
instruction carries the documentation a retriever finds for it, at training time and at
inference with the same retriever, so that the model learns to read retrieved context and
follows documentation that changed after training.

A corpus is a folder of .md/.txt/.rst files, one such file, or a .jsonl of rows with
``text`` (and optionally ``source``); files are cut into passages at blank lines, merged up to
``max_words``. BM25 (Robertson and Zaragoza 2009, through ``rank_bm25``) or the cosine of
sentence embeddings (dense retrieval, Karpukhin et al. 2020, arXiv:2004.04906) ranks them. The
passages follow the instruction as Gorilla's retriever mode writes them ("Use this
documentation for reference: …"), cut to what the token budget leaves once the instruction
and the response are whole."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_file
from ..errors import LeantuneError

TEXT_SUFFIXES = (".md", ".txt", ".rst")
REFERENCE = "Use this documentation for reference:"
WORD = re.compile(r"-{1,2}\w[\w\-]*|[\w/][\w.\-/]*\w|\w")


@dataclass(frozen=True)
class Passage:
    source: str
    text: str


def _singular(word: str) -> str:
    """Plurals and third persons folded (copies → copy, extracts → extract, boxes → box): the
    least stemming that lets "copy a directory" find "copies directories"."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith(("ses", "xes", "ches", "shes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def words(text: str) -> list[str]:
    """BM25's tokens: lower-cased words, keeping ``--flags``, ``a.b`` and ``a/b`` whole."""
    return [_singular(w) for w in WORD.findall(text.lower())]


def _split(text: str, source: str, max_words: int) -> list[Passage]:
    out, current = [], []
    for block in (b.strip() for b in re.split(r"\n\s*\n", text)):
        if not block:
            continue
        if current and len(" ".join(current).split()) + len(block.split()) > max_words:
            out.append(Passage(source, "\n\n".join(current)))
            current = []
        current.append(block)
    if current:
        out.append(Passage(source, "\n\n".join(current)))
    return out


def load_corpus(path: str | Path, max_words: int = 200) -> list[Passage]:
    """The passages of a folder, a text file or a .jsonl corpus (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
        passages = [p for f in files for p in _split(f.read_text(encoding="utf-8"), str(f.relative_to(path)),
                                                     max_words)]
    elif path.suffix == ".jsonl" and path.is_file():
        passages = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                passages.append(Passage(str(row.get("source") or f"{path.name}:{number}"), str(row["text"])))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise LeantuneError(f"{path}:{number}: text: a corpus row is a JSON object with a 'text' "
                                    f"string (and optionally 'source')") from None
    elif path.suffix in TEXT_SUFFIXES and path.is_file():
        passages = _split(path.read_text(encoding="utf-8"), path.name, max_words)
    else:
        raise LeantuneError(f"data.retrieval.corpus: {path}: no such folder, .jsonl, .md, .txt or .rst file")
    if not passages:
        raise LeantuneError(f"data.retrieval.corpus: {path}: no text in it")
    return passages


class Bm25Retriever:
    """The top-k passages for a query by BM25 (ties keep corpus order)."""

    def __init__(self, passages: list[Passage]):
        from rank_bm25 import BM25Okapi  # lazy: only recipes with data.retrieval need it

        self.passages = passages
        self.index = BM25Okapi([words(p.text) or [""] for p in passages])

    def search(self, query: str, k: int) -> list[Passage]:
        scores = self.index.get_scores(words(query))
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return [self.passages[i] for i in order[:k]]


def corpus_key(passages: list[Passage], embedder: str) -> str:
    """A name for the embeddings of these passages by this encoder (the on-disk cache's key)."""
    digest = hashlib.sha256(embedder.encode())
    for p in passages:
        digest.update(b"\0" + p.source.encode() + b"\0" + p.text.encode())
    return digest.hexdigest()[:24]


class EmbeddingRetriever:
    """The top-k passages by cosine similarity of L2-normalised sentence embeddings (``embed``:
    texts → [n, d] tensor). The passages' embeddings are computed once and kept in ``cache`` (a
    safetensors file named by :func:`corpus_key`), so later runs and chats skip the encoding."""

    def __init__(self, passages: list[Passage], embed: Callable[[list[str]], torch.Tensor], cache: Path | None = None):
        self.passages, self.embed = passages, embed
        if cache is not None and cache.is_file():
            self.vectors = load_file(str(cache))["vectors"]
        else:
            self.vectors = embed([p.text for p in passages]).float()
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                with atomic_file(cache, force=True) as tmp:  # named by content: same bytes
                    save_file({"vectors": self.vectors.contiguous()}, str(tmp))

    def search(self, query: str, k: int) -> list[Passage]:
        scores = (self.vectors @ self.embed([query]).float()[0]).tolist()
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return [self.passages[i] for i in order[:k]]


def reference_text(passages: list[Passage]) -> str:
    return REFERENCE + "\n" + "\n\n".join(p.text for p in passages)


def fit_passages(passages: list[Passage], budget: int, count: Callable[[str], int]) -> list[Passage]:
    """The passages that fit in ``budget`` tokens (``count`` measures a text), the last one cut at
    a word; nothing when not even the reference line fits."""
    kept: list[Passage] = []
    for p in passages:
        if count(reference_text([*kept, p])) <= budget:
            kept.append(p)
            continue
        cut = p.text.split()
        low, high = 0, len(cut)
        while low < high:  # the longest prefix of words that still fits
            mid = (low + high + 1) // 2
            if count(reference_text([*kept, Passage(p.source, " ".join(cut[:mid]))])) <= budget:
                low = mid
            else:
                high = mid - 1
        if low:
            kept.append(Passage(p.source, " ".join(cut[:low])))
        break
    return kept


def with_passages(messages: list[dict], passages: list[Passage]) -> list[dict]:
    """The conversation with the passages after the last user turn's text."""
    if not passages:
        return messages
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None:
        return messages
    out = [dict(m) for m in messages]
    out[last]["content"] = f"{out[last]['content']}\n\n{reference_text(passages)}"
    return out
