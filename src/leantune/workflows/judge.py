"""`leantune judge`: which of two runs answers better, as a judge model sees it (MT-Bench's pairwise
judging, Zheng et al. 2023, arXiv:2306.05685; the prompt, the verdicts and the statistics are in
:mod:`leantune.evaluation.pairwise`).

Each run answers the prompts of a data file greedily (each conversation up to its last reply); the
answers are kept in ``answers_a.jsonl`` / ``answers_b.jsonl`` (a run judged against itself, to
see what the judge does with equal answers, answers once). The judge (:mod:`.teachers`: a model
leantune loads, or an OpenAI-compatible endpoint) sees every question twice, each run's answer first
once, at temperature 0; its replies go to ``judgments.jsonl``, one line a question, appended and
flushed as soon as both orders are read, so that an interrupted judge loses at most one question.

A small local judge often writes no readable verdict; with ``forced_choice`` such a reply is
followed by ``Final verdict: [[`` and the likeliest of ``A]]``, ``B]]``, ``C]]`` is taken (marked
``forced`` in ``judgments.jsonl`` and counted in the summary): a verdict from the judge's
probabilities where its text gives none.

Resuming: ``judge.json`` records what the folder compares (runs, data, judge, settings); a second
call with the same ones answers and judges only what is missing, a call with others is refused.
"""
from __future__ import annotations

import gc
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..atomic import atomic_write_text
from ..data.formats import load_examples
from ..data.templates import render, resolve_template
from ..errors import LeantuneError
from ..evaluation.generate import generate_conversations
from ..evaluation.generation_eval import conversation_items
from ..evaluation.pairwise import PROMPT_VERSION, compare, judge_prompt, parse_verdict, question_text, reason_text
from ..export.run_loading import load_run
from ..prompting.documentation import documentation_of_run
from ..run_dir import RUN_META, read_run_files
from ..training.device import move_to_device, resolve_device
from .teachers import LocalTeacher, Teacher, make_teacher

SETTINGS = "judge.json"
JUDGMENTS = "judgments.jsonl"
INFORMATIVE = {"data"}  # recorded, not compared: the data file may move, its content (sha256) may not
CHARS_PER_TOKEN = 4  # the usual rough rate for English text where the judge's tokenizer is not at hand
FORCED_SUFFIX = "\n\nFinal verdict: [["
FORCED_OPTIONS = ("A]]", "B]]", "C]]")


@dataclass(frozen=True)
class Question:
    line: int
    messages: list[dict]
    reference: str


@dataclass(frozen=True)
class Estimate:
    calls: int
    prompt_tokens: int
    max_reply_tokens: int
    exact: bool          # tokens counted with the judge's tokenizer (else characters / 4)
    local: bool          # the judge runs in this process (costs time, not money)


@dataclass
class JudgeResult:
    out: Path
    summary: dict
    judged_now: int
    seconds: float


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_questions(data: Path, fmt: str | None, limit: int | None) -> list[Question]:
    """The first ``limit`` conversations of ``data``: prompt messages, reference reply, line."""
    items = conversation_items(load_examples(data, fmt).examples)
    if not items:
        raise LeantuneError(f"{data}: no conversation ending in a reply (chat or preference data) to judge")
    return [Question(i.example["line"], i.prompt, i.reference) for i in items[:limit]]


