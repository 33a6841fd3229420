"""`leantune demo`: LoRA on SmolLM2-135M-Instruct with the built-in shell-help data, judged by
whether the model now answers with the right command.

Steps (each announced by one line through ``say``, so ``make demo | tee log`` reads well):

1. load the demo recipe (``resources/demo/demo.yaml``), the held-out questions (the run's own
   eval split, whose tasks never occur in training) and the base model;
2. answer ``questions`` held-out questions with the base model and score the commands
   (``evaluation/command_match.py``: exact and equivalent match with the reference);
3. train with :func:`leantune.pipeline.train` (eval loss/perplexity before and after);
4. reload the trained run and answer and score the same questions again.

Generated commands are only compared as text; nothing is ever executed. The ``demo:``
section of ``demo.yaml`` (not part of the recipe) sets the number of questions scored, how
many are shown, the seed that draws them, and the generation budget; override it like the
recipe, e.g. ``leantune demo demo.questions=8 train.max_steps=4``.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Callable

import torch
import yaml
from rich.markup import escape
from rich.table import Table

from ..atomic import atomic_write_text
from ..data.loading import load_data
from ..errors import RecipeError
from ..evaluation.command_match import EQUIVALENT, EXACT, PROGRAM, accuracy, extract_command, match_command
from ..evaluation.generate import generate_batched
from ..export.run_loading import load_run
from ..methods.registry import build_method
from ..models.loading import load_model, load_tokenizer, resolve_model_path
from ..pipeline import train
from ..recipe import Recipe, load_recipe, parse_override
from ..stages.registry import build_stage

DEMO_RECIPE = Path(str(resources.files("leantune") / "resources" / "demo" / "demo.yaml"))
COMMAND_ACCURACY_FILE = "command_accuracy.json"  # written into the run directory


@dataclass
class DemoSettings:
    questions: int = 40        # held-out questions scored before and after training
    shown: int = 3             # of those, how many are printed with their answers
    seed: int = 0              # draws the scored (and shown) questions from the eval split
    max_new_tokens: int = 64   # per answer; the command comes first in the trained style
    batch_size: int = 20       # questions generated together (left padding, KV cache)


@dataclass
class Scored:
    question: str
    reference: str             # the reference command
    answer: str                # the model's whole answer
    command: str | None        # the command extracted from it
    match: str | None          # "exact", "equivalent", "program" (right program only) or None


@dataclass
class CommandScore:
    items: list[Scored]
    seconds: float

    @property
    def rates(self) -> dict[str, float]:
        """``{"exact": …, "equivalent": …, "program": …}``, fractions of the questions."""
        return accuracy([s.match for s in self.items])

    def count(self, level: str) -> int:
        return round(self.rates[level] * len(self.items))


@dataclass
class DemoResult:
    summary: object            # pipeline.RunSummary
    settings: DemoSettings
    before: CommandScore
    after: CommandScore
    machine: str
    seconds: dict[str, float] = field(default_factory=dict)


def load_demo_recipe(overrides: list[str] = (), path: Path = DEMO_RECIPE) -> tuple[Recipe, DemoSettings]:
    """The demo recipe with ``overrides``; ``demo.*`` overrides go to :class:`DemoSettings`."""
    raw = yaml.safe_load(path.read_text())
    settings = DemoSettings(**(raw.pop("demo", None) or {}))
    rest = []
    names = {f.name for f in fields(DemoSettings)}
    for text in overrides:
        keys, value = parse_override(text)
        if keys[0] != "demo":
            rest.append(text)
        elif len(keys) == 2 and keys[1] in names and isinstance(value, int) and value >= 0:
            setattr(settings, keys[1], value)
        else:
            raise RecipeError(f"override {text!r}: the demo settings are {', '.join(sorted(names))} "
                              f"(whole numbers), e.g. demo.questions=8")
    return load_recipe(None, rest + ["output.overwrite=true"], raw=raw), settings


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def choose_threads() -> tuple[int, str]:
    """(torch threads for the demo, why). ``OMP_NUM_THREADS``, when set, decides; otherwise the
    cores that other work leaves free: the available cores minus the 1-minute load average,
    at least 1, at most torch's default. On a busy machine OpenMP threads that wait for each
    other run several times slower than one thread (2 shared cores, load 4.5: the 40 answers
    took 270 s with 2 threads, 61 s with 1; training ran at 20-30 instead of ~70 tokens/s)."""
    default = torch.get_num_threads()
    if os.environ.get("OMP_NUM_THREADS"):
        return default, "OMP_NUM_THREADS"
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return default, "torch's default"
    cores = available_cores()
    return max(1, min(default, int(cores - load + 0.5))), f"load average {load:.1f}; set OMP_NUM_THREADS to choose"


def machine_description() -> str:
    """``"2 CPU cores (Intel(R) Xeon(R) …)"``: the cores this process may use and the CPU model."""
    cores = available_cores()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cores} CPU core{'s' if cores != 1 else ''} ({cpu})"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def held_out_questions(eval_examples: list[dict], settings: DemoSettings) -> list[tuple[str, str]]:
    """(question, reference command) for ``settings.questions`` eval examples drawn with ``settings.seed``."""
    pairs = []
    for ex in eval_examples:
        msgs = ex["messages"]
        question = next(m["content"] for m in msgs if m["role"] == "user")
        reference = extract_command(next(m["content"] for m in msgs if m["role"] == "assistant"))
        if reference:
            pairs.append((question, reference))
    random.Random(settings.seed).shuffle(pairs)
    return pairs[: settings.questions]


def score_commands(model, tokenizer, pairs: list[tuple[str, str]], template: str,
                   settings: DemoSettings) -> CommandScore:
    """Greedy batched answers to the questions, each scored against its reference command."""
    t0 = time.perf_counter()
    answers = generate_batched(model, tokenizer, [q for q, _ in pairs], template, settings.max_new_tokens,
                               settings.batch_size)
    items = []
    for (question, reference), answer in zip(pairs, answers):
        command = extract_command(answer)
        items.append(Scored(question, reference, answer, command, match_command(command, reference)))
    return CommandScore(items, time.perf_counter() - t0)


def run_demo(overrides: list[str] = (), say: Callable[[str], None] = print, progress: bool = True) -> DemoResult:
    """Steps 1-4 of the module docstring; torch runs with :func:`choose_threads` threads."""
    recipe, settings = load_demo_recipe(list(overrides))
    machine = machine_description()
    threads, why = choose_threads()
    say(f"[bold]leantune demo[/]: LoRA on SmolLM2-135M-Instruct with shell-command questions; {machine}; "
        f"torch threads: {threads} ({why})")
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(recipe, settings, machine, say, progress)
    finally:
        torch.set_num_threads(saved)


def _run(recipe: Recipe, settings: DemoSettings, machine: str, say: Callable[[str], None],
         progress: bool) -> DemoResult:
    t_start = time.perf_counter()
    say(f"[1/4] loading the base model ({recipe.model.name}) and the held-out questions …")
    train_examples, eval_examples = load_data(recipe, build_stage(recipe.stage), None, say)
    pairs = held_out_questions(eval_examples, settings)
    say(f"      {len(train_examples)} training examples; {len(pairs)} held-out questions are scored "
        f"({len({r for _, r in pairs})} different commands, none of them in the training data)")
    model_path = resolve_model_path(recipe.model.name)
    tokenizer = load_tokenizer(model_path, recipe.model.trust_remote_code)
    model = load_model(model_path, "causal_lm", recipe.model.dtype, recipe.model.trust_remote_code,
                       build_method(recipe.method).load_kwargs(), pad_token_id=tokenizer.pad_token_id)

    say(f"[2/4] evaluating the base model: answering the {len(pairs)} held-out questions …")
    before = score_commands(model, tokenizer, pairs, recipe.data.template, settings)
    del model
    gc.collect()
    say(f"      command accuracy before training: {_rate(before, EXACT)} exact ({before.seconds:.0f} s)")

    say("[3/4] training (eval loss and perplexity before and after) …")
    t_train = time.perf_counter()
    summary = train(recipe, progress=progress, say=say)
    t_train = time.perf_counter() - t_train

    say(f"[4/4] evaluating the trained model: answering the same {len(pairs)} questions …")
    run = load_run(summary.run_dir)
    model = run.method.merge(run.model) if run.method.mergeable else run.model  # same model, faster generation
    after = score_commands(model, run.tokenizer, pairs, recipe.data.template, settings)
    say(f"      command accuracy after training: {_rate(after, EXACT)} exact ({after.seconds:.0f} s)")
    atomic_write_text(Path(summary.run_dir) / COMMAND_ACCURACY_FILE, json.dumps(
        {"settings": asdict(settings), "before": before.rates, "after": after.rates,
         "questions": [{"question": b.question, "reference": b.reference, "before": asdict(b), "after": asdict(a)}
                       for b, a in zip(before.items, after.items)]}, indent=2))
    return DemoResult(summary, settings, before, after, machine,
                      {"before": before.seconds, "training": t_train, "after": after.seconds,
                       "total": time.perf_counter() - t_start})


def _rate(score: CommandScore, level: str) -> str:
    n = len(score.items)
    return f"{score.count(level)}/{n} ({100 * score.count(level) / max(n, 1):.0f}%)"


def print_report(result: DemoResult, console) -> None:
    """The command-accuracy table and the shown examples (after the run summary)."""
    n = len(result.before.items)
    table = Table(title=f"command accuracy on {n} held-out questions", show_header=True)
    table.add_column("match")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("exact", _rate(result.before, EXACT), _rate(result.after, EXACT))
    table.add_row("exact or equivalent", _rate(result.before, EQUIVALENT), _rate(result.after, EQUIVALENT))
    table.add_row("right program(s) only (lenient)", _rate(result.before, PROGRAM), _rate(result.after, PROGRAM))
    console.print(table)
    console.print("[dim]exact: the same command up to whitespace, quoting and safe flag order; equivalent: "
                  "the same program, flags (in any order) and arguments; right program: the same program(s) "
                  "(git/apt/systemctl… with their subcommand), any flags and arguments, which is not a correct "
                  "answer. Commands are compared as text, never run.[/]", soft_wrap=True)

    def verdict(s: Scored) -> str:
        if s.command is None:
            return "[red]no command found[/]"
        found = f" (its command: {escape(s.command)})" if s.match != EXACT else ""
        return {EXACT: "[green]exact match[/]", EQUIVALENT: "[green]equivalent[/]",
                PROGRAM: "[yellow]right program, wrong command[/]"}.get(s.match, "[red]no match[/]") + found

    def indented(answer: str) -> str:
        return "\n".join("    | " + line for line in escape(answer).splitlines() or [""])

    shown = list(zip(result.before.items, result.after.items))[: result.settings.shown]
    console.print(f"\n{len(shown)} of the held-out questions, answered before and after training:", soft_wrap=True)
    for b, a in shown:
        console.print(f"\n[bold]Q:[/] {escape(b.question)}\n  reference command: {escape(b.reference)}",
                      highlight=False, soft_wrap=True)
        console.print(f"  [bold]before[/]: {verdict(b)}\n{indented(b.answer)}", highlight=False, soft_wrap=True)
        console.print(f"  [bold]after[/]: {verdict(a)}\n{indented(a.answer)}", highlight=False, soft_wrap=True)
    t = result.seconds
    console.print(f"\ndemo time: {t['total']:.0f} s (command accuracy before {t['before']:.0f} s, training "
                  f"and loss evaluation {t['training']:.0f} s, command accuracy after {t['after']:.0f} s) "
                  f"on {result.machine}; every answer: {Path(result.summary.run_dir) / COMMAND_ACCURACY_FILE}",
                  highlight=False, soft_wrap=True)
