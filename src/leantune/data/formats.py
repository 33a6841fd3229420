"""Named data formats: validate each row and normalise it into a canonical example.

Canonical examples are plain dicts with the row's ``line``:

* chat: ``{"messages": [{"role", "content"}, ...], "line"}``, ending with the
  assistant message that is the training target;
* text: ``{"text", "line"}``;
* classification: ``{"text", "text_pair" (or None), "label", "line"}``;
* preference: ``{"prompt": [messages ending with a user turn], "chosen", "rejected", "line"}``
  with ``chosen``/``rejected`` the two candidate replies as plain strings.
"""
from __future__ import annotations

import difflib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from leantune.data.readers import read_rows, shown, type_name
from leantune.errors import DataValidationError, LeantuneError, Problem

Errors = list[tuple[str, str]]
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant",
    "system": "system",
}


@dataclass(frozen=True)
class FormatSpec:
    """A named format: its kind, its fields (for hints) and its row normaliser."""

    name: str
    kind: str  # "chat" | "text" | "classification" | "preference"
    fields: str
    normalize: Callable[[dict], tuple[dict | None, Errors]]


@dataclass
class LoadResult:
    """Valid examples of a file, the problems found, and how many rows were read."""

    examples: list[dict]
    problems: list[Problem]
    path: str
    format: str = ""
    rows: int = 0  # rows considered, readable or not

    @property
    def skipped(self) -> int:
        """Rows that produced no example."""
        return self.rows - len(self.examples)


# -- field helpers ------------------------------------------------------------

def _text(value: object, path: str, errs: Errors, *, required: bool = True) -> str | None:
    """A string field; required ones must be non-blank. Records errors, returns None if bad."""
    if value is None:
        if required:
            errs.append((path, "missing"))
        return None
    if not isinstance(value, str):
        errs.append((path, f"must be {'a non-empty' if required else 'a'} string, got {type_name(value)}"))
        return None
    if required and not value.strip():
        errs.append((path, "must be a non-empty string, got an empty string"))
        return None
    return value


def _list(obj: dict, key: str, errs: Errors, *, required: bool = True) -> list | None:
    """A list field; a string holding a JSON list (as in CSV cells) is decoded, a blank one is absent."""
    value = obj.get(key)
    if isinstance(value, str) and not value.strip():
        value = None
    if value is None:
        if required:
            errs.append((key, "missing"))
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):  # bad syntax, a number too long, nesting too deep
            errs.append((key, "must be a list, got a string that is not a JSON list"))
            return None
    if not isinstance(value, list):
        errs.append((key, f"must be a list, got {type_name(value)}"))
        return None
    if required and not value:
        errs.append((key, "must be a non-empty list"))
        return None
    return value


def _check_turns(roles: list[str], key: str, attr: str, offset: int = 0) -> Errors:
    """Order rules: optional system first, then user/assistant alternating, ending with assistant.

    Problems name ``key[i].attr``; ``offset`` counts system messages prepended to ``roles``.
    """
    errs: Errors = []
    previous = None  # the last user/assistant role
    for i, role in enumerate(roles):
        at = f"{key}[{i - offset}].{attr}"
        turn = i - offset + 1
        if role == "system":
            if i > 0:
                errs.append((at, f"a system message may only come first (turn {turn} is system)"))
            continue
        if previous is None and role != "user":
            errs.append((at, f"conversation must start with a user turn (turn {turn} is {role})"))
        elif role == previous:
            errs.append((at, f"turns must alternate user/assistant (turn {turn} is {role} after {role})"))
        previous = role
    if roles and roles[-1] != "assistant":
        errs.append((key, "conversation must end with an assistant turn"))
    return errs


def _chat(messages: list[dict], errs: Errors) -> tuple[dict | None, Errors]:
    return (None, errs) if errs else ({"messages": messages}, errs)


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _turns(items: list, key: str, fields: tuple[str, str], roles: dict[str, str], errs: Errors,
           system: str | None = None) -> list[dict]:
    """The messages of a list of turn objects ``{role_field, content_field}`` (problems named
    ``key[i].field``); ``roles`` maps each accepted role name to its role, ``None`` where a
    turn's role is missing or unknown. A system turn beside a top-level ``system`` is skipped."""
    role_field, content_field = fields
    messages = []
    for i, item in enumerate(items):
        at = f"{key}[{i}]"
        if not isinstance(item, dict):
            errs.append((at, f"must be an object with '{role_field}' and '{content_field}', got {type_name(item)}"))
            continue
        given = item.get(role_field)
        role = roles.get(given) if isinstance(given, str) else None
        if given is None:
            errs.append((f"{at}.{role_field}", "missing"))
        elif role is None:
            errs.append((f"{at}.{role_field}", f"{role_field} {shown(given)} is not one of {', '.join(roles)}"))
        if role == "system" and system:
            errs.append((f"{at}.{role_field}", "system given both as the top-level 'system' field and as a turn"))
            continue
        content = _text(item.get(content_field), f"{at}.{content_field}", errs)
        messages.append(_msg(role, content))
    return messages


# -- formats ------------------------------------------------------------------

