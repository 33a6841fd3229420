"""Readers, format normalisation and validation of data files."""
from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from leantune.data.formats import FORMATS, detect_format, get_format, load_examples
from leantune.data.readers import read_rows
from leantune.errors import DataValidationError, LeantuneError, Problem


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def write(tmp_path, ext, rows, name="data"):
    """Write ``rows`` as ``name.ext``; returns the path and the line of each row."""
    path = tmp_path / f"{name}.{ext}"
    if ext == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        lines = [i + 1 for i in range(len(rows))]
    elif ext == "json":
        path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
        lines = [i + 2 for i in range(len(rows))]
    elif ext == "csv":
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, keys)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
        lines = [i + 2 for i in range(len(rows))]
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
        lines = [i + 1 for i in range(len(rows))]
    return path, lines


# One valid row per format, and the example it must normalise to (without "line").
VALID = {
    "alpaca": (
        {"instruction": "Add", "input": "2+2", "output": "4", "system": "Be terse.",
         "history": [["Hi", "Hello!"]]},
        {"messages": [{"role": "system", "content": "Be terse."}, user("Hi"), bot("Hello!"),
                      user("Add\n\n2+2"), bot("4")]},
    ),
    "sharegpt": (
        {"system": "Be kind.", "conversations": [
            {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
            {"from": "user", "value": "Bye"}, {"from": "model", "value": "Bye!"}]},
        {"messages": [{"role": "system", "content": "Be kind."}, user("Hi"), bot("Hello"),
                      user("Bye"), bot("Bye!")]},
    ),
    "messages": (
        {"messages": [{"role": "system", "content": "S"}, user("Q"), bot("A")]},
        {"messages": [{"role": "system", "content": "S"}, user("Q"), bot("A")]},
    ),
    "chatglm": (
        {"content": "类型#裤", "summary": "宽松的裤子"},
        {"messages": [user("类型#裤"), bot("宽松的裤子")]},
    ),
    "prompt_completion": (
        {"prompt": "2+2=", "completion": "4"},
        {"messages": [user("2+2="), bot("4")]},
    ),
    "text": ({"text": "Once upon a time."}, {"text": "Once upon a time."}),
    "classification": (
        {"text": "great film", "text_pair": "a review", "label": "positive"},
        {"text": "great film", "text_pair": "a review", "label": "positive"},
    ),
    "preference": (
        {"prompt": "2+2=", "chosen": "4", "rejected": "5"},
        {"prompt": [user("2+2=")], "chosen": "4", "rejected": "5"},
    ),
}


def test_every_format_is_covered():
    assert set(VALID) == set(FORMATS)


@pytest.mark.parametrize("ext", ["jsonl", "json", "csv", "parquet"])
@pytest.mark.parametrize("fmt", sorted(VALID))
def test_valid_row_in_every_file_type(tmp_path, fmt, ext):
    row, expected = VALID[fmt]
    path, lines = write(tmp_path, ext, [row, row])
    result = load_examples(path, fmt)
    assert result.examples == [{**expected, "line": lines[0]}, {**expected, "line": lines[1]}]
    assert result.problems == []
    assert (result.format, result.rows, result.skipped, result.path) == (fmt, 2, 0, str(path))


@pytest.mark.parametrize("ext", ["jsonl", "json", "csv", "parquet"])
@pytest.mark.parametrize("fmt", sorted(VALID))
def test_format_detected_from_keys(tmp_path, fmt, ext):
    path, _ = write(tmp_path, ext, [VALID[fmt][0]])
    assert load_examples(path, None).format == fmt


def test_minimal_rows():
    alpaca = get_format("alpaca").normalize({"instruction": "Hi", "input": "", "output": "Yo", "extra": 1})
    assert alpaca == ({"messages": [user("Hi"), bot("Yo")]}, [])
    cls = get_format("classification").normalize({"text": "x", "text_pair": "", "label": 0})
    assert cls == ({"text": "x", "text_pair": None, "label": 0}, [])
    sharegpt = get_format("sharegpt").normalize(
        {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                           {"from": "gpt", "value": "A"}]})
    assert sharegpt == ({"messages": [{"role": "system", "content": "S"}, user("Q"), bot("A")]}, [])


def msgs(*roles):
    return {"messages": [{"role": r, "content": "x"} for r in roles]}


def conv(*froms):
    return {"conversations": [{"from": f, "value": "x"} for f in froms]}


