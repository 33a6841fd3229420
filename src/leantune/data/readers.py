"""Read data files into ``(line, row)`` pairs, keeping the line each row came from.

Supported: ``.jsonl`` (one object per line), ``.json`` (a list of objects),
``.csv`` (a header row, then one row per record) and ``.parquet``.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import sys
from bisect import bisect_right
from collections import Counter
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
    _check_is_file(path)
    found: list[Problem] = []
    if suffix == ".parquet":
        rows = _read_parquet(path, found)
    else:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise LeantuneError(f"cannot read data file {path}: {exc.strerror or exc}.") from None
        reader = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv}[suffix]
        rows = reader(_decode_utf8(data, path), str(path), found)
    if problems is not None:
        problems.extend(found)
    elif found:
        raise DataValidationError(found)
    return rows


def _check_is_file(path: Path) -> None:
    """A readable regular file, or a :class:`LeantuneError` saying what is there instead."""
    try:
        is_file, is_dir = path.is_file(), path.is_dir()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL in it
        raise LeantuneError(f"cannot read data file {path}: {getattr(exc, 'strerror', None) or exc}.") from None
    if is_dir:
        raise LeantuneError(f"data file {path} is a folder; give the path of a {', '.join(SUPPORTED)} file.")
    if not is_file:
        raise LeantuneError(
            f"data file not found: {path} (supported extensions: {', '.join(SUPPORTED)})."
        )


def _decode_utf8(data: bytes, path: Path) -> str:
    """The text of a UTF-8 file (a leading byte-order mark dropped); anything else is a LeantuneError
    naming the line and byte where the file stops being UTF-8 text."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise LeantuneError(f"cannot read data file {path}: it is UTF-16 text (it starts with a UTF-16 "
                            "byte-order mark), not UTF-8; save it as UTF-8.")
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at, what = start + exc.start, f"byte 0x{data[start + exc.start]:02x} is not valid UTF-8"
    else:
        if "\0" not in text:
            return text
        at, what = data.index(b"\0"), "it holds a NUL byte (is it UTF-16 or a binary file?)"
    line = data.count(b"\n", 0, at) + 1
    column = at - (data.rfind(b"\n", 0, at) + 1) + 1
    raise LeantuneError(f"cannot read data file {path}: not UTF-8 text at line {line}, byte {column} of "
                        f"that line (byte offset {at} in the file): {what}; save the file as UTF-8.")


def shown(value: object, limit: int = 60) -> str:
    """``repr`` of a user's value for a message: printable (escapes), and cut to about ``limit`` characters."""
    try:
        text = repr(value)
    except RecursionError:
        return f"<{type_name(value)} nested too deeply to show>"
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def field_name(key: str) -> str:
    """A user's key as a Problem's field: as written when printable and short, else as :func:`shown`."""
    return key if key.isprintable() and 0 < len(key) <= 60 else shown(key)


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


_WHITESPACE = json.decoder.WHITESPACE  # what JSON allows between values: space, tab, CR, LF


