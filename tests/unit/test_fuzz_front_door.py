"""The front door, fuzzed: no input to the data readers, ``leantune data check`` or the recipe
loader gets a traceback.

Every generated case ends in a valid result or a :class:`LeantuneError` (exit 2 through the CLI)
whose message names the file, and, for data rows, a 1-based line and a field. No case writes a file
outside this module's temporary folder. Hypothesis runs derandomized (seeded from each test), with
no example database, so every run draws the same cases.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from leantune.cli import app
from leantune.data.formats import FORMATS, LoadResult, load_examples
from leantune.errors import DataValidationError, LeantuneError

REPO = Path(__file__).resolve().parents[2]


def fuzz(examples: int) -> settings:
    """Seeded (derandomized), no example database, no deadline: the same cases on every run."""
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), print_blob=False)


# One or two valid rows of every registered format: the seeds that the mutations start from.
VALID_ROWS: dict[str, list[dict]] = {
    "alpaca": [{"instruction": "Add", "input": "2+2", "output": "4", "system": "Be terse.",
                "history": [["Hi", "Hello!"]]}, {"instruction": "Say hi", "output": "hi"}],
    "sharegpt": [{"system": "Be kind.", "conversations": [{"from": "human", "value": "Hi"},
                                                          {"from": "gpt", "value": "Hello"}]}],
    "messages": [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hello"}]}],
    "chatglm": [{"content": "你好", "summary": "Hello"}],
    "prompt_completion": [{"prompt": "2+2=", "completion": "4"}, {"prompt": "café", "completion": "☕"}],
    "text": [{"text": "A line of plain text."}, {"text": "Ünïcödé\ttext"}],
    "classification": [{"text": "good film", "label": "pos"}, {"text": "bad", "text_pair": "film", "label": 0}],
    "preference": [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
                   {"prompt": [{"role": "user", "content": "Hi"}],
                    "chosen": [{"role": "assistant", "content": "Hello"}], "rejected": "No."}],
}
FIELDS = sorted({key for rows in VALID_ROWS.values() for row in rows for key in row}
                | {"role", "content", "from", "value"})
EXTS = (".jsonl", ".json", ".csv", ".parquet")
READ_FORMATS = [None, *FORMATS]




# --------------------------------------------------------------------------- writing files

def _cell(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def encode(rows: list, ext: str) -> bytes:
    """``rows`` as the bytes of a ``ext`` file (lone surrogates kept, as invalid UTF-8)."""
    if ext == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    elif ext == ".json":
        text = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n"
    elif ext == ".csv":
        dicts = [r for r in rows if isinstance(r, dict)]
        out = io.StringIO(newline="")
        writer = csv.writer(out)
        keys = list(dict.fromkeys(k for r in dicts for k in r))
        writer.writerow(keys)
        for r in dicts:
            writer.writerow([_cell(r[k]) if k in r and r[k] is not None else "" for k in keys])
        text = out.getvalue()
    else:
        return _parquet([r for r in rows if isinstance(r, dict)])
    return text.encode("utf-8", "surrogatepass")


def _parquet(rows: list[dict]) -> bytes:
    out = io.BytesIO()
    try:
        pq.write_table(pa.Table.from_pylist(rows), out)
    except (pa.ArrowException, ValueError, TypeError, OverflowError):  # types parquet refuses: cells as text
        out = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(
            [{k: _cell(v).encode("utf-8", "replace").decode() for k, v in r.items()} for r in rows]), out)
    return out.getvalue()


# --------------------------------------------------------------------------- generated inputs

JUNK = [
    "NaN", "-Infinity", "Infinity", "1e308", "-1e999", "9" * 5000, "0." + "1" * 400, '"' + "x" * 20_000 + '"',
    "[" * 3000, '{"a":' * 1500, "null", "true", "[]", "{}", '"\\ud800"', '"\\u0000"', "\x00", "\r", "\u2028",
    "\ufeff", ",", "]", "}", "{", '"', "\n", "\\", '{"text": 1, "text": 2}', "\udcff", "y" * 140_000,
]
CODECS = ["latin-1", "cp1252", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"]
BOMS = [codecs.BOM_UTF8, codecs.BOM_UTF8 * 2, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE]


@st.composite
def mutation(draw, data: bytes) -> bytes:
    """``data`` after one random change: cut, spliced junk, changed bytes, another encoding, a repeated key."""
    at = draw(st.integers(0, len(data)))
    kind = draw(st.sampled_from(["cut", "junk", "junk", "byte", "bytes", "delete", "encoding", "bom",
                                 "repeat_key", "newlines", "random", "empty"]))
    if kind == "cut":
        return data[:at]
    if kind == "junk":
        return data[:at] + draw(st.sampled_from(JUNK)).encode("utf-8", "surrogatepass") + data[at:]
    if kind == "byte" and data:
        at = min(at, len(data) - 1)
        return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
    if kind == "bytes":
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    if kind == "delete":
        return data[:at] + data[at + draw(st.integers(1, 40)):]
    if kind == "encoding":
        text = data.decode("utf-8", "replace")
        return text.encode(draw(st.sampled_from(CODECS)), "replace")
    if kind == "bom":
        return draw(st.sampled_from(BOMS)) + data
    if kind == "repeat_key":
        opens = [i for i, b in enumerate(data) if b == ord("{")]
        if opens:
            i = draw(st.sampled_from(opens)) + 1
            key = json.dumps(draw(st.sampled_from(FIELDS))).encode()
            return data[:i] + key + b": " + draw(st.sampled_from([b"1", b'"x"', b"null", b"[]"])) + b", " + data[i:]
        return data
    if kind == "newlines":
        return data.replace(b"\n", draw(st.sampled_from([b"\r\n", b"\r", b"\n\n", b"\x85"])))
    if kind == "random":
        return draw(st.binary(max_size=200))
    if kind == "empty":
        return draw(st.sampled_from([b"", b"\n", b"   ", codecs.BOM_UTF8, b"[]", b"{}"]))
    return data


@st.composite
def mutated_file(draw) -> tuple[str, bytes]:
    """(suffix, bytes): a valid file of some format, changed one to three times."""
    fmt = draw(st.sampled_from(sorted(VALID_ROWS)))
    ext = draw(st.sampled_from(EXTS))
    rows = draw(st.lists(st.sampled_from(VALID_ROWS[fmt]), min_size=1, max_size=3))
    data = encode(rows, ext)
    for _ in range(draw(st.integers(1, 3))):
        data = draw(mutation(data))
    return ext, data


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(10 ** 30), 10 ** 30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", " ", "\n", "user", "assistant", "system", "human", "gpt", "\ud800", "x" * 3000,
                     "[]", '[{"role": "user"}]', "[[[", "{}", "NaN", "[" * 2000]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def junk_rows(draw) -> tuple[str, list]:
    """(format the rows started as, rows): valid rows whose fields got values of any type."""
    fmt = draw(st.sampled_from(sorted(VALID_ROWS)))
    rows: list = []
    for _ in range(draw(st.integers(1, 3))):
        row = dict(draw(st.sampled_from(VALID_ROWS[fmt])))
        for key in draw(st.lists(st.sampled_from(sorted(row) + FIELDS), max_size=3)):
            row[key] = draw(VALUES)
        rows.append(row if draw(st.integers(0, 9)) else draw(VALUES))  # now and then not an object
    return fmt, rows


# --------------------------------------------------------------------------- the contract

class Sandbox:
    """This module's only folders: ``data`` for generated files, ``cwd`` as the working folder.

    After every case nothing else may exist in them (or in the crash folder): the case's own files
    are removed, and anything left over is a file written where it must not be.
    """

    def __init__(self, root: Path):
        self.root, self.data, self.cwd = root, root / "data", root / "cwd"
        self.data.mkdir()
        self.cwd.mkdir()
        self.crashes = Path(os.environ.get("LEANTUNE_HOME", "~/.cache/leantune")).expanduser() / "crashes"
        self.crashes_before = self._crashes()
        self.made: list[Path] = []
        self.count = 0

    def _crashes(self) -> list[str]:
        return sorted(os.listdir(self.crashes)) if self.crashes.is_dir() else []

    def name(self, suffix: str) -> Path:
        """A fresh path in ``data`` ending in ``suffix``; removed after the case."""
        self.count += 1
        path = self.data / f"case{self.count}{suffix}"
        self.made.append(path)
        return path

    def write(self, suffix: str, data: bytes) -> Path:
        path = self.name(suffix)
        path.write_bytes(data)
        return path

    def close_case(self) -> None:
        """Assert that the case wrote nothing, then remove its files."""
        mine = {p.name for p in self.made}
        try:
            assert sorted(os.listdir(self.root)) == ["cwd", "data"]
            assert os.listdir(self.cwd) == []
            assert set(os.listdir(self.data)) <= mine, set(os.listdir(self.data)) - mine
            assert self._crashes() == self.crashes_before, "a traceback was saved"
        finally:
            for path in self.made:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.is_symlink() or path.exists():
                    path.unlink()
            self.made.clear()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    box = Sandbox(tmp_path_factory.mktemp("front_door"))
    before = os.getcwd()
    os.chdir(box.cwd)
    try:
        yield box
    finally:
        os.chdir(before)


def last_line(data: bytes) -> int:
    """The highest line number any reader may name for ``data`` (CR, LF and CRLF all end a line)."""
    return data.count(b"\n") + data.count(b"\r") + 1


def not_utf8_line(data: bytes) -> int | None:
    """The line where ``data`` stops being UTF-8 text (NUL bytes included); None if it is all text."""
    body = data[3:] if data.startswith(codecs.BOM_UTF8) else data
    try:
        at = data.index(b"\0") if "\0" in body.decode("utf-8") else None
    except UnicodeDecodeError as exc:
        at = exc.start + len(data) - len(body)
    return None if at is None else data.count(b"\n", 0, at) + 1


def check_message(text: str, path: Path) -> None:
    """One user-facing message: not empty, names the file, printable on any UTF-8 console."""
    assert text.strip()
    assert str(path) in text, text[:300]
    text.encode("utf-8")  # no lone surrogates: printing it cannot fail
    assert "Traceback" not in text


def check_problems(problems, path: Path, lines: int | None) -> None:
    for p in problems:
        assert p.file == str(path)
        assert isinstance(p.line, int) and 1 <= p.line <= (lines or p.line), (p, lines)
        assert isinstance(p.field, str) and p.field.strip() and "\n" not in p.field, p
        str(p).encode("utf-8")


def check_example(example: dict, kind: str) -> None:
    assert isinstance(example["line"], int) and example["line"] >= 1
    if kind == "chat":
        messages = example["messages"]
        assert messages[-1]["role"] == "assistant"
        assert all(isinstance(m["content"], str) and m["role"] in ("system", "user", "assistant") for m in messages)
    elif kind == "text":
        assert isinstance(example["text"], str)
    elif kind == "classification":
        assert isinstance(example["text"], str) and isinstance(example["label"], (str, int))
    else:
        assert isinstance(example["chosen"], str) and isinstance(example["rejected"], str)


def check_load(path: Path, fmt: str | None, skip_invalid: bool, data: bytes | None) -> LoadResult | LeantuneError:
    """``load_examples`` returns a valid result or raises a LeantuneError that names the file and line."""
    lines = None if data is None or path.suffix == ".parquet" else last_line(data)
    try:
        result = load_examples(path, fmt, skip_invalid=skip_invalid)
    except LeantuneError as exc:
        check_message(str(exc), path)
        if isinstance(exc, DataValidationError):
            assert exc.problems
            check_problems(exc.problems, path, lines)
        bad_line = None if lines is None else not_utf8_line(data)
        if bad_line is not None and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            assert "not UTF-8" in str(exc) and f"line {bad_line}," in str(exc), str(exc)
        return exc
    assert isinstance(result, LoadResult) and result.path == str(path) and result.format in FORMATS
    assert lines is None or not_utf8_line(data) is None
    assert skip_invalid or not result.problems
    check_problems(result.problems, path, lines)
    for example in result.examples:
        check_example(example, FORMATS[result.format].kind)
    return result


runner = CliRunner()


def check_cli(path: Path | str, fmt: str | None) -> int:
    """``leantune data check``: exit 0 or 2 (naming the file), never a traceback or an internal error."""
    args = ["data", "check", str(path)] + (["--format", fmt] if fmt else [])
    result = runner.invoke(app, args, catch_exceptions=True, env={"COLUMNS": "250"})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2), (result.exit_code, result.output[-2000:])
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output[-2000:]
    if result.exit_code == 2:
        check_message(result.output, Path(path))
    return result.exit_code


# --------------------------------------------------------------------------- data: readers and formats

@fuzz(900)
@given(mutated_file(), st.one_of(st.none(), st.sampled_from(READ_FORMATS)), st.booleans())
def test_load_examples_on_mutated_files(sandbox, file, fmt, skip_invalid):
    ext, data = file
    try:
        check_load(sandbox.write(ext, data), fmt, skip_invalid, data)
    finally:
        sandbox.close_case()


@fuzz(600)
@given(junk_rows(), st.sampled_from(EXTS), st.booleans(), st.booleans())
def test_load_examples_on_fields_of_any_type(sandbox, case, ext, named, skip_invalid):
    fmt, rows = case
    data = encode(rows, ext)
    try:
        check_load(sandbox.write(ext, data), fmt if named else None, skip_invalid, data)
    finally:
        sandbox.close_case()


def test_every_registered_format_is_fuzzed(sandbox):
    """The seeds cover every format registered, and load as valid from every file type."""
    assert set(VALID_ROWS) == set(FORMATS)
    try:
        for fmt, rows in VALID_ROWS.items():
            for ext in EXTS:
                data = encode(rows, ext)
                result = check_load(sandbox.write(ext, data), fmt, False, data)
                assert isinstance(result, LoadResult) and len(result.examples) == len(rows), (fmt, ext, result)
    finally:
        sandbox.close_case()


def test_repeated_key_names_line_and_key(sandbox):
    try:
        for ext, first in ((".jsonl", 2), (".json", 3)):
            rows = encode([{"text": "a"}, {"text": "b", "label": 1}], ext).replace(b'"label": 1', b'"text": "c"')
            err = check_load(sandbox.write(ext, rows), "text", False, rows)
            assert isinstance(err, DataValidationError)
            assert [(p.line, p.field) for p in err.problems] == [(first, "text")], err
            assert "appears twice" in str(err)
        data = b"text,label,text\na,1,b\n"
        err = check_load(sandbox.write(".csv", data), "classification", True, data)
        assert isinstance(err, DataValidationError) and err.problems[0].line == 1, err
    finally:
        sandbox.close_case()


def test_not_utf8_names_line_and_byte(sandbox):
    try:
        data = '{"text": "ok"}\n{"text": "café"}\n'.encode("latin-1")
        err = check_load(sandbox.write(".jsonl", data), "text", False, data)
        assert "line 2, byte 14" in str(err) and "0xe9" in str(err), err
        data = '{"text": "ok"}\n'.encode("utf-16")
        err = check_load(sandbox.write(".jsonl", data), None, True, data)
        assert "UTF-16" in str(err), err
    finally:
        sandbox.close_case()


# Parquet columns of types that JSON and CSV cannot hold, some past what Python can (year 10000).
PARQUET_COLUMNS = [
    lambda: pa.array([10 ** 15], type=pa.timestamp("s")),
    lambda: pa.array([10 ** 15], type=pa.date64()),
    lambda: pa.array([10 ** 18], type=pa.duration("s")),
    lambda: pa.array([b"\xff\x00"], type=pa.binary()),
    lambda: pa.array([Decimal("1.5")]),
    lambda: pa.array([[("role", "user")]], type=pa.map_(pa.string(), pa.string())),
    lambda: pa.array([None], type=pa.null()),
    lambda: pa.array(["user"]).dictionary_encode(),
    lambda: pa.array([{"role": "user", "content": 1}]),
    lambda: pa.array([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]]),
    lambda: pa.array([float("nan")]),
    lambda: pa.array([2 ** 63 - 1]),
    lambda: pa.array(["x" * 3000]),
    lambda: pa.array([True]),
    lambda: pa.array(["Hi"]),
]


@fuzz(120)
@given(st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(PARQUET_COLUMNS), min_size=1, max_size=4),
       st.sampled_from(READ_FORMATS), st.booleans())
def test_load_examples_on_parquet_column_types(sandbox, columns, fmt, skip_invalid):
    out = io.BytesIO()
    pq.write_table(pa.table({name: make() for name, make in columns.items()}), out)
    try:
        check_load(sandbox.write(".parquet", out.getvalue()), fmt, skip_invalid, None)
    finally:
        sandbox.close_case()


def test_parquet_values_and_names_python_cannot_hold(sandbox):
    """A timestamp past year 9999 is a problem of its row and column; a column name that is not
    UTF-8 is an error of the file."""
    out = io.BytesIO()
    pq.write_table(pa.table({"text": ["a", "b"], "label": pa.array([1, 10 ** 15], type=pa.timestamp("s"))}), out)
    try:
        result = check_load(sandbox.write(".parquet", out.getvalue()), "classification", True, None)
        assert [(p.line, p.field) for p in result.problems] == [(1, "label"), (2, "label")], result.problems
        assert "cannot hold" in result.problems[1].message
        err = check_load(sandbox.write(".parquet", out.getvalue().replace(b"text", b"t\xb2xt")), None, True, None)
        assert isinstance(err, LeantuneError) and "not UTF-8" in str(err), err
        assert check_cli(sandbox.made[-1], None) == 2
    finally:
        sandbox.close_case()


def test_limits_of_json_are_row_problems(sandbox):
    """Nesting too deep and numbers too long are problems of their line, not crashes."""
    try:
        data = b'{"text": "ok"}\n' + b"[" * 5000 + b"\n" + b'{"text": ' + b"9" * 5000 + b"}\n"
        result = check_load(sandbox.write(".jsonl", data), "text", True, data)
        assert [(p.line, p.field) for p in result.problems] == [(2, "<json>"), (3, "<json>")]
        assert "nested too deeply" in result.problems[0].message and "digits" in result.problems[1].message
    finally:
        sandbox.close_case()


# --------------------------------------------------------------------------- data: the CLI

@fuzz(300)
@given(st.one_of(mutated_file(), junk_rows().map(lambda c: (".jsonl", encode(c[1], ".jsonl")))),
       st.one_of(st.none(), st.sampled_from(READ_FORMATS)))
def test_data_check_on_fuzzed_files(sandbox, file, fmt):
    ext, data = file
    try:
        path = sandbox.write(ext, data)
        code = check_cli(path, fmt)
        # the CLI agrees with the library: exit 0 exactly when the file loads with no problem
        strict = check_load(path, fmt, False, data)
        assert (code == 0) == isinstance(strict, LoadResult), (code, strict)
    finally:
        sandbox.close_case()


def test_data_check_prints_any_label(sandbox):
    """Labels are printed in the report: a lone surrogate, markup or a long one cannot break it."""
    rows = [{"text": "a", "label": "\ud800"}, {"text": "b", "label": "[bold]x[/]"}, {"text": "c", "label": "y" * 500}]
    try:
        assert check_cli(sandbox.write(".jsonl", encode(rows, ".jsonl").replace(b"\xed\xa0\x80", b"\\ud800")),
                         "classification") == 0
    finally:
        sandbox.close_case()


def _path_tricks(box: Sandbox) -> list[Path]:
    valid = encode(VALID_ROWS["text"], ".jsonl")
    folder = box.name(".jsonl")
    folder.mkdir()
    real = box.write(".jsonl", valid)
    loop = box.name(".csv")
    loop.symlink_to(loop)
    dangling = box.name(".json")
    dangling.symlink_to(box.data / "nowhere.json")
    upper = box.write(".JSONL", valid)
    fifo = box.name(".jsonl")  # reading it would wait for a writer forever
    os.mkfifo(fifo)
    return [
        folder,                                        # a folder instead of a file
        box.data / "missing.jsonl",                    # no such file
        box.data / "no-folder" / ".." / real.name,     # `..` through a folder that does not exist
        box.data / "." / ".." / "data" / real.name,    # `..` that leads back to a real file
        box.data / "..jsonl",                          # a name that is only dots and a suffix
        box.write(".txt", valid),                      # unknown suffix
        box.write("", valid),                          # no suffix
        box.write(".jsonl.gz", valid),                 # compressed
        box.data / ("x" * 300 + ".jsonl"),             # a name too long for the file system
        box.data / ("d" * 5000) / "x.jsonl",           # a path too long for the file system
        loop, dangling, upper, fifo,
        Path(os.devnull + ".jsonl"), Path("/"), Path(".."), Path("relative/missing.csv"),
    ]


def test_path_tricks(sandbox):
    try:
        for path in _path_tricks(sandbox):
            for fmt in (None, "text"):
                result = check_load(path, fmt, False, None)
                assert isinstance(result, LeantuneError) or result.examples, path
                assert check_cli(path, fmt) in (0, 2)
    finally:
        sandbox.close_case()


@fuzz(150)
@given(st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=30),
       st.sampled_from([".jsonl", ".json", ".csv", ".parquet", ".JSON", ".txt", "", ".jsonl.bak"]),
       st.sampled_from(["", "sub/../", "./", "sub/./../"]))
def test_any_file_name(sandbox, stem, suffix, via):
    path = sandbox.name("")  # reserve a fresh folder for this name
    path.mkdir()
    try:
        target = path / (stem + suffix)
        if via.startswith("sub"):
            (path / "sub").mkdir()
        try:
            target.write_bytes(encode(VALID_ROWS["text"], target.suffix.lower()
                                      if target.suffix.lower() in EXTS else ".jsonl"))
        except OSError:  # a name the file system refuses ("..", too long): it stays missing
            pass
        check_load(Path(f"{path}/{via}{stem}{suffix}"), None, False, None)
    finally:
        sandbox.close_case()


def test_data_check_imports_no_torch(tmp_path):
    """`data check` without --model stays light: no torch import (it takes seconds)."""
    good = tmp_path / "good.jsonl"
    good.write_bytes(encode(VALID_ROWS["classification"], ".jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"[" * 3000 + b"\n{\"text\": 1}\n")
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from leantune.cli import app\n"
        f"codes = [CliRunner().invoke(app, ['data', 'check', p]).exit_code for p in {[str(good), str(bad)]!r}]\n"
        "print(codes, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.stdout.strip() == "[0, 2] False", out.stdout + out.stderr


# --------------------------------------------------------------------------- the recipe loader

RECIPE_TEXTS = [p.read_text(encoding="utf-8") for p in sorted((REPO / "recipes").rglob("*.yaml"))]
YAML_JUNK = [
    ".inf", "-.inf", ".nan", ".NaN", "1e999", "-1", "-42", "0", "99999999999999999999999999", "9" * 5000,
    "..", "/abs", "a/b", "../../etc", "~", "null", "[]", "{}", "[[[[", "{a: 1, a: 2}", "!!python/object:os.system",
    "&a [*a, *a]", "*undefined", "'unterminated", "\t", "!!binary AAAA", "2001-01-01", "0x1F", "yes", "''",
    '"\\ud800"', '"\\x00"', "|\n  block", "[" * 1000, "x" * 5000, "{" * 500, "!!float 'nan'", "? complex key",
]
OVERRIDE_KEYS = ["train.seed", "train.lr", "train.max_length", "train.epochs", "output.name", "output.dir",
                 "data.eval_split", "data.format", "method.r", "method", "stage", "stage.name", "model",
                 "model.name", "eval.prompts", "train.adversarial.steps", "a..b", "", ".", "train", "x.y.z"]


@st.composite
def recipe_file(draw) -> bytes:
    """A recipe from recipes/ with one to three changes, or random text or bytes."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "text", "bytes"]))
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    lines = draw(st.sampled_from(RECIPE_TEXTS)).splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        op = draw(st.sampled_from(["value", "value", "value", "repeat", "delete", "indent", "cut"]))
        line = lines[i] if lines else ""
        if op == "value" and ":" in line:
            key = line.split(":", 1)[0]
            lines[i] = f"{key}: {draw(st.sampled_from(YAML_JUNK))}\n"
        elif op == "repeat":  # the same key twice in one mapping
            lines.insert(i, line)
        elif op == "delete" and lines:
            del lines[i]
        elif op == "indent":
            lines[i] = draw(st.sampled_from(["  ", "\t", " "])) + line
        elif op == "cut":
            lines = lines[:i] + [line[:draw(st.integers(0, len(line)))]]
    data = "".join(lines).encode("utf-8", "surrogatepass")
    return draw(mutation(data)) if draw(st.integers(0, 4)) == 0 else data


