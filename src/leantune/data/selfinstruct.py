"""Self-instruct (Wang et al. 2022, arXiv:2212.10560) in Stanford Alpaca's form (Taori et al. 2023):
the prompt that asks a teacher for new tasks, the parser of its text, and the filters.

* **Prompt** (:func:`build_prompt`): a few tasks sampled from the seed tasks and from the tasks
  generated so far (the paper mixes 6 human-written and 2 machine-written ones; Alpaca shows 3
  seeds) as a numbered list of ``Instruction / Input / Output`` blocks separated by ``###``; the
  text ends at the next number's ``Instruction:`` so that the teacher continues the list.
* **Parsing** (:func:`parse_tasks`): the teacher's text split on ``###`` into numbered blocks,
  each an instruction, an input (``<noinput>`` or none: empty) and an output, or a reason why not.
* **Filters** (:func:`check_task`), the paper's and Alpaca's: an instruction of at most 3 or more
  than 150 words; a keyword an LM cannot act on (image, picture, graph, file, map, draw, plot,
  go to, video, audio, music, flowchart, diagram); "Write a program"; starting with punctuation
  or a non-ASCII character; an empty output; and ROUGE-L F ≥ 0.7 with any instruction already
  kept (seeds included), which keeps the tasks diverse.

ROUGE-L (Lin 2004) is computed here: the longest common subsequence of the two token lists,
F = 2PR / (P + R) with P = LCS / len(candidate), R = LCS / len(reference); the tokens are those of
Google's ``rouge-score`` without stemming (lower-cased, runs of ``[a-z0-9]``), which is what the
paper used, so the scores equal ``RougeScorer(["rougeL"]).score(...).fmeasure``.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import LeantuneError
from .formats import FORMATS, load_examples
from .readers import read_rows

ROUGE_THRESHOLD = 0.7
MIN_WORDS, MAX_WORDS = 3, 150  # an instruction needs more than 3 and at most 150 words
KEYWORDS = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
            "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
OUT_FORMATS = ("alpaca", "messages", "chatglm")
NO_INPUT = "<noinput>"

HEADER = (
    "You are asked to come up with a set of diverse task instructions. These task instructions will be "
    "given to a language model and we will evaluate it for completing the instructions.\n\n"
    "Here are the requirements:\n"
    "1. Try not to repeat the verb for each instruction to maximize diversity.\n"
    "2. The language used for the instruction also should be diverse.\n"
    "3. The type of instructions should be diverse.\n"
    "4. A language model should be able to complete the instruction. Do not ask for any visual or "
    "audio output, files, or actions in the world.\n"
    "5. The instructions should be in English and 1 to 2 sentences long.\n"
    "6. Write an input only where the task needs one; otherwise write \"<noinput>\".\n"
    "7. The output should be an appropriate response to the instruction and the input.\n\n"
    "List of tasks:\n"
)
_TOKEN_SPLIT = re.compile(r"[^a-z0-9]+")
_FIELD = re.compile(r"^\s*(?:\d+\s*\.\s*)?(Instruction|Input|Output)\s*:", re.IGNORECASE | re.MULTILINE)
_NUMBERED = r"^[ \t]*\d+\s*\.\s*Instruction\s*:"
_BLOCK_START = re.compile(_NUMBERED, re.IGNORECASE | re.MULTILINE)
_BLOCK_SPLIT = re.compile(rf"###|(?={_NUMBERED})", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Task:
    instruction: str
    input: str
    output: str


@dataclass(frozen=True)
class Parsed:
    """One block of the teacher's text: a task, or the reason it is not one (and the raw text)."""

    task: Task | None
    reason: str
    raw: str


# -- ROUGE-L ------------------------------------------------------------------

def rouge_tokens(text: str) -> list[str]:
    """``rouge-score``'s tokens without stemming: lower case, runs of ASCII letters and digits."""
    return [t for t in _TOKEN_SPLIT.split(text.lower()) if t]


