"""Command accuracy for shell-help answers: pull the command out of a model's answer and
compare it with a reference command, as text. Nothing here ever runs a command.

Three levels of agreement, computed from a small POSIX-shell tokenizer (quotes,
backslashes, operators such as ``|``, ``&&`` and ``>``, ``#`` comments):

``exact``
    Same tokens after normalising whitespace, quoting style and the order of flags
    where reordering cannot change the meaning. ``'*.log'``, ``"*.log"`` and
    ``\\*.log`` are the same word, ``*.log`` (which the shell expands) is not;
    ``'$HOME'`` (literal) differs from ``"$HOME"`` and ``$HOME`` (expanded; the
    word splitting of the unquoted form is ignored). Flags are reordered only
    inside a run of adjacent flags, never across an argument; the last flag of a
    run that is followed by an argument stays put (it may take that argument), and
    so does the last letter of a bundle such as ``-xzf``. Flags with an attached
    value (``--exclude=x``) and the words of programs whose option order is
    meaningful (``find``, ``test``, ``ffmpeg``, compilers, …) are never reordered.
    A trailing ``;`` and ``#`` comments are dropped.

``equivalent``
    ``exact``, or each command of a pipeline/list has the same program, the same set
    of flags (bundles such as ``-la`` split into ``-l -a``; repeated flags count
    once) and the same other words, flags with an attached value included, in the same
    order; a leading ``sudo`` is ignored.
    So ``ls -al`` ~ ``ls -l -a`` and ``tar -xvzf a.tgz`` ≁ ``tar -xzf a.tgz``.
    Known leniency: it does not know which flags take an argument, so
    ``tar -fx a.tar`` counts as equivalent to ``tar -xf a.tar``.

``program`` (a lenient diagnostic, not a correct answer)
    ``equivalent``, or the same programs in the same order (per command of a pipeline
    or list; a leading ``sudo`` ignored; ``git``, ``apt``, ``systemctl`` … with their
    subcommand), whatever the flags and arguments: ``git branch -d old`` for
    ``git branch -d feature-login``, but also ``df -h`` for ``df -i``.

An answer whose command cannot be tokenized (e.g. an unclosed quote) matches only
if it equals the reference after collapsing whitespace.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

EXACT, EQUIVALENT, PROGRAM = "exact", "equivalent", "program"
LEVELS = (EXACT, EQUIVALENT, PROGRAM)  # strictest first; each level counts the stricter ones too

# Programs whose option order carries meaning (expressions, per-input options, link order).
ORDER_SENSITIVE = frozenset({
    "find", "test", "[", "[[", "expr", "ffmpeg", "iptables", "ip6tables", "gcc", "g++", "cc", "c++",
    "clang", "clang++", "ld", "java", "convert", "magick", "sox", "tcpdump",
})
# Tools whose first argument names the action: `git clean` and `git branch` are different programs.
SUBCOMMAND_TOOLS = frozenset({
    "git", "apt", "apt-get", "dnf", "yum", "systemctl", "docker", "kubectl", "ip", "pip", "npm", "cargo", "go",
    "brew", "snap", "openssl", "conda", "nmcli", "timedatectl", "hostnamectl", "loginctl",
})
# Unquoted characters that the shell treats specially inside a word.
_SPECIAL = set("$`\\\"'*?[]{}~!#")
_OPERATORS = ("&&", "||", ";;", ">>", "<<", ">&", "<&", "&>", "|&", "|", ";", "&", "<", ">", "(", ")")
_OPERATOR_CHARS = set("|&;<>()")
_REDIRECTS = frozenset({">", ">>", "<", "<<", ">&", "<&", "&>"})
_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.S)
_INLINE = re.compile(r"`([^`\n]+)`")
_PROGRAM = re.compile(r"^(?:sudo\s+)?(?:[a-z][a-z0-9._+-]*|\.{0,2}/[\w./-]+|~/[\w./-]+)(?:\s|$)")
# Lower-case words that start prose rather than a command.
_PROSE = frozenset("""a an and as at but by first for from here if in it its note of on or run see so that the
then this to try type use using when with you your""".split())


@dataclass(frozen=True)
class Token:
    kind: str   # "word" or "op"
    text: str   # canonical text: literal special characters are backslash-escaped


def tokenize(command: str) -> list[Token]:
    """POSIX-shell tokens of one command line; raises ValueError on an unclosed quote.

    Each word's text is canonical: a special character that the shell takes literally
    (quoted or escaped) is written as ``\\c``, one it acts on as ``c``; ordinary
    characters are written as themselves whatever their quoting.
    """
    tokens: list[Token] = []
    word: list[str] | None = None
    i, n = 0, len(command)

    def literal(c: str) -> str:
        return "\\" + c if c in _SPECIAL else c

    while i < n:
        c = command[i]
        if c.isspace():
            if word is not None:
                tokens.append(Token("word", "".join(word)))
                word = None
            i += 1
        elif c == "#" and word is None:  # a comment runs to the end of the line
            break
        elif c in _OPERATOR_CHARS:
            if word is not None:
                tokens.append(Token("word", "".join(word)))
                word = None
            op = next(o for o in _OPERATORS if command.startswith(o, i))
            tokens.append(Token("op", op))
            i += len(op)
        else:
            word = [] if word is None else word
            if c == "\\":
                if i + 1 < n:
                    word.append(literal(command[i + 1]))
                i += 2
            elif c == "'":
                end = command.find("'", i + 1)
                if end < 0:
                    raise ValueError(f"unclosed single quote in {command!r}")
                word.extend(literal(ch) for ch in command[i + 1:end])
                i = end + 1
            elif c == '"':
                i += 1
                while i < n and command[i] != '"':
                    ch = command[i]
                    if ch == "\\" and i + 1 < n and command[i + 1] in '$`"\\':
                        word.append(literal(command[i + 1]))
                        i += 2
                        continue
                    word.append(ch if ch in "$`" else literal(ch))  # $ and ` still expand in "…"
                    i += 1
                if i >= n:
                    raise ValueError(f"unclosed double quote in {command!r}")
                i += 1
            else:
                word.append(literal(c) if c in "#~" and word else c)  # special only at a word's start
                i += 1
    if word is not None:
        tokens.append(Token("word", "".join(word)))
    while tokens and tokens[-1] == Token("op", ";"):
        tokens.pop()
    return tokens


def _segments(tokens: list[Token]) -> list[list[Token]]:
    """Split at operators: [[words], [op], [words], …] (each operator its own segment)."""
    out: list[list[Token]] = [[]]
    for t in tokens:
        if t.kind == "op":
            out += [[t], []]
        else:
            out[-1].append(t)
    return [s for s in out if s]


def _is_flag(text: str) -> bool:
    return text.startswith("-") and len(text) > 1 and text != "--"


def _is_bundle(text: str) -> bool:
    """``-abc``: single-dash letters only, which might be several short flags."""
    return len(text) > 2 and text[0] == "-" and text[1:].isascii() and text[1:].isalpha()


def _sort_bundle(word: str, keep_last: bool) -> str:
    """``-zxf`` → ``-xzf``; with ``keep_last`` the last letter (which may take an argument) stays last."""
    if not _is_bundle(word):
        return word
    letters = word[1:]
    return "-" + ("".join(sorted(letters[:-1])) + letters[-1] if keep_last else "".join(sorted(letters)))


def _program(words: list[str]) -> str:
    return words[0].rsplit("/", 1)[-1] if words else ""


def _exact_segment(words: list[str]) -> list[str]:
    if not words or _program(words) in ORDER_SENSITIVE or words[0].startswith("\\"):
        return words
    out: list[str] = []
    i = 0
    while i < len(words):
        if words[i] == "--":
            return out + words[i:]
        if not (_is_flag(words[i]) and "=" not in words[i]):
            out.append(words[i])
            i += 1
            continue
        j = i
        while j < len(words) and _is_flag(words[j]) and "=" not in words[j]:
            j += 1
        takes_next = j < len(words) and not _is_flag(words[j])  # the last flag may take words[j]
        run = [_sort_bundle(w, keep_last=takes_next and k == j - i - 1) for k, w in enumerate(words[i:j])]
        out += sorted(run[:-1]) + run[-1:] if takes_next else sorted(run)
        i = j
    return out


def _equivalent_segment(words: list[str]) -> tuple:
    if words and words[0] == "sudo":
        words = words[1:]
    if not words or _program(words) in ORDER_SENSITIVE:
        return tuple(words)
    flags: set[str] = set()
    others: list[str] = []
    rest = False
    for w in words[1:]:
        if rest or not _is_flag(w) or "=" in w:  # --opt=value keeps its place (rsync filters…)
            rest = rest or w == "--"
            others.append(w)
        elif _is_bundle(w):
            flags.update("-" + ch for ch in w[1:])
        else:
            flags.add(w)
    return (_program(words), frozenset(flags), tuple(others))


def normalize(command: str) -> tuple[str, ...]:
    """The canonical token sequence used for ``exact`` (see the module docstring)."""
    out: list[str] = []
    for seg in _segments(tokenize(command)):
        out += [seg[0].text] if seg[0].kind == "op" else _exact_segment([t.text for t in seg])
    return tuple(out)


def equivalence_key(command: str) -> tuple:
    """The comparison key used for ``equivalent`` (see the module docstring)."""
    return tuple(seg[0].text if seg[0].kind == "op" else _equivalent_segment([t.text for t in seg])
                 for seg in _segments(tokenize(command)))


def programs(command: str) -> tuple[str, ...]:
    """The program of each command of a pipeline or list (see ``program`` in the module docstring)."""
    out = []
    redirected = False
    for seg in _segments(tokenize(command)):
        if seg[0].kind == "op":
            redirected = seg[0].text in _REDIRECTS
            continue
        if redirected:  # `> file …`: a redirection target and the same command's words, not a command
            continue
        words = [t.text for t in seg]
        if words and words[0] == "sudo":
            words = words[1:]
        if words:
            name = _program(words)
            sub = words[1] if name in SUBCOMMAND_TOOLS and len(words) > 1 and not _is_flag(words[1]) else None
            out.append(f"{name} {sub}" if sub else name)
    return tuple(out)


def match_command(predicted: str | None, reference: str) -> str | None:
    """``"exact"``, ``"equivalent"``, ``"program"`` or ``None`` (no command, or other programs)."""
    if not predicted or not predicted.strip():
        return None
    try:
        if normalize(predicted) == normalize(reference):
            return EXACT
        if equivalence_key(predicted) == equivalence_key(reference):
            return EQUIVALENT
        if programs(predicted) == programs(reference):
            return PROGRAM
    except ValueError:  # unclosed quote: compare the text itself
        return EXACT if " ".join(predicted.split()) == " ".join(reference.split()) else None
    return None


def _strip_prompt(line: str) -> str:
    line = line.strip()
    return line[2:].strip() if line.startswith("$ ") else line


def _looks_like_command(line: str) -> bool:
    line = _strip_prompt(line)
    if not line or line.endswith(":") or not _PROGRAM.match(line):
        return False
    return line.split()[0] not in _PROSE


def _first_in_block(block: str) -> str | None:
    """The first command line of a fenced block: skips blank and comment lines, joins ``\\`` continuations."""
    lines = block.splitlines()
    for k, line in enumerate(lines):
        line = _strip_prompt(line)
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\") and k + 1 < len(lines):
            k += 1
            line = line[:-1].rstrip() + " " + lines[k].strip()
        return line
    return None


def extract_command(answer: str) -> str | None:
    """The command an answer gives, or ``None``.

    In order of preference: whichever comes first of the first fenced code block
    (its first command line) and the first line that starts with an inline code
    span (that span, as in the demo data's answer style; an answer cut off inside
    it gives the rest of the line); else the first line that looks like a command
    (starts with a lower-case program name or a path, is not prose, does not end
    with ``:``); else the first inline code span anywhere that looks like a command
    (not ``-A`` or ``time()``), else the first inline code span. A leading ``$ ``
    prompt is removed.
    """
    candidates: list[tuple[int, str]] = []
    for fence in _FENCE.finditer(answer):
        if (cmd := _first_in_block(fence.group(1))) is not None:
            candidates.append((fence.start(), cmd))
            break
    offset = 0
    for line in answer.splitlines(keepends=True):
        stripped = line.lstrip()
        if stripped.startswith("`") and not stripped.startswith("```"):
            m = _INLINE.match(stripped)
            candidates.append((offset, _strip_prompt(m.group(1) if m else stripped[1:].rstrip("\n"))))
            break
        offset += len(line)
    if candidates:
        return min(candidates)[1]
    for line in answer.splitlines():
        if _looks_like_command(line):
            return _strip_prompt(line)
    spans = [_strip_prompt(m.group(1)) for m in _INLINE.finditer(answer)]
    return next((c for c in spans if _looks_like_command(c)), spans[0] if spans else None)


def accuracy(matches: list[str | None]) -> dict[str, float]:
    """``{"exact": …, "equivalent": …, "program": …}`` as fractions of ``matches``; each level
    counts the stricter ones too (``equivalent`` includes the exact matches)."""
    n = max(len(matches), 1)
    return {level: sum(m in LEVELS[: i + 1] for m in matches) / n for i, level in enumerate(LEVELS)}
