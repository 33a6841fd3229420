"""What ``leantune advise DATA`` reads from the data file: its format, how many examples,
labels and examples per label, token lengths with the model's tokenizer, and (cheaply) whether
the text looks English."""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..data.formats import load_examples
from ..data.inspect import DataReport, inspect_data
from ..models.loading import load_tokenizer, resolve_model_path
from .situation import KIND_TASK, Situation

ENGLISH = frozenset("the of and to a in is that for it on with as was are be this by not or have from".split())


def guess_language(texts: list[str]) -> str | None:
    """'English' when common English function words make up ≥ 8 % of the words, 'not English'
    when the words are mostly letters yet they do not; None with too little text to tell."""
    words = [w for t in texts[:200] for w in re.findall(r"[^\W\d_]+", t.lower())][:20000]
    if len(words) < 50:
        return None
    share = sum(w in ENGLISH for w in words) / len(words)
    return "English" if share >= 0.08 else "not English"


def _texts(report_examples: list[dict], kind: str) -> list[str]:
    if kind in ("classification", "text"):
        return [ex["text"] for ex in report_examples]
    if kind == "chat":
        return [" ".join(m["content"] for m in ex["messages"]) for ex in report_examples]
    return [" ".join(m["content"] for m in ex.get("prompt", [])) + " " + ex.get("chosen", "")
            for ex in report_examples]


@dataclass
class DataFacts:
    report: DataReport
    language: str | None

    def lines(self) -> list[str]:
        """The facts in short sentences (each wraps on its own)."""
        r = self.report
        kind = "" if r.kind == r.format else f" ({r.kind})"
        out = [f"{r.path}: {r.format}{kind}, {r.valid_rows:,} valid of {r.total_rows:,} rows"
               + (f", {r.duplicates} exact duplicates" if r.duplicates else "")]
        if r.label_counts:
            counts = sorted(r.label_counts.values())
            per = (f"{counts[0]:,}" if counts[0] == counts[-1] else
                   f"{counts[0]:,}–{counts[-1]:,} (median {statistics.median(counts):g})")
            out.append(f"{len(counts)} labels, {per} examples per label")
        if r.token_lengths:
            t = r.token_lengths
            out.append(f"tokens per example: median {t.median:g}, p95 {t.p95:g}, max {t.max:g}")
        if self.language:
            out.append(f"language: {self.language} (a guess from common words)")
        return out


def read_data(path: str | Path, fmt: str | None = None, model: str | None = None) -> DataFacts:
    """Inspect ``path`` (format detected when None); token lengths with ``model``'s tokenizer
    when it loads, else none."""
    tokenizer = None
    if model:
        try:
            tokenizer = load_tokenizer(resolve_model_path(model))
        except Exception:  # an unknown or unloadable model: the facts without token lengths
            tokenizer = None
    report = inspect_data(path, fmt, tokenizer)
    from_file = _load_texts(path, report)
    return DataFacts(report, guess_language(from_file))


def _load_texts(path, report: DataReport) -> list[str]:
    return _texts(load_examples(path, report.format, skip_invalid=True, limit=200).examples, report.kind)


def situation_from_data(facts: DataFacts, base: Situation) -> Situation:
    """``base`` (the command's options) with what the data says: it wins over ``-n``/``--task``
    where it knows better (a chat file is generation, not classification)."""
    r = facts.report
    s = Situation(**{**base.__dict__, "notes": list(base.notes)})
    s.data_kind = r.kind
    if r.kind == "classification":
        s.task = "classification"
    elif base.task == "classification":
        s.task = KIND_TASK[r.kind]
    s.labelled = 0 if r.kind == "text" else r.valid_rows
    s.unlabelled = base.unlabelled or r.kind == "text"
    if r.label_counts:
        counts = list(r.label_counts.values())
        s.num_labels, s.per_class_min = len(counts), min(counts)
        s.per_class_median = statistics.median(counts)
    if r.token_lengths:
        s.tokens_median, s.tokens_p95 = r.token_lengths.median, r.token_lengths.p95
    s.language = facts.language
    if facts.language == "not English" and not base.low_resource:
        s.notes.append("the text does not look English: if it is a low-resource language, add --low-resource")
    return s