def _lcs(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(candidate: list[str], reference: list[str]) -> float:
    """ROUGE-L F-measure of two token lists (0 when either is empty); symmetric."""
    lcs = _lcs(candidate, reference) if candidate and reference else 0
    if not lcs:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


class RougePool:
    """The instructions kept so far, tokenised once; a new one must score below the threshold with all."""

    def __init__(self, instructions: list[str] = ()):
        self.texts: list[str] = []
        self._tokens: list[list[str]] = []
        for text in instructions:
            self.add(text)

    def add(self, instruction: str) -> None:
        self.texts.append(instruction)
        self._tokens.append(rouge_tokens(instruction))

    def most_similar(self, instruction: str) -> tuple[float, str]:
        """The highest ROUGE-L F with a kept instruction, and that instruction (0, "" when empty)."""
        tokens = rouge_tokens(instruction)
        best, text = 0.0, ""
        for other, kept in zip(self._tokens, self.texts):
            score = rouge_l(tokens, other)
            if score > best:
                best, text = score, kept
        return best, text


# -- prompt and parsing -------------------------------------------------------

def format_task(number: int, task: Task) -> str:
    return (f"{number}. Instruction: {task.instruction}\n{number}. Input:\n{task.input or NO_INPUT}\n"
            f"{number}. Output:\n{task.output}")


def sample_prompt_tasks(seeds: list[Task], generated: list[Task], rng: random.Random,
                        n_seed: int = 3, n_generated: int = 1) -> list[Task]:
    """``n_seed`` seed tasks and up to ``n_generated`` generated ones, shuffled (the paper: 6 and 2)."""
    chosen = rng.sample(seeds, min(n_seed, len(seeds))) + rng.sample(generated, min(n_generated, len(generated)))
    rng.shuffle(chosen)
    return chosen


def build_prompt(examples: list[Task]) -> str:
    """Alpaca's prompt: the header, the examples numbered 1…k, and ``k+1. Instruction:`` to continue."""
    blocks = [format_task(i, task) for i, task in enumerate(examples, 1)]
    return HEADER + "###\n" + "\n###\n".join(blocks) + f"\n###\n{len(examples) + 1}. Instruction:"


def parse_tasks(text: str, first_number: int) -> list[Parsed]:
    """The tasks of a teacher's continuation of :func:`build_prompt` whose list stopped at ``first_number``.

    A text whose first numbered ``Instruction:`` comes after an ``Input:`` or ``Output:`` (or that
    has none) continues the prompt's last line, so that header is put back first; other text before
    the first numbered instruction (a chat model's "Sure, here are…") is left out. Blocks are split
    on ``###`` and on numbered instructions; each gives a task or a reason: ``no instruction``,
    ``missing output`` (also a block cut off by the token limit), ``empty instruction``, ``empty output``.
    """
    start = _BLOCK_START.search(text)
    if start is None or _FIELD.search(text, 0, start.start()):
        text = f"{first_number}. Instruction:{text}"
    else:
        text = text[start.start():]
    parsed = []
    for block in _BLOCK_SPLIT.split(text):
        if not block.strip():
            continue
        fields: dict[str, str] = {}
        marks = list(_FIELD.finditer(block))
        for mark, nxt in zip(marks, marks[1:] + [None]):
            name = mark.group(1).lower()
            if name not in fields:
                fields[name] = block[mark.end():nxt.start() if nxt else len(block)].strip()
        if "instruction" not in fields:
            parsed.append(Parsed(None, "no instruction", block.strip()))
        elif "output" not in fields:
            parsed.append(Parsed(None, "missing output", block.strip()))
        elif not fields["instruction"]:
            parsed.append(Parsed(None, "empty instruction", block.strip()))
        elif not fields["output"]:
            parsed.append(Parsed(None, "empty output", block.strip()))
        else:
            given = fields.get("input", "")
            extra = "" if given.strip().lower() in (NO_INPUT, "") else given
            parsed.append(Parsed(Task(re.sub(r"\s+", " ", fields["instruction"]), extra, fields["output"]),
                                 "", block.strip()))
    return parsed


# -- filters ------------------------------------------------------------------

def check_task(task: Task, pool: RougePool, threshold: float = ROUGE_THRESHOLD,
               keywords: tuple[str, ...] = KEYWORDS) -> str:
    """Why ``task`` is dropped (``""``: kept); the ROUGE-L test comes last, being the costliest.
    ``keywords``: whole words (or phrases) that drop an instruction; the paper's by default."""
    instruction = task.instruction
    words = len(instruction.split())
    if words <= MIN_WORDS:
        return "too short"
    if words > MAX_WORDS:
        return "too long"
    lowered = instruction.lower()
    if any(re.search(rf"\b{re.escape(word)}\b", lowered) for word in keywords):
        return "keyword"
    if lowered.startswith("write a program"):
        return "write a program"
    if not instruction[0].isalnum():
        return "starts with punctuation"
    if not instruction[0].isascii():
        return "not English"
    score, _ = pool.most_similar(instruction)
    if score >= threshold:
        return "similar (ROUGE-L)"
    return ""


# -- reading and writing tasks ------------------------------------------------

def load_tasks(path: str | Path, fmt: str | None = None) -> list[Task]:
    """The tasks of a chat data file: an Alpaca row keeps its instruction and input apart; another
    chat format gives its last user turn as the instruction and the reply as the output."""
    result = load_examples(path, fmt)
    if FORMATS[result.format].kind != "chat":
        raise LeantuneError(f"{path}: format '{result.format}' holds no instructions; seed tasks need a chat "
                            f"format (alpaca, messages, sharegpt, chatglm, prompt_completion)")
    if result.format == "alpaca":
        rows = dict(read_rows(path))
        return [Task(rows[ex["line"]]["instruction"].strip(), (rows[ex["line"]].get("input") or "").strip(),
                     rows[ex["line"]]["output"].strip()) for ex in result.examples]
    return [Task(ex["messages"][-2]["content"].strip(), "", ex["messages"][-1]["content"].strip())
            for ex in result.examples]


def task_row(task: Task, fmt: str) -> str:
    """One JSON line of ``task`` in ``fmt`` (alpaca, messages or chatglm)."""
    prompt = f"{task.instruction}\n\n{task.input}" if task.input else task.instruction
    if fmt == "alpaca":
        row = {"instruction": task.instruction, "input": task.input, "output": task.output}
    elif fmt == "messages":
        row = {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": task.output}]}
    elif fmt == "chatglm":
        row = {"content": prompt, "summary": task.output}
    else:
        raise LeantuneError(f"--format {fmt!r}: one of {', '.join(OUT_FORMATS)}")
    return json.dumps(row, ensure_ascii=False) + "\n"