class _BadJSON(Exception):
    """JSON that cannot be read: ``message`` for a Problem, ``line`` (1-based) within the text decoded."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.message, self.line = message, line


class _Decoder:
    """``json`` decoding that reports every failure as :class:`_BadJSON`: syntax, nesting too deep,
    numbers too long, and a key repeated in one object (JSON would silently keep the last value)."""

    def __init__(self) -> None:
        self.repeated: list[str] = []
        self._decoder = json.JSONDecoder(object_pairs_hook=self._object)

    def _object(self, pairs: list[tuple[str, object]]) -> dict:
        obj: dict = {}
        for key, value in pairs:
            if key in obj:
                self.repeated.append(key)
            obj[key] = value
        return obj

    def decode(self, text: str, pos: int = 0, whole: bool = True) -> tuple[object, int]:
        """The value at ``pos`` and where it ends; ``whole``: nothing but white space may follow."""
        self.repeated.clear()
        try:
            value, end = self._decoder.raw_decode(text, _WHITESPACE.match(text, pos).end())
            if whole and _WHITESPACE.match(text, end).end() < len(text):
                raise json.JSONDecodeError("Extra data", text, end)
        except json.JSONDecodeError as exc:
            raise _BadJSON(f"invalid JSON: {exc.msg} (column {exc.colno})", exc.lineno) from None
        except RecursionError:
            raise _BadJSON("invalid JSON: nested too deeply") from None
        except ValueError:  # int() refuses numbers of more than sys.get_int_max_str_digits() digits
            raise _BadJSON(f"invalid JSON: a number has more than {sys.get_int_max_str_digits()} digits") from None
        return value, end

    def add(self, line: int, value: object, file: str, rows: list, problems: list[Problem]) -> None:
        """Keep ``value`` as the row of ``line``, or record why it cannot be one."""
        if self.repeated:
            key = self.repeated[0]
            problems.append(Problem(file, line, field_name(key), f"key {shown(key)} appears twice in one object (JSON "
                                    "would silently keep the last value); remove one"))
        else:
            _add_row(line, value, file, rows, problems)


def _read_jsonl(text: str, file: str, problems: list[Problem]) -> list[tuple[int, dict]]:
    rows: list[tuple[int, dict]] = []
    decoder = _Decoder()
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            value, _ = decoder.decode(raw)
        except _BadJSON as exc:
            problems.append(Problem(file, line, "<json>", exc.message))
            continue
        decoder.add(line, value, file, rows, problems)
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
    decoder = _Decoder()
    pos = skip_ws(0)
    if not text.startswith("[", pos):
        try:
            value, _ = decoder.decode(text, pos)
        except _BadJSON as exc:
            return bad(exc.line or line_of(pos), exc.message)
        hint = " (is this a JSON Lines file? name it .jsonl)" if isinstance(value, dict) else ""
        return bad(line_of(pos), f"top level must be a list of objects, got {type_name(value)}{hint}")
    pos = skip_ws(pos + 1)
    if text.startswith("]", pos):
        return rows
    while True:
        try:
            value, end = decoder.decode(text, pos, whole=False)
        except _BadJSON as exc:
            return bad(exc.line or line_of(pos), f"{exc.message}; rest of file not read")
        decoder.add(line_of(pos), value, file, rows, problems)
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
        _check_header(header or [], file)
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


def _check_header(names: list[str], file: str) -> None:
    """Every CSV column needs its own name: a repeated one would silently drop a cell of each row."""
    repeated = [name for name, n in Counter(names).items() if n > 1]
    if repeated:
        message = f"column {shown(repeated[0])} appears twice; every column needs its own name"
        raise DataValidationError([Problem(file, 1, field_name(repeated[0]), message)])


def _read_parquet(path: Path, problems: list[Problem]) -> list[tuple[int, dict]]:
    import pyarrow.parquet as pq  # lazy: only .parquet files need it
    try:
        table = pq.read_table(path)
        names = table.column_names  # a column name that is not UTF-8 fails here
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, UnicodeDecodeError):
            reason = f"a column name is not UTF-8 text ({reason})"
        raise LeantuneError(f"cannot read parquet file {path}: {reason}") from None
    try:
        return [(i + 1, row) for i, row in enumerate(table.to_pylist())]
    except Exception:  # noqa: BLE001 - a value Python cannot hold (a timestamp past year 9999): find it
        pass
    rows: list[tuple[int, dict]] = []
    for i in range(table.num_rows):
        row = {}
        for name, column in zip(names, table.columns):
            try:
                row[name] = column[i].as_py()
            except Exception as exc:  # noqa: BLE001 - pyarrow and datetime raise several types
                problems.append(Problem(str(path), i + 1, field_name(name), f"a value Python cannot hold: {exc}"))
                break
        else:
            rows.append((i + 1, row))
    return rows
