"""Curate a small training set: quality over quantity (LIMA, Zhou et al. 2023, arXiv:2305.11206).

Each step drops examples with a reason, in this order; every input row ends up kept or dropped:

1. ``invalid``: a row the data format rejects (unreadable, a field missing or of the wrong type).
2. Quality filters on the response (the last assistant turn; the text of text and classification
   rows; the chosen reply of preference rows), simplified from Gopher's (Rae et al. 2021,
   arXiv:2112.11446, appendix A): ``too-short`` (fewer than ``min_chars`` non-space characters),
   ``too-long`` (more than ``max_chars`` characters), ``junk`` (under 25% of the non-space
   characters are letters or digits, or a U+FFFD or control character), ``repeated-chars`` (one
   character is over half of 10 or more non-space characters), ``repeated-lines`` (lines that repeat
   an earlier line hold over 30% of the characters), ``repeated-words`` (over half of the word
   3-grams of 10 or more words repeat an earlier one: a looping reply), ``same-as-prompt`` (the
   response is the last user turn again).
3. ``contaminated``: shares a word n-gram (``ngram``, default 13, as in GPT-3's contamination study,
   Brown et al. 2020, arXiv:2005.14165, appendix C) with a row of the evaluation file; an
   evaluation row shorter than n words matches where its whole word sequence appears.
4. ``exact-duplicate``: the same text as an earlier kept example once Unicode-normalised (NFKC),
   case-folded and with white space collapsed; labels are not compared, so a duplicate with
   another label is dropped too (the detail says so).
5. ``near-duplicate``: Jaccard similarity ≥ ``near_threshold`` (default 0.8) of word 5-gram
   shingles with an earlier kept example. Candidates come from MinHash-LSH (Broder 1997; 128
   permutations, datasketch), with bands chosen so that a pair at exactly the threshold is a
   candidate with probability ≥ 0.99 (more above it); each candidate is confirmed on the exact
   Jaccard of the shingles, so there are no false positives and misses are under 1%.
6. ``not-selected``: beyond ``max_examples``: k-center greedy on sentence embeddings keeps the most
   spread-out examples, each label of classification data its proportional share (diversity.py).

The embedding function is passed in (``texts -> array [N, D]``), so this module loads no model.
"""
from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..atomic import atomic_file, check_output
from ..errors import DataValidationError, LeantuneError, Problem
from .diversity import select_diverse
from .formats import FORMATS, load_examples
from .readers import read_rows

REASONS = ("invalid", "too-short", "too-long", "junk", "repeated-chars", "repeated-lines", "repeated-words",
           "same-as-prompt", "contaminated", "exact-duplicate", "near-duplicate", "not-selected")
DEDUP_KINDS = ("exact", "near")
RECALL_AT_THRESHOLD = 0.99  # LSH: probability that a pair at exactly the threshold is a candidate
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class CurateOptions:
    max_examples: int | None = None
    dedup: tuple[str, ...] = DEDUP_KINDS
    near_threshold: float = 0.8
    shingle: int = 5
    num_perm: int = 128
    eval_path: Path | None = None
    ngram: int = 13
    min_chars: int = 2
    max_chars: int = 20_000


@dataclass(frozen=True)
class Dropped:
    line: int
    reason: str
    detail: str = ""
    index: int | None = None  # position among the readable rows; None for an unreadable one
    duplicate_of: int | None = None  # the line it duplicates


@dataclass
class CurateResult:
    path: Path
    format: str
    source_rows: list[dict]  # the readable rows, as read
    unreadable: int
    kept: list[dict] = field(default_factory=list)  # canonical examples with their ``line`` and ``index``
    dropped: list[Dropped] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """Input rows, readable or not."""
        return len(self.source_rows) + self.unreadable

    def counts(self) -> list[tuple[str, int]]:
        """(reason, count) for every reason that dropped something, in pipeline order."""
        found = Counter(d.reason for d in self.dropped)
        return [(r, found[r]) for r in REASONS if found[r]]


# -- text of an example ---------------------------------------------------------

def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def words(text: str) -> list[str]:
    return _WORD.findall(normalise(text))


def fields(ex: dict) -> list[str]:
    """Every text of a canonical example, in order (roles and labels left out)."""
    if "messages" in ex:
        return [m["content"] for m in ex["messages"]]
    if "chosen" in ex:
        return [m["content"] for m in ex["prompt"]] + [ex["chosen"], ex["rejected"]]
    return [ex["text"]] + ([ex["text_pair"]] if ex.get("text_pair") else [])