def read_lines(path: Path) -> list[dict]:
    """The JSON lines of a file this command appends to; a last line without its newline is a
    write cut short, which the user removes (nothing here rewrites the file)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        raise LeantuneError(f"{path}:{text.count(chr(10)) + 1}: the last line has no newline (a write cut short?); "
                            f"remove it, then run again to continue")
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise LeantuneError(f"{path}: not the JSON lines leantune writes ({exc}); use a new --out") from None


def _append(path: Path, rows: list[dict]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()


def identity(run_a: Path, run_b: Path, data: Path, fmt: str | None, judge: str, judge_model: str | None,
             reference: bool, max_new_tokens: int, judge_max_tokens: int, forced_choice: bool = False) -> dict:
    """What a judge folder compares; a resumed call must name the same."""
    def run(path: Path) -> dict:
        read_run_files(path)  # a finished run, or one paragraph saying what it lacks
        return {"dir": str(path.resolve()), "run_json_sha256": _sha256(path / RUN_META)}
    return {"run_a": run(run_a), "run_b": run(run_b), "data": str(data.resolve()), "data_sha256": _sha256(data),
            "format": fmt, "judge": judge, "judge_model": judge_model, "reference": reference,
            "answer_max_new_tokens": max_new_tokens, "judge_max_tokens": judge_max_tokens,
            "prompt": PROMPT_VERSION, "temperature": 0.0, **({"forced_choice": True} if forced_choice else {})}


def open_folder(out: Path, settings: dict) -> bool:
    """Start or continue the judge folder ``out``; True when continuing. Refuses a folder that
    compares something else, or that this command did not write."""
    file = out / SETTINGS
    if file.is_file():
        try:
            saved = json.loads(file.read_text(encoding="utf-8"))
        except ValueError:
            raise LeantuneError(f"{file}: damaged (not JSON); use a new --out") from None
        keys = [*settings, *(k for k in saved if k not in settings)]
        changed = [k for k in keys if k not in INFORMATIVE and saved.get(k) != settings.get(k)]
        if changed:
            shown = "; ".join(f"{k}: was {json.dumps(saved.get(k))}, now {json.dumps(settings.get(k))}"
                              for k in changed)
            raise LeantuneError(f"{out}: this folder judges another comparison ({shown}); its judgments would be "
                                f"mixed with the new ones. Use a new --out, or repeat the first call's arguments "
                                f"to continue it")
        return True
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LeantuneError(f"{out}: exists and is not a judge folder (no {SETTINGS}); choose a new --out")
    atomic_write_text(file, json.dumps(settings, indent=2) + "\n")
    return False


def run_answers(run_dir: Path, questions: list[Question], cache: Path, max_new_tokens: int, batch_size: int,
                say: Callable[[str], None]) -> dict[int, str]:
    """The run's greedy answer to each question, read from ``cache`` or generated and appended to it;
    a run trained with ``data.retrieval`` gets each question with its documentation passages."""
    known = {row["line"]: row["answer"] for row in read_lines(cache)}
    missing = [q for q in questions if q.line not in known]
    if missing:
        say(f"{run_dir.name}: answering {len(missing)} prompt(s)")
        loaded = load_run(run_dir)
        if loaded.head != "causal_lm":
            raise LeantuneError(f"{run_dir}: a {loaded.head} run writes no answers; judging compares generative runs")
        model = move_to_device(loaded.model, resolve_device("auto"))
        recipe = loaded.recipe
        docs = documentation_of_run(run_dir, recipe)  # data.retrieval: asked as it was trained, with its passages
        asked = [docs.for_prompt(q.messages, loaded.tokenizer, recipe.data.template, recipe.train.max_length,
                                 max_new_tokens) if docs else q.messages for q in missing]
        answers = generate_conversations(model, loaded.tokenizer, asked, recipe.data.template, max_new_tokens,
                                         batch_size, max_prompt_tokens=max(1, recipe.train.max_length - max_new_tokens))
        _append(cache, [{"line": q.line, "prompt": q.messages, "answer": a} for q, a in zip(missing, answers)])
        known.update({q.line: a for q, a in zip(missing, answers)})
        del loaded, model
        gc.collect()
    return {q.line: known[q.line] for q in questions}


def _judge_text(teacher: Teacher, prompt: str) -> str:
    """What the judge is given: a local model gets the request in its chat template (as an endpoint
    puts the user message into its own), the text itself otherwise."""
    if isinstance(teacher, LocalTeacher):
        tok = teacher.tokenizer
        return render(tok, [{"role": "user", "content": prompt}], resolve_template(tok), add_generation_prompt=True)
    return prompt


def estimate(teacher: Teacher, texts: list[str], max_reply_tokens: int) -> Estimate:
    local = isinstance(teacher, LocalTeacher)
    tokens = (sum(len(teacher.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts) if local
              else sum(len(t) for t in texts) // CHARS_PER_TOKEN)
    return Estimate(len(texts), tokens, max_reply_tokens * len(texts), local, local)


def _both_orders(teacher: Teacher, question: Question, a: str, b: str, reference: bool) -> list[str]:
    """The judge's two inputs for ``question``: A's answer shown first, then B's."""
    ref = question.reference if reference else None
    text = question_text(question.messages)
    return [_judge_text(teacher, judge_prompt(text, a, b, ref)), _judge_text(teacher, judge_prompt(text, b, a, ref))]


