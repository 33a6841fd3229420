"""The ``leantune data check`` report: validity, duplicates, shape and token lengths of a data file."""
from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from leantune.data.formats import get_format, load_examples
from leantune.data.readers import field_name
from leantune.errors import Problem


@dataclass(frozen=True)
class Stats:
    """Summary of a list of numbers."""

    min: float
    mean: float
    median: float
    p95: float
    max: float

    @classmethod
    def of(cls, values: list[int]) -> Stats | None:
        """Stats of ``values`` (p95 by nearest rank); None when empty."""
        if not values:
            return None
        ordered = sorted(values)
        p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
        return cls(ordered[0], statistics.fmean(ordered), statistics.median(ordered), p95, ordered[-1])

    def __str__(self) -> str:
        return (f"min {self.min:g} / mean {self.mean:.1f} / median {self.median:g} / "
                f"p95 {self.p95:g} / max {self.max:g}")


@dataclass
class DataReport:
    """What ``inspect_data`` found in one file."""

    path: str
    format: str
    kind: str
    total_rows: int
    valid_rows: int
    problems: list[Problem]
    duplicates: int
    turns: Stats | None = None
    label_counts: dict[str | int, int] | None = None
    token_lengths: Stats | None = None
    token_counts: list[int] | None = None  # per valid example, for a histogram
    notes: list[str] = field(default_factory=list)

    def table_rows(self) -> list[tuple[str, str]]:
        """The report as (key, value) rows."""
        rows = [
            ("file", self.path),
            ("format", f"{self.format} ({self.kind})"),
            ("rows", str(self.total_rows)),
            ("valid", str(self.valid_rows)),
            ("invalid", str(self.total_rows - self.valid_rows)),
            ("exact duplicates", str(self.duplicates)),
        ]
        if self.turns:
            rows.append(("turns per example", str(self.turns)))
        if self.label_counts is not None:
            counts = sorted(self.label_counts.items(), key=lambda kv: -kv[1])
            labels = ", ".join(f"{field_name(str(k))}: {v}" for k, v in counts)
            rows.append((f"labels ({len(self.label_counts)})", labels))
        if self.token_lengths:
            rows.append(("tokens per example", str(self.token_lengths)))
        return rows

    def problem_lines(self, limit: int | None = 50) -> list[str]:
        """Problems as ``file:line: field: problem`` lines, at most ``limit`` plus a count of the rest."""
        shown = self.problems if limit is None else self.problems[:limit]
        lines = [str(p) for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"... and {len(self.problems) - len(shown)} more")
        return lines

    def render(self, limit: int | None = 50) -> list[str]:
        """Plain text lines: the table, then notes and problems."""
        width = max(len(k) for k, _ in self.table_rows())
        lines = [f"{k.ljust(width)}  {v}" for k, v in self.table_rows()]
        lines += [f"note: {n}" for n in self.notes]
        if self.problems:
            lines += ["", f"{len(self.problems)} problem(s):", *self.problem_lines(limit)]
        return lines


def inspect_data(path: str | Path, fmt: str | None, tokenizer=None) -> DataReport:
    """Load ``path`` leniently as ``fmt`` (detected when None) and summarise it.

    Token lengths are computed only when a Hugging Face ``tokenizer`` is given.
    """
    loaded = load_examples(path, fmt, skip_invalid=True)
    spec = get_format(loaded.format)
    examples = loaded.examples
    seen: set[str] = set()
    duplicates = 0
    for ex in examples:
        key = json.dumps({k: v for k, v in ex.items() if k != "line"}, sort_keys=True)
        duplicates += key in seen
        seen.add(key)
    report = DataReport(loaded.path, spec.name, spec.kind, loaded.rows, len(examples),
                        loaded.problems, duplicates)
    if spec.kind == "chat":
        report.turns = Stats.of([sum(m["role"] != "system" for m in ex["messages"]) for ex in examples])
    elif spec.kind == "classification":
        report.label_counts = dict(Counter(ex["label"] for ex in examples))
    if tokenizer is not None and examples:
        if spec.kind in ("chat", "preference") and not getattr(tokenizer, "chat_template", None):
            report.notes.append(
                "the tokenizer has no chat template; token lengths use the joined message contents")
        report.token_counts = [_token_count(tokenizer, ex, spec.kind, report.notes) for ex in examples]
        report.token_lengths = Stats.of(report.token_counts)
    return report


def _token_count(tokenizer, example: dict, kind: str, notes: list[str]) -> int:
    """Tokens of one example: chat through the chat template when there is one."""
    if kind == "classification":
        return len(tokenizer(example["text"], example["text_pair"])["input_ids"])
    if kind == "text":
        return len(tokenizer(example["text"])["input_ids"])
    if kind == "preference":  # the prompt with the longer of the two replies
        example = {"messages": example["prompt"] + [
            {"role": "assistant", "content": max(example["chosen"], example["rejected"], key=len)}]}
    if getattr(tokenizer, "chat_template", None):
        try:
            ids = tokenizer.apply_chat_template(example["messages"], tokenize=True)
        except Exception as exc:  # templates raise arbitrary errors (e.g. "system role not supported")
            note = f"chat template failed ({exc}); those lengths use the joined message contents"
            if note not in notes:
                notes.append(note)
        else:
            return len(ids["input_ids"] if isinstance(ids, Mapping) else ids)
    return len(tokenizer("\n".join(m["content"] for m in example["messages"]))["input_ids"])