def full_text(ex: dict) -> str:
    return "\n".join(fields(ex))


def prompt_and_response(ex: dict) -> tuple[str | None, str]:
    """The last user turn (None for text and classification rows) and the response."""
    if "messages" in ex or "chosen" in ex:
        turns = ex["messages"][:-1] if "messages" in ex else ex["prompt"]
        users = [m["content"] for m in turns if m["role"] == "user"]
        return (users[-1] if users else None), (ex["messages"][-1]["content"] if "messages" in ex else ex["chosen"])
    return None, ex["text"]


# -- quality filters ----------------------------------------------------------------

def _repeated_share(items: list, weight: Callable[[object], int]) -> float:
    """Share (by ``weight``) of the items that repeat an earlier item."""
    seen, repeated = set(), 0
    for item in items:
        if item in seen:
            repeated += weight(item)
        seen.add(item)
    total = sum(weight(i) for i in items)
    return repeated / total if total else 0.0


def quality_problem(ex: dict, min_chars: int = 2, max_chars: int = 20_000) -> tuple[str, str] | None:
    """(reason, detail) of the first quality filter the example fails, or None."""
    prompt, response = prompt_and_response(ex)
    dense = "".join(response.split())
    if len(dense) < min_chars:
        return "too-short", f"{len(dense)} non-space character(s), fewer than {min_chars}"
    if len(response) > max_chars:
        return "too-long", f"{len(response)} characters, more than {max_chars}"
    bad = [c for c in response if c == "\ufffd" or (unicodedata.category(c) == "Cc" and c not in "\t\n\r")]
    if bad:
        return "junk", f"holds {len(bad)} replacement or control character(s) such as {bad[0]!r}"
    alnum = sum(c.isalnum() for c in dense)
    if alnum < 0.25 * len(dense):
        return "junk", f"only {alnum} of {len(dense)} non-space characters are letters or digits"
    char, n = Counter(dense).most_common(1)[0]
    if len(dense) >= 10 and n > len(dense) / 2:
        return "repeated-chars", f"{char!r} is {n} of {len(dense)} non-space characters"
    lines = [ln.strip() for ln in response.splitlines() if ln.strip()]
    share = _repeated_share(lines, len)
    if share > 0.3:
        return "repeated-lines", f"repeated lines hold {share:.0%} of the characters"
    tokens = words(response)
    grams = list(zip(tokens, tokens[1:], tokens[2:]))
    share = _repeated_share(grams, lambda _: 1)
    if len(tokens) >= 10 and share > 0.5:
        return "repeated-words", f"{share:.0%} of the word 3-grams repeat an earlier one"
    if prompt is not None and normalise(prompt) == normalise(response):
        return "same-as-prompt", "the response repeats the last user turn"
    return None


# -- decontamination --------------------------------------------------------------

def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [s for v in value for s in _strings(v)] if isinstance(value, list) else []


class EvalGrams:
    """The word n-grams of an evaluation file, every string of a row counting (any format)."""

    def __init__(self, path: Path, n: int = 13):
        self.path, self.n = path, n
        # length → hash of the gram → evaluation line; 64-bit hashes keep a large file small in memory
        self.grams: dict[int, dict[int, int]] = {}
        for line, row in read_rows(path):
            tokens = words("\n".join(_strings(row)))
            for g in _ngrams(tokens, n) if len(tokens) >= n else ([tuple(tokens)] if tokens else []):
                self.grams.setdefault(len(g), {}).setdefault(hash(g), line)

    def match(self, text: str) -> str | None:
        """Why ``text`` is contaminated (the first shared n-gram and its evaluation line), or None."""
        tokens = words(text)
        for size, grams in sorted(self.grams.items(), reverse=True):
            for g in _ngrams(tokens, size):
                if hash(g) in grams:
                    shown = " ".join(g) if len(g) <= 16 else " ".join(g[:16]) + " …"
                    return f"shares the {size} words {shown!r} with {self.path} line {grams[hash(g)]}"
        return None


# -- duplicates ---------------------------------------------------------------------

def exact_duplicates(texts: list[str]) -> dict[int, int]:
    """index → index of the first earlier text equal once normalised."""
    first: dict[str, int] = {}
    found = {}
    for i, text in enumerate(texts):
        key = normalise(text)
        if key in first:
            found[i] = first[key]
        else:
            first[key] = i
    return found