INVALID = [
    ("alpaca", {"output": "4"}, [("instruction", "missing")]),
    ("alpaca", {"instruction": "", "output": 4},
     [("instruction", "must be a non-empty string, got an empty string"),
      ("output", "must be a non-empty string, got int")]),
    ("alpaca", {"instruction": "a", "output": "b", "input": ["x"]}, [("input", "must be a string, got list")]),
    ("alpaca", {"instruction": "a", "output": "b", "history": [["q"], ["q", 1]]},
     [("history[0]", "must be a [user, assistant] pair, got a list of 1"),
      ("history[1][1]", "must be a non-empty string, got int")]),
    ("alpaca", {"instruction": "a", "output": "b", "history": "not json"},
     [("history", "must be a list, got a string that is not a JSON list")]),
    ("sharegpt", {"conversations": []}, [("conversations", "must be a non-empty list")]),
    ("sharegpt", conv("human", "bot"),
     [("conversations[1].from",
       "from 'bot' is not one of human, user, gpt, assistant, model, system")]),
    ("sharegpt", conv("human", "human", "gpt"),
     [("conversations[1].from", "turns must alternate user/assistant (turn 2 is user after user)")]),
    ("sharegpt", conv("gpt", "human"),
     [("conversations[0].from", "conversation must start with a user turn (turn 1 is assistant)"),
      ("conversations", "conversation must end with an assistant turn")]),
    ("sharegpt", {"system": "S", "conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "r"},
                                                  {"from": "gpt"}]},
     [("conversations[2].value", "missing"),
      ("conversations[1].from", "turns must alternate user/assistant (turn 2 is user after user)")]),
    ("sharegpt", {"system": "S", "conversations": [{"from": "system", "value": "T"},
                                                  {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
     [("conversations[0].from", "system given both as the top-level 'system' field and as a turn")]),
    ("messages", {"messages": "hi"}, [("messages", "must be a list, got a string that is not a JSON list")]),
    ("messages", msgs("user", "assistant", "bot"),
     [("messages[2].role", "role 'bot' is not one of system, user, assistant")]),
    ("messages", msgs("user", "assistant", "user"), [("messages", "conversation must end with an assistant turn")]),
    ("messages", msgs("user", "system", "assistant"),
     [("messages[1].role", "a system message may only come first (turn 2 is system)")]),
    ("messages", {"messages": [user("q"), "a", {"content": "c"}]},
     [("messages[1]", "must be an object with 'role' and 'content', got string"),
      ("messages[2].role", "missing")]),
    ("chatglm", {"content": "q", "summary": None}, [("summary", "missing")]),
    ("prompt_completion", {"prompt": "   ", "completion": "c"},
     [("prompt", "must be a non-empty string, got an empty string")]),
    ("text", {"body": "x"}, [("text", "missing")]),
    ("classification", {"text": "x", "label": True}, [("label", "must be a string or an integer, got bool")]),
    ("classification", {"text": "x", "label": 1.5}, [("label", "must be a string or an integer, got float")]),
    ("classification", {"text": "x", "text_pair": 3}, [("text_pair", "must be a string, got int"), ("label", "missing")]),
]


@pytest.mark.parametrize("fmt,row,expected", INVALID)
def test_invalid_rows_report_line_and_field(tmp_path, fmt, row, expected):
    good = VALID[fmt][0]
    path, _ = write(tmp_path, "jsonl", [good, row, good])
    result = load_examples(path, fmt, skip_invalid=True)
    assert [e["line"] for e in result.examples] == [1, 3]
    assert result.problems == [Problem(str(path), 2, f, m) for f, m in expected]
    assert (result.rows, result.skipped) == (3, 1)


def test_invalid_rows_raise_with_format_hint(tmp_path):
    path, _ = write(tmp_path, "jsonl", [{"instruction": "a"}, {"output": "b"}])
    with pytest.raises(DataValidationError) as info:
        load_examples(path, "alpaca")
    assert info.value.problems == [Problem(str(path), 1, "output", "missing"),
                                   Problem(str(path), 2, "instruction", "missing")]
    assert f"{path}:2: instruction: missing" in str(info.value)
    assert "Format 'alpaca' expects: instruction (string), output (string)" in str(info.value)
    assert "data.skip_invalid: true" in str(info.value)


def test_limit_counts_valid_examples(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n{"text": ""}\n{"text": "b"}\n{"text": "c"}\nnot json\n')
    result = load_examples(path, "text", skip_invalid=True, limit=2)
    assert [e["text"] for e in result.examples] == ["a", "b"]
    assert [(p.line, p.field) for p in result.problems] == [(2, "text")]
    assert result.rows == 3


def test_unknown_format_suggests_closest(tmp_path):
    with pytest.raises(LeantuneError, match="unknown data format 'sharegtp'. Did you mean 'sharegpt'?") as info:
        get_format("sharegtp")
    assert "Valid formats: alpaca, sharegpt, messages, chatglm, prompt_completion, text, classification, preference." in str(
        info.value)
    path, _ = write(tmp_path, "jsonl", [{"text": "a"}])
    with pytest.raises(LeantuneError, match="Did you mean 'alpaca'"):
        load_examples(path, "alpacca")


def test_detect_format():
    assert detect_format([{"instruction": "a", "input": "", "output": "b"}]) == "alpaca"
    assert detect_format([{"text": "a", "label": 1}, {"text": "b"}, {"text": "c", "label": 0}]) == "classification"
    assert detect_format([{"question": "a"}]) is None
    assert detect_format([]) is None


def test_undetectable_format_names_the_choices(tmp_path):
    path, _ = write(tmp_path, "jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(LeantuneError, match="cannot tell the format .* name one of: alpaca, sharegpt"):
        load_examples(path, None)


# -- readers ------------------------------------------------------------------

def test_jsonl_reports_bad_lines_and_skips_blank_ones(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n[1, 2]\n  \n{"a": "x\\u2028y"}\n')
    problems = []
    assert read_rows(path, problems) == [(1, {"a": 1}), (6, {"a": "x\u2028y"})]
    assert problems == [
        Problem(str(path), 3, "<json>", "invalid JSON: Expecting ',' delimiter (column 8)"),
        Problem(str(path), 4, "<row>", "must be an object, got list"),
    ]
    with pytest.raises(DataValidationError) as info:
        read_rows(path)
    assert info.value.problems == problems


def test_json_reports_the_physical_line_of_each_object(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"text": "a"},\n  {\n    "text": 3\n  },\n  "oops",\n  {"text": "b"}\n]\n')
    result = load_examples(path, "text", skip_invalid=True)
    assert result.examples == [{"text": "a", "line": 2}, {"text": "b", "line": 7}]
    assert result.problems == [Problem(str(path), 3, "text", "must be a non-empty string, got int"),
                               Problem(str(path), 6, "<row>", "must be an object, got string")]


def test_json_with_malformed_element_reports_its_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b",,},\n  {"text": "c"}\n]\n')
    problems = []
    assert read_rows(path, problems) == [(2, {"text": "a"})]
    assert problems == [Problem(str(path), 3, "<json>", "invalid JSON: Expecting property name enclosed in "
                                                       "double quotes (column 16); rest of file not read")]


def test_json_top_level_must_be_a_list(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('\n{"text": "a"}\n')
    problems = []
    assert read_rows(path, problems) == []
    assert problems == [Problem(str(path), 2, "<json>", "top level must be a list of objects, got object "
                                                       "(is this a JSON Lines file? name it .jsonl)")]


def test_csv_lines_count_quoted_newlines_and_ragged_rows(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"two\nlines",a\n\nb,c,extra\nshort\n')
    problems = []
    assert read_rows(path, problems) == [(2, {"text": "two\nlines", "label": "a"}), (6, {"text": "short"})]
    assert problems == [Problem(str(path), 5, "<csv>", "row has 3 cells, the header has 2")]
    result = load_examples(path, "classification", skip_invalid=True)
    assert result.problems[-1] == Problem(str(path), 6, "label", "missing")


def test_parquet_lines_are_row_numbers(tmp_path):
    path, _ = write(tmp_path, "parquet", [{"text": "a", "label": 1}, {"text": None, "label": 2}])
    result = load_examples(path, "classification", skip_invalid=True)
    assert result.examples == [{"text": "a", "text_pair": None, "label": 1, "line": 1}]
    assert result.problems == [Problem(str(path), 2, "text", "missing")]


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(LeantuneError, match=r"data file not found: .*nope\.jsonl \(supported extensions: "
                                            r"\.jsonl, \.json, \.csv, \.parquet\)"):
        read_rows(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("hi")
    with pytest.raises(LeantuneError, match=r"d\.txt: unknown extension '\.txt'; supported extensions are "
                                            r"\.jsonl, \.json, \.csv, \.parquet"):
        load_examples(tmp_path / "d.txt", "text")