def _ask(teacher: Teacher, text: str, a_first: bool, max_tokens: int, forced_choice: bool) -> dict:
    reply = teacher.complete(text, max_new_tokens=max_tokens, temperature=0.0, seed=0)
    row = {"first": "A" if a_first else "B", "reply": reply, "verdict": parse_verdict(reply),
           "reason": reason_text(reply)}
    if row["verdict"] is None and forced_choice:
        row["verdict"] = "ABC"[teacher.choose(text + reply + FORCED_SUFFIX, list(FORCED_OPTIONS))]
        row["forced"] = True
    return row


def judge_runs(run_a: Path, run_b: Path, data: Path, judge: str, out: Path, *, fmt: str | None = None,
               limit: int | None = None, judge_model: str | None = None, api_key_env: str | None = None,
               reference: bool = False, max_new_tokens: int = 128, judge_max_tokens: int = 256,
               batch_size: int = 16, forced_choice: bool = False, confirm: Callable[[Estimate], None] = lambda e: None,
               say: Callable[[str], None] = lambda m: None, progress: bool = True) -> JudgeResult:
    """Judge run A against run B on the first ``limit`` prompts of ``data``; writes ``out``.
    ``confirm`` sees the cost before the first judge call (and may raise to stop); ``forced_choice``
    (local judges) reads a verdict from the judge's probabilities where its reply has none."""
    run_a, run_b, data, out = Path(run_a), Path(run_b), Path(data), Path(out)
    if forced_choice and judge.startswith(("http://", "https://")):
        raise LeantuneError(f"--forced-choice reads the verdict from the judge's token probabilities, which only a "
                            f"local judge gives; {judge} is an endpoint")
    start = time.monotonic()
    questions = load_questions(data, fmt, limit)
    settings = identity(run_a, run_b, data, fmt, judge, judge_model, reference, max_new_tokens, judge_max_tokens,
                        forced_choice)
    if open_folder(out, settings):
        say(f"continuing {out}")
    answers = {"A": run_answers(run_a, questions, out / "answers_a.jsonl", max_new_tokens, batch_size, say)}
    if run_b.resolve() == run_a.resolve():  # a run against itself (a judge's calibration): greedy, the same answers
        answers["B"] = answers["A"]
    else:
        answers["B"] = run_answers(run_b, questions, out / "answers_b.jsonl", max_new_tokens, batch_size, say)
    done = {row["line"] for row in read_lines(out / JUDGMENTS)}
    pending = [q for q in questions if q.line not in done]
    if pending:
        teacher = make_teacher(judge, model_name=judge_model, api_key_env=api_key_env)
        texts = {q.line: _both_orders(teacher, q, answers["A"][q.line], answers["B"][q.line], reference)
                 for q in pending}
        confirm(estimate(teacher, [t for pair in texts.values() for t in pair], judge_max_tokens))
        columns = (TextColumn("[bold]judge"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
            task = bar.add_task("judge", total=len(pending))
            for i, q in enumerate(pending):
                tick = time.monotonic()
                a, b = answers["A"][q.line], answers["B"][q.line]
                orders = [_ask(teacher, texts[q.line][0], True, judge_max_tokens, forced_choice),
                          _ask(teacher, texts[q.line][1], False, judge_max_tokens, forced_choice)]
                _append(out / JUDGMENTS, [{"line": q.line, "question": question_text(q.messages), "answer_a": a,
                                           "answer_b": b, "judge": teacher.name, "orders": orders}])
                bar.advance(task)
                if i == 0 and len(pending) > 1:
                    say(f"first question judged in {time.monotonic() - tick:.1f} s: about "
                        f"{(time.monotonic() - tick) * (len(pending) - 1):.0f} s for the other {len(pending) - 1}")
    summary = write_summary(out, questions, settings)
    return JudgeResult(out, summary, len(pending), time.monotonic() - start)


def write_summary(out: Path, questions: list[Question], settings: dict) -> dict:
    """``summary.json`` and ``summary.md`` over the judged questions among ``questions``."""
    rows = {row["line"]: row for row in read_lines(out / JUDGMENTS)}
    judged = [rows[q.line] for q in questions if q.line in rows]
    result = compare([(r["orders"][0]["verdict"], r["orders"][1]["verdict"]) for r in judged])
    names = {"A": Path(settings["run_a"]["dir"]).name, "B": Path(settings["run_b"]["dir"]).name}
    summary = {"run_a": settings["run_a"]["dir"], "run_b": settings["run_b"]["dir"], "data": settings["data"],
               "judge": settings["judge"], "judge_model": settings["judge_model"],
               "judge_name": judged[0]["judge"] if judged else None, "prompts": len(questions),
               "rule": "a run wins a question only if the judge prefers it in both orders; otherwise a tie "
                       "(MT-Bench); a question with an unreadable verdict in either order is counted apart",
               **result.as_dict(),
               "forced_verdicts": sum(bool(o.get("forced")) for r in judged for o in r["orders"]),
               "unparseable_lines": [r["line"] for r in judged
                                     if any(o["verdict"] is None for o in r["orders"])]}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "summary.md", summary_markdown(summary, names))
    return summary


def _percent(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def summary_markdown(s: dict, names: dict[str, str]) -> str:
    interval = s["interval_95"]
    ci = f" (95% interval {_percent(interval[0])}–{_percent(interval[1])})" if interval else ""
    lines = [f"# {names['A']} (A) vs {names['B']} (B)", "",
             f"Judge: {s['judge_name'] or s['judge']}; {s['questions']} of {s['prompts']} prompt(s) judged, "
             f"each in both orders.", "",
             "| A wins | B wins | ties | unparseable |", "|---|---|---|---|",
             f"| {s['wins_a']} | {s['wins_b']} | {s['ties']} | {s['unparseable']} |", "",
             f"Win rate of A over B (ties count half, unparseable left out): {_percent(s['win_rate_a'])}{ci}; "
             f"{s['interval_method']}.", "",
             f"Position bias: of {s['first_shown_wins'] + s['second_shown_wins']} decisive replies, "
             f"{_percent(s['first_shown_share'])} prefer the answer shown first (50% is none; binomial "
             f"p = {'n/a' if s['position_bias_p'] is None else format(s['position_bias_p'], '.3g')}); "
             f"{s['consistent_questions']} question(s) got the same verdict in both orders.", "",
             f"Rule: {s['rule']}."]
    if s.get("forced_verdicts"):
        lines += ["", f"{s['forced_verdicts']} of {2 * s['questions']} verdict(s) were not in the judge's reply and "
                      f"were read from its probabilities (the likeliest of [[A]], [[B]], [[C]] after the reply; "
                      f"--forced-choice)."]
    if s["unparseable"]:
        lines += ["", f"Unparseable verdicts at data lines: {', '.join(map(str, s['unparseable_lines']))} "
                      f"(raw replies in judgments.jsonl)."]
    return "\n".join(lines) + "\n"
