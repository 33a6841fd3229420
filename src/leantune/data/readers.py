"""Read data files into ``(line, row)`` pairs, keeping the line each row came from.

Supported: ``.jsonl`` (one object per line), ``.json`` (a list of objects),
``.csv`` (a header row, then one row per record) and ``.parquet``.
"""
from __future__ import annotations

import csv
import io
import json
from bisect import bisect_right
from pathlib import Path

from leantune.errors import DataValidationError, LeantuneError, Problem

SUPPORTED = (".jsonl", ".json", ".csv", ".parquet")


def read_rows(path: str | Path, problems: list[Problem] | None = None) -> list[tuple[int, dict]]:
    """Return the rows of ``path`` as ``(line, row)`` pairs.

    Unreadable rows (bad JSON, non-object rows, ragged CSV rows) become
    :class:`Problem` s: they are appended to ``problems`` when a list is given,
    otherwise all of them are raised together as one :class:`DataValidationError`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        raise LeantuneError(
            f"cannot read data file {path}: unknown extension {path.suffix or '(none)'!r}; "
            f"supported extensions are {', '.join(SUPPORTED)}."
        )
    if not path.is_file():
        raise LeantuneError(
            f"data file not found: {path} (supported extensions: {', '.join(SUPPORTED)})."
        )
    found: list[Problem] = []
    if suffix == ".parquet":
        rows = _read_parquet(path)
    else:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise LeantuneError(f"cannot read data file {path}: not UTF-8 text ({exc}).") from exc
        reader = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv}[suffix]
        rows = reader(text, str(path), found)
    if problems is not None:
        problems.extend(found)
    elif found:
        raise DataValidationError(found)
    return rows


def type_name(value: object) -> str:
    """A short name of a value's type for messages: null, bool, int, float, string, list, object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {dict: "object", list: "list", str: "string"}.get(type(value), type(value).__name__)


def _add_row(line: int, value: object, file: str, rows: list, problems: list[Problem]) -> None:
    if isinstance(value, dict):
        rows.append((line, value))
    else:
        problems.append(Problem(file, line, "<row>", f"must be an object, got {type_name(value)}"))


def _read_jsonl(text: str, file: str, problems: list[Problem]) -> list[tuple[int, dict]]:
    rows: list[tuple[int, dict]] = []
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(Problem(file, line, "<json>", f"invalid JSON: {exc.msg} (column {exc.colno})"))
            continue
        _add_row(line, value, file, rows, problems)
    return rows


def _read_json(text: str, file: str, problems: list[Problem]) -> list[tuple[int, dict]]:
    """Scan a top-level JSON list element by element to know where each one starts."""
    newlines = [i for i, ch in enumerate(text) if ch == "\n"]

    def line_of(pos: int) -> int:
        return bisect_right(newlines, pos - 1) + 1

    def skip_ws(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def bad(line: int, message: str) -> list[tuple[int, dict]]:
        problems.append(Problem(file, line, "<json>", message))
        return rows

    rows: list[tuple[int, dict]] = []
    pos = skip_ws(0)
    if not text.startswith("[", pos):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return bad(exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})")
        hint = " (is this a JSON Lines file? name it .jsonl)" if isinstance(value, dict) else ""
        return bad(line_of(pos), f"top level must be a list of objects, got {type_name(value)}{hint}")
    pos = skip_ws(pos + 1)
    if text.startswith("]", pos):
        return rows
    decoder = json.JSONDecoder()
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            return bad(exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno}); rest of file not read")
        _add_row(line_of(pos), value, file, rows, problems)
        pos = skip_ws(end)
        if text.startswith("]", pos):
            if skip_ws(pos + 1) < len(text):
                bad(line_of(pos), "unexpected text after the closing ']'")
            return rows
        if not text.startswith(",", pos):
            return bad(line_of(pos), "expected ',' or ']' after a list element; rest of file not read")
        pos = skip_ws(pos + 1)


def _read_csv(text: str, file: str, problems: list[Problem]) -> list[tuple[int, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, dict]] = []
    try:
        header = next(reader, None)
        start = reader.line_num + 1
        for record in reader:
            line, start = start, reader.line_num + 1  # a quoted cell may span lines
            if not any(cell.strip() for cell in record):
                continue
            if len(record) > len(header):
                message = f"row has {len(record)} cells, the header has {len(header)}"
                problems.append(Problem(file, line, "<csv>", message))
                continue
            rows.append((line, dict(zip(header, record))))
    except csv.Error as exc:
        message = f"invalid CSV: {exc}; rest of file not read"
        problems.append(Problem(file, reader.line_num, "<csv>", message))
    return rows


def _read_parquet(path: Path) -> list[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        raise LeantuneError(f"cannot read parquet file {path}: {exc}") from exc
    return [(i + 1, row) for i, row in enumerate(table.to_pylist())]