OVERRIDES = st.lists(
    st.one_of(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(OVERRIDE_KEYS), st.sampled_from(YAML_JUNK)),
              st.text(max_size=20)),
    max_size=3,
)


def check_recipe(path: Path, overrides: list[str]):
    """``load_recipe`` gives a Recipe or a LeantuneError (naming the file when no override is at fault)."""
    from leantune.recipe import Recipe, load_recipe

    try:
        recipe = load_recipe(path, overrides)
    except LeantuneError as exc:
        if overrides:
            assert str(exc).strip()
            str(exc).encode("utf-8")
        else:
            check_message(str(exc), path)
        return exc
    assert isinstance(recipe, Recipe)
    return recipe


# Shrinking is off here: a failing recipe case shrinks for minutes; the smallest known failures
# are spelled out in RECIPE_CASES below instead.
@settings(fuzz(300), phases=[Phase.explicit, Phase.generate])
@given(recipe_file(), st.one_of(st.just([]), OVERRIDES))
def test_load_recipe_on_fuzzed_recipes(sandbox, data, overrides):
    try:
        check_recipe(sandbox.write(".yaml", data), overrides)
    finally:
        sandbox.close_case()


# (recipe text, overrides, must it be refused?)
RECIPE_CASES = [
    ("model: " + "9" * 5000, [], True),                       # a number of more than 4300 digits
    ("model: m\ntrain:\n  seed: " + "9" * 5000, [], True),
    ("model: m\nstage: &a [*a]\n", [], True),                 # a list that contains itself
    ("model: m\nstage:\n  name: 1.5\n", [], True),            # a name that is not a string
    ("model: m\nmethod:\n  name: .inf\n", [], True),
    ("model: m\nmethod: ..\n", [], True),                      # unknown names: the message names the file
    ("model: m\nstage: ..\n", [], True),
    ("model: m\nmodel: n\n", [], True),                        # a repeated key
    ("model: caf\udce9\n", [], True),                          # not UTF-8 (latin-1 é)
    ("model: m\ntrain:\n  lr: .nan\n", [], True),
    ("model: m\ntrain:\n  lr: .inf\n", [], True),
    ("model: m\noutput:\n  name: ..\n", [], True),
    ("model: m\noutput:\n  name: /abs\n", [], True),
    ("model: m\noutput:\n  name: a/b\n", [], True),
    ("model: m\nstage: " + "[" * 1000 + "\n", [], True),
    ("model: m\n", ["train.seed=" + "9" * 5000], True),
    ("model: m\n", ["method=1e999"], True),
    ("model: m\n", ["train.seed=[[[["], True),
    ("model: m\n", ["output.name=.."], True),
    ("model: m\n", ["=1"], True),
    ("model: m\n", ["train.seed=-1"], False),
]


@pytest.mark.parametrize("text, overrides, refused", RECIPE_CASES,
                         ids=[f"case{i}" for i in range(len(RECIPE_CASES))])
def test_load_recipe_on_known_bad_inputs(sandbox, text, overrides, refused):
    try:
        path = sandbox.write(".yaml", text.encode("utf-8", "surrogateescape"))
        result = check_recipe(path, overrides)
        assert not refused or isinstance(result, LeantuneError), result
    finally:
        sandbox.close_case()