def _alpaca(row: dict) -> tuple[dict | None, Errors]:
    errs: Errors = []
    instruction = _text(row.get("instruction"), "instruction", errs)
    extra = _text(row.get("input"), "input", errs, required=False)
    output = _text(row.get("output"), "output", errs)
    system = _text(row.get("system"), "system", errs, required=False)
    history = _list(row, "history", errs, required=False) or []
    messages = [_msg("system", system)] if system else []
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2):
            got = f"a list of {len(pair)}" if isinstance(pair, list) else type_name(pair)
            errs.append((f"history[{i}]", f"must be a [user, assistant] pair, got {got}"))
            continue
        user = _text(pair[0], f"history[{i}][0]", errs)
        reply = _text(pair[1], f"history[{i}][1]", errs)
        messages += [_msg("user", user), _msg("assistant", reply)]
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    return _chat(messages + [_msg("user", prompt), _msg("assistant", output)], errs)


def _sharegpt(row: dict) -> tuple[dict | None, Errors]:
    errs: Errors = []
    system = _text(row.get("system"), "system", errs, required=False)
    turns = _list(row, "conversations", errs)
    if turns is None:
        return None, errs
    messages = [_msg("system", system)] if system else []
    messages += _turns(turns, "conversations", ("from", "value"), SHAREGPT_ROLES, errs, system=system)
    roles = [m["role"] for m in messages]
    if len(roles) == len(turns) + bool(system) and None not in roles:
        errs += _check_turns(roles, "conversations", "from", offset=1 if system else 0)
    return _chat(messages, errs)


def _messages(row: dict) -> tuple[dict | None, Errors]:
    errs: Errors = []
    items = _list(row, "messages", errs)
    if items is None:
        return None, errs
    messages = _turns(items, "messages", ("role", "content"), {r: r for r in ROLES}, errs)
    roles = [m["role"] for m in messages]
    if len(roles) == len(items) and all(r in ROLES for r in roles):
        errs += _check_turns(roles, "messages", "role")
    return _chat(messages, errs)


def _pair(prompt_key: str, target_key: str) -> Callable[[dict], tuple[dict | None, Errors]]:
    def normalize(row: dict) -> tuple[dict | None, Errors]:
        errs: Errors = []
        prompt = _text(row.get(prompt_key), prompt_key, errs)
        target = _text(row.get(target_key), target_key, errs)
        return _chat([_msg("user", prompt), _msg("assistant", target)], errs)

    return normalize


def _plain_text(row: dict) -> tuple[dict | None, Errors]:
    errs: Errors = []
    text = _text(row.get("text"), "text", errs)
    return (None, errs) if errs else ({"text": text}, errs)


def _classification(row: dict) -> tuple[dict | None, Errors]:
    errs: Errors = []
    text = _text(row.get("text"), "text", errs)
    pair = _text(row.get("text_pair"), "text_pair", errs, required=False) or None
    label = row.get("label")
    if label is None:
        errs.append(("label", "missing"))
    elif isinstance(label, bool) or not isinstance(label, (str, int)):
        errs.append(("label", f"must be a string or an integer, got {type_name(label)}"))
    elif isinstance(label, str) and not label.strip():
        errs.append(("label", "must be a non-empty string or an integer, got an empty string"))
    return (None, errs) if errs else ({"text": text, "text_pair": pair, "label": label}, errs)


def _reply(value: object, key: str, errs: Errors) -> str | None:
    """A candidate reply: a string, or a message list whose last message is the assistant reply."""
    if isinstance(value, list):
        if not value:
            errs.append((key, "must be a non-empty string or message list, got an empty list"))
            return None
        last = value[-1]
        at = f"{key}[{len(value) - 1}]"
        if not isinstance(last, dict):
            errs.append((at, f"must be an object with 'role' and 'content', got {type_name(last)}"))
            return None
        if last.get("role") != "assistant":
            errs.append((f"{at}.role", f"the reply must be an assistant message, got role {shown(last.get('role'))}"))
            return None
        return _text(last.get("content"), f"{at}.content", errs)
    if value is not None and not isinstance(value, str):
        errs.append((key, f"must be a non-empty string or message list, got {type_name(value)}"))
        return None
    return _text(value, key, errs)


def _preference(row: dict) -> tuple[dict | None, Errors]:
    errs: Errors = []
    prompt = row.get("prompt")
    messages: list[dict] | None = None
    if isinstance(prompt, list):
        # validated as a conversation with a placeholder reply, problems re-keyed to ``prompt``
        inner, found = _messages({"messages": prompt + [_msg("assistant", "x")]})
        errs += [(f.replace("messages", "prompt", 1), m) for f, m in found
                 if not f.startswith(f"messages[{len(prompt)}]")]
        if not prompt:
            errs.append(("prompt", "must be a non-empty string or message list, got an empty list"))
        elif isinstance(prompt[-1], dict) and prompt[-1].get("role") != "user":
            errs.append((f"prompt[{len(prompt) - 1}].role", "the prompt must end with a user turn"))
        messages = None if errs else inner["messages"][:-1]
    elif prompt is not None and not isinstance(prompt, str):
        errs.append(("prompt", f"must be a non-empty string or message list, got {type_name(prompt)}"))
    else:
        text = _text(prompt, "prompt", errs)
        messages = [_msg("user", text)] if text is not None else None
    chosen = _reply(row.get("chosen"), "chosen", errs)
    rejected = _reply(row.get("rejected"), "rejected", errs)
    if chosen is not None and rejected is not None and chosen.strip() == rejected.strip():
        errs.append(("rejected", "is the same text as chosen; a preference pair needs two different replies"))
    if errs:
        return None, errs
    return {"prompt": messages, "chosen": chosen, "rejected": rejected}, errs


FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec("alpaca", "chat", "instruction (string), output (string), optional input, system "
                   "(strings) and history (list of [user, assistant] pairs)", _alpaca),
        FormatSpec("sharegpt", "chat", "conversations (list of {from: human|gpt|system, value: string}, "
                   "alternating, ending with gpt), optional system (string)", _sharegpt),
        FormatSpec("messages", "chat", "messages (list of {role: system|user|assistant, content: string}, "
                   "alternating, ending with assistant)", _messages),
        FormatSpec("chatglm", "chat", "content (prompt string), summary (target string)",
                   _pair("content", "summary")),
        FormatSpec("prompt_completion", "chat", "prompt (string), completion (string)",
                   _pair("prompt", "completion")),
        FormatSpec("text", "text", "text (string)", _plain_text),
        FormatSpec("classification", "classification",
                   "text (string), label (string or integer), optional text_pair (string)", _classification),
        FormatSpec("preference", "preference",
                   "prompt (string or message list ending with a user turn), chosen and rejected (strings, or "
                   "message lists ending with the assistant reply)", _preference),
    )
}

# Key sets that identify a format, most specific first.
_SIGNATURES = (
    ("preference", {"prompt", "chosen", "rejected"}),
    ("messages", {"messages"}),
    ("sharegpt", {"conversations"}),
    ("alpaca", {"instruction", "output"}),
    ("prompt_completion", {"prompt", "completion"}),
    ("chatglm", {"content", "summary"}),
    ("classification", {"text", "label"}),
    ("text", {"text"}),
)


def get_format(name: str) -> FormatSpec:
    """The format called ``name``; an unknown name suggests the closest valid one."""
    if name in FORMATS:
        return FORMATS[name]
    close = difflib.get_close_matches(name, FORMATS, n=1)
    guess = f" Did you mean '{close[0]}'?" if close else ""
    raise LeantuneError(f"unknown data format '{name}'.{guess} Valid formats: {', '.join(FORMATS)}.")


def detect_format(rows: Iterable[dict]) -> str | None:
    """Guess a format from the keys of the first 50 rows; None if nothing fits."""
    votes: Counter[str] = Counter()
    for _, row in zip(range(50), rows):
        keys = set(row) if isinstance(row, dict) else set()
        name = next((n for n, needed in _SIGNATURES if needed <= keys), None)
        if name:
            votes[name] += 1
    return votes.most_common(1)[0][0] if votes else None


def load_examples(
    path: str | Path, fmt: str | None, *, skip_invalid: bool = False, limit: int | None = None
) -> LoadResult:
    """Read ``path`` and normalise its rows as format ``fmt`` (detected when None).

    Raises :class:`DataValidationError` listing every problem unless
    ``skip_invalid``, in which case invalid rows are dropped and returned as
    problems. ``limit`` stops after that many valid examples.
    """
    spec = None if fmt is None else get_format(fmt)
    read_problems: list[Problem] = []
    rows = read_rows(path, read_problems)
    file = str(path)
    if spec is None:
        detected = detect_format(row for _, row in rows)
        if detected is None and read_problems:
            raise DataValidationError(read_problems, hint=f"No readable row of {file} tells its format; "
                                      f"name one of: {', '.join(FORMATS)}.")
        if detected is None:
            what = "from its keys" if rows else "as it has no rows"
            raise LeantuneError(f"cannot tell the format of {file} {what}; name one of: {', '.join(FORMATS)}.")
        spec = FORMATS[detected]
    examples: list[dict] = []
    problems: list[Problem] = []
    taken = 0
    for line, row in rows:
        if limit is not None and len(examples) >= limit:
            break
        taken += 1
        example, errs = spec.normalize(row)
        problems += [Problem(file, line, f, m) for f, m in errs]
        if example is not None:
            examples.append({**example, "line": line})
    if taken < len(rows):  # stopped by limit: ignore unreadable rows past the last one used
        cutoff = rows[taken - 1][0] if taken else 0
        read_problems = [p for p in read_problems if p.line <= cutoff]
    problems = sorted(read_problems + problems, key=lambda p: p.line)
    result = LoadResult(examples, problems, file, spec.name, taken + len(read_problems))
    if problems and not skip_invalid:
        raise DataValidationError(
            problems,
            hint=f"Format '{spec.name}' expects: {spec.fields}. "
            "Set data.skip_invalid: true to drop invalid rows instead.",
        )
    return result
