"""`leantune data synth`: the self-instruct loop (Wang et al. 2022, arXiv:2212.10560; Alpaca's form).

Each round samples a few seed tasks and a generated one into a prompt (:mod:`leantune.data.selfinstruct`),
asks the teacher (:mod:`.teachers`) to continue the list, parses the answer into tasks and keeps
those that pass the filters, the ROUGE-L < 0.7 test against every instruction kept so far (seeds
included) last. Kept tasks are appended to the output file one line at a time, flushed, so that an
interrupted run loses at most the round in progress.

Resuming: an existing output is read back (its instructions join the ROUGE-L pool, its rows
count towards ``n``) and only appended to; its bytes are never rewritten. The report of the
run (kept, dropped per reason, a few examples of each) is written to ``OUT.report.json``.
"""
from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..atomic import atomic_write_text
from ..data.selfinstruct import (
    KEYWORDS,
    OUT_FORMATS,
    ROUGE_THRESHOLD,
    RougePool,
    Task,
    build_prompt,
    check_task,
    load_tasks,
    parse_tasks,
    sample_prompt_tasks,
    task_row,
)
from ..errors import LeantuneError
from .teachers import Teacher

EXAMPLES_PER_REASON = 3


@dataclass
class SynthReport:
    out: str
    teacher: str
    target: int
    resumed_from: int = 0          # rows the output file held before this run
    kept: int = 0                  # rows this run appended
    prompts: int = 0               # teacher calls
    parsed: int = 0                # blocks read from the teacher's answers
    seconds: float = 0.0
    dropped: Counter = field(default_factory=Counter)
    kept_examples: list[dict] = field(default_factory=list)
    dropped_examples: dict[str, list] = field(default_factory=dict)
    rouge_threshold: float = ROUGE_THRESHOLD
    keywords: tuple[str, ...] = KEYWORDS

    @property
    def total(self) -> int:
        return self.resumed_from + self.kept

    def drop(self, reason: str, example: dict) -> None:
        self.dropped[reason] += 1
        shown = self.dropped_examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(example)

    def to_json(self) -> str:
        data = asdict(self)
        data["dropped"] = dict(self.dropped.most_common())
        data["total"] = self.total
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def report_path(out: Path) -> Path:
    return out.with_name(out.name + ".report.json")


def _existing(out: Path, fmt: str) -> list[Task]:
    """The tasks already in ``out`` (none if it is missing or empty); a last line without its
    newline is a write cut short, which only the user may repair."""
    if not out.exists() or out.stat().st_size == 0:
        return []
    if out.is_dir():
        raise LeantuneError(f"{out}: is a folder; give a .jsonl file for --out")
    with out.open("rb") as fh:
        fh.seek(-1, 2)
        if fh.read(1) != b"\n":
            lines = out.read_bytes().count(b"\n") + 1
            raise LeantuneError(f"{out}:{lines}: the last line has no newline (a write cut short?); remove or "
                                f"complete it, then run again to continue")
    return load_tasks(out, fmt)


def synthesize(seeds: Path, teacher: Teacher, n: int, out: Path, *, fmt: str = "alpaca", seed: int = 0,
               max_new_tokens: int = 512, temperature: float = 0.7, max_prompts: int | None = None,
               keywords: tuple[str, ...] = KEYWORDS, progress: bool = True) -> SynthReport:
    """Append kept tasks to ``out`` until it holds ``n`` rows or ``max_prompts`` (default ``10 n``)
    teacher calls are spent; returns the report (also written to ``OUT.report.json``)."""
    if fmt not in OUT_FORMATS:
        raise LeantuneError(f"--format {fmt!r}: one of {', '.join(OUT_FORMATS)}")
    out = Path(out)
    seed_tasks = load_tasks(seeds)
    if not seed_tasks:
        raise LeantuneError(f"{seeds}: no seed task; self-instruct starts from at least one")
    generated = _existing(out, fmt)
    pool = RougePool([t.instruction for t in seed_tasks + generated])
    report = SynthReport(str(out), teacher.name, n, resumed_from=len(generated), keywords=tuple(keywords))
    budget = max_prompts if max_prompts is not None else 10 * n
    rng = random.Random(f"{seed}:{len(generated)}")  # a resumed run does not replay the first run's prompts
    start = time.monotonic()
    columns = (TextColumn("[bold]synth"), BarColumn(), MofNCompleteColumn(),
               TextColumn("prompts {task.fields[prompts]}  dropped {task.fields[dropped]}"), TimeElapsedColumn())
    out.parent.mkdir(parents=True, exist_ok=True)
    bar = Progress(*columns, console=Console(stderr=True), disable=not progress)
    with bar, out.open("a", encoding="utf-8") as fh:
        task_id = bar.add_task("synth", total=n, completed=min(report.total, n), prompts=0, dropped=0)
        while report.total < n and report.prompts < budget:
            shown = sample_prompt_tasks(seed_tasks, generated, rng)
            text = teacher.complete(build_prompt(shown), max_new_tokens=max_new_tokens, temperature=temperature,
                                    seed=rng.randrange(2**31))
            report.prompts += 1
            for item in parse_tasks(text, len(shown) + 1):
                report.parsed += 1
                reason = item.reason or check_task(item.task, pool, keywords=keywords)
                if reason:
                    report.drop(reason, asdict(item.task) if item.task else {"text": item.raw[:300]})
                    continue
                if report.total >= n:
                    report.drop("over the target", asdict(item.task))
                    continue
                fh.write(task_row(item.task, fmt))
                fh.flush()
                pool.add(item.task.instruction)
                generated.append(item.task)
                report.kept += 1
                if len(report.kept_examples) < EXAMPLES_PER_REASON:
                    report.kept_examples.append(asdict(item.task))
            bar.update(task_id, completed=min(report.total, n), prompts=report.prompts,
                       dropped=sum(report.dropped.values()))
    report.seconds = round(time.monotonic() - start, 1)
    atomic_write_text(report_path(out), report.to_json())
    return report