def shingles(text: str, n: int = 5) -> set[str]:
    """Word n-grams of the normalised text; a text of fewer words is one shingle."""
    tokens = words(text)
    return {" ".join(g) for g in _ngrams(tokens, n)} if len(tokens) >= n else ({" ".join(tokens)} if tokens else set())


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows): the most rows per band whose candidate probability at ``threshold`` stays ≥ 0.99."""
    best = (num_perm, 1)
    for r in range(1, num_perm + 1):
        b = num_perm // r
        if 1 - (1 - threshold ** r) ** b >= RECALL_AT_THRESHOLD:
            best = (b, r)
    return best


def minhashes(sets: list[set[str]], num_perm: int = 128) -> list:
    from datasketch import MinHash  # lazy: datasketch imports scipy (about a second); only near-dedup needs it

    return MinHash.bulk([[s.encode("utf-8") for s in sorted(x)] for x in sets], num_perm=num_perm)


def near_duplicates(texts: list[str], threshold: float = 0.8, n: int = 5,
                    num_perm: int = 128) -> dict[int, tuple[int, float]]:
    """index → (earlier kept index, Jaccard) for every text whose shingles have Jaccard ≥ ``threshold``
    with an earlier kept text; the most similar one is named, the earliest on a tie."""
    from datasketch import MinHashLSH  # lazy: datasketch imports scipy (about a second); only near-dedup needs it

    sets = [shingles(t, n) for t in texts]
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=lsh_bands(threshold, num_perm))
    found: dict[int, tuple[int, float]] = {}
    for i, (s, m) in enumerate(zip(sets, minhashes(sets, num_perm))):
        if not s:
            continue
        scored = [(jaccard(s, sets[j]), -j) for j in lsh.query(m)]
        best = max((x for x in scored if x[0] >= threshold), default=None)
        if best:
            found[i] = (-best[1], best[0])
        else:
            lsh.insert(i, m)
    return found


# -- the pipeline ------------------------------------------------------------------

def check_options(opts: CurateOptions) -> None:
    unknown = [d for d in opts.dedup if d not in DEDUP_KINDS]
    if unknown:
        raise LeantuneError(f"unknown --dedup kind {unknown[0]!r}; use exact, near, both (exact,near) or none.")
    if not 0 < opts.near_threshold <= 1:
        raise LeantuneError(f"--near-threshold {opts.near_threshold} must be above 0 and at most 1 (a Jaccard "
                            "similarity of word 5-gram shingles).")


def _drop(result: CurateResult, ex: dict, reason: str, detail: str, duplicate_of: dict | None = None) -> None:
    result.dropped.append(Dropped(ex["line"], reason, detail, ex["index"], duplicate_of and duplicate_of["line"]))


def curate(path: Path, fmt: str | None, opts: CurateOptions, embed: Callable | None = None) -> CurateResult:
    """Read ``path`` (any format ``load_examples`` reads) and split its rows into kept and dropped."""
    check_options(opts)
    path = Path(path)
    spec = FORMATS[load_examples(path, fmt, skip_invalid=True, limit=1).format]  # the format, or why not
    unreadable: list[Problem] = []
    rows = read_rows(path, unreadable)
    result = CurateResult(path, spec.name, [row for _, row in rows], len({p.line for p in unreadable}))
    for line in sorted({p.line for p in unreadable}):
        result.dropped.append(Dropped(line, "invalid", "; ".join(f"{p.field}: {p.message}" for p in unreadable
                                                                 if p.line == line)))
    problems, pool, valid = list(unreadable), [], 0
    evals = EvalGrams(Path(opts.eval_path), opts.ngram) if opts.eval_path else None
    for index, (line, row) in enumerate(rows):
        ex, errs = spec.normalize(row)
        if ex is None:
            problems += [Problem(str(path), line, f, m) for f, m in errs]
            result.dropped.append(Dropped(line, "invalid", "; ".join(f"{f}: {m}" for f, m in errs), index))
            continue
        ex, valid = {**ex, "line": line, "index": index}, valid + 1
        found = quality_problem(ex, opts.min_chars, opts.max_chars)
        why = evals.match(full_text(ex)) if evals and not found else None
        if found or why:
            _drop(result, ex, *(found or ("contaminated", why)))
        else:
            pool.append(ex)
    if not valid:
        raise DataValidationError(sorted(problems, key=lambda p: p.line), hint=f"No row of {path} is a valid "
                                  f"'{spec.name}' example; nothing to curate. Format '{spec.name}' expects: "
                                  f"{spec.fields}.")
    if "exact" in opts.dedup:
        dups = exact_duplicates(["\x1f".join(fields(ex)) for ex in pool])
        for i, j in dups.items():
            a, b = pool[i].get("label"), pool[j].get("label")
            _drop(result, pool[i], "exact-duplicate", f"same text as line {pool[j]['line']}"
                  + ("" if a == b else f" (labelled {a!r} here, {b!r} there)"), pool[j])
        pool = [ex for i, ex in enumerate(pool) if i not in dups]
    if "near" in opts.dedup:
        near = near_duplicates([full_text(ex) for ex in pool], opts.near_threshold, opts.shingle, opts.num_perm)
        for i, (j, sim) in near.items():
            _drop(result, pool[i], "near-duplicate", f"Jaccard {sim:.2f} of word {opts.shingle}-gram shingles "
                  f"with line {pool[j]['line']}", pool[j])
        pool = [ex for i, ex in enumerate(pool) if i not in near]
    if opts.max_examples is not None and len(pool) > opts.max_examples:
        if embed is None:
            raise LeantuneError("selecting a diverse subset needs an embedding function")
        labels = [ex.get("label") for ex in pool]
        rest = select_diverse(embed([full_text(ex) for ex in pool]), labels, opts.max_examples)
        for i, (near, dist) in rest.items():
            share = "" if labels[i] is None else f"label {labels[i]!r}: "
            _drop(result, pool[i], "not-selected", f"{share}its proportional share of {opts.max_examples} is 0"
                  if near is None else f"{share}line {pool[near]['line']} is selected, at embedding distance "
                  f"{dist:.3f}")
        pool = [ex for i, ex in enumerate(pool) if i not in rest]
    result.kept = pool
    result.dropped.sort(key=lambda d: (d.line, -1 if d.index is None else d.index))
    return result


# -- output ------------------------------------------------------------------------

def dropped_path(out: Path) -> Path:
    """Where the dropped rows go: ``curated.jsonl`` → ``curated.dropped.jsonl``."""
    return out.with_name(f"{out.stem}.dropped.jsonl")


def check_outputs(source: Path, out: Path, force: bool, also_read: tuple[Path, ...] = ()) -> Path:
    """Refuse outputs that must not be written (before any work); returns the dropped-rows path."""
    source, out = Path(source), Path(out)
    if out.suffix.lower() != source.suffix.lower():
        raise LeantuneError(f"{out}: the curated file keeps the format of {source}; give it the same extension "
                            f"({source.suffix or 'none'}).")
    side = dropped_path(out)
    for target in (out, side):
        check_output(target, force=force, sources=(source, *also_read), what="curated data file")
    return side


def write_curated(result: CurateResult, out: Path, force: bool = False) -> Path:
    """Write the kept rows as they were (the original line of a .jsonl file) to ``out`` and every
    dropped one, with its reason, to :func:`dropped_path`; both appear together, atomically."""
    out, source, rows = Path(out), result.path, result.source_rows
    suffix = source.suffix.lower()
    kept = [ex["index"] for ex in result.kept]
    raw = source.read_bytes().decode("utf-8-sig").split("\n") if suffix == ".jsonl" else []
    with atomic_file(out, force=force, what="curated data file") as tmp, \
            atomic_file(dropped_path(out), force=force, what="dropped rows file") as tmp_dropped:
        if suffix == ".jsonl":
            tmp.write_text("".join(raw[ex["line"] - 1].rstrip("\r") + "\n" for ex in result.kept), encoding="utf-8")
        elif suffix == ".json":
            tmp.write_text(json.dumps([rows[i] for i in kept], ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        elif suffix == ".csv":
            header = next(csv.reader(io.StringIO(source.read_bytes().decode("utf-8-sig"), newline="")))
            with tmp.open("w", encoding="utf-8", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=header, restval="")
                writer.writeheader()
                writer.writerows(rows[i] for i in kept)
        else:
            import pyarrow.parquet as pq  # lazy: only .parquet files need it

            pq.write_table(pq.read_table(source).take([ex["line"] - 1 for ex in result.kept]), tmp)
        with tmp_dropped.open("w", encoding="utf-8") as fh:
            for d in result.dropped:
                record = {"line": d.line, "reason": d.reason, "detail": d.detail}
                if d.duplicate_of is not None:
                    record["duplicate_of"] = d.duplicate_of
                if d.index is not None:
                    record["row"] = rows[d.index]
                elif raw and d.line <= len(raw):
                    record["raw"] = raw[d.line - 1].rstrip("\r")
                fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    return dropped_path(out)
