"""The ``preference`` data format, its errors, ``data check``, and the dialog-pair builder."""
from __future__ import annotations

import json

import pytest

from leantune.alignment.preference import (build_preference_pairs, corrupt_reply, encode_pair, render_prompt,
                                           render_reply, tokenize_preferences)
from leantune.data.formats import FORMATS, load_examples
from leantune.data.inspect import inspect_data
from leantune.data.templates import CHATML
from leantune.errors import DataValidationError

GOOD = [
    {"prompt": "hi", "chosen": "hello there", "rejected": "go away"},
    {"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}],
     "chosen": [{"role": "assistant", "content": "hello"}], "rejected": "bye"},
]


def write(tmp_path, rows, name="pref.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_preference_format_detected_and_normalised(tmp_path):
    res = load_examples(write(tmp_path, GOOD), None)
    assert res.format == "preference" and FORMATS["preference"].kind == "preference"
    assert res.examples[0] == {"prompt": [{"role": "user", "content": "hi"}], "chosen": "hello there",
                               "rejected": "go away", "line": 1}
    assert res.examples[1]["prompt"][0]["role"] == "system"
    assert res.examples[1]["chosen"] == "hello" and res.examples[1]["rejected"] == "bye"


@pytest.mark.parametrize("row, where, problem", [
    ({"chosen": "a", "rejected": "b"}, "prompt", "missing"),
    ({"prompt": "q", "chosen": 3, "rejected": "b"}, "chosen", "got int"),
    ({"prompt": "q", "chosen": "a", "rejected": ""}, "rejected", "empty string"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "rejected", "same text as chosen"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "a",
      "rejected": "b"}, "prompt[1].role", "must end with a user turn"),
    ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, "prompt[0].content", "missing"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "chosen[0].role",
     "assistant"),
])
def test_bad_preference_rows_name_file_line_field(tmp_path, row, where, problem):
    path = write(tmp_path, [GOOD[0], row])
    with pytest.raises(DataValidationError) as err:
        load_examples(path, "preference")
    text = str(err.value)
    assert f"{path}:2: {where}:" in text and problem in text, text
    assert "Format 'preference' expects" in text


def test_data_check_counts_preference_tokens(tmp_path, tiny_tokenizer):
    path = write(tmp_path, GOOD + [{"prompt": "q", "chosen": "x", "rejected": "x"}])
    report = inspect_data(path, None, tiny_tokenizer)
    assert report.format == "preference" and report.valid_rows == 2 and len(report.problems) == 1
    assert report.token_lengths is not None and report.token_lengths.max > 0


def test_builder_makes_pairs_from_real_dialogs():
    from leantune.data.builtin import dialog_pairs

    pairs = dialog_pairs()
    rows = build_preference_pairs(pairs, mode="mixed", seed=1, limit=200)
    assert len(rows) == 200
    real = {(p["prompt"], p["completion"]) for p in pairs}
    assert all((r["prompt"], r["chosen"]) in real for r in rows)
    assert all(r["chosen"].strip() != r["rejected"].strip() for r in rows)
    kinds = {r["rejected_kind"] for r in rows}
    assert kinds == {"mismatch", "corrupt"}
    completions_by_cat = {}
    for p in pairs:
        completions_by_cat.setdefault(p["category"], set()).add(p["completion"])
    for r in rows:
        if r["rejected_kind"] == "mismatch":  # a real reply from another category
            assert any(r["rejected"] in c for cat, c in completions_by_cat.items() if cat != r["category"])
    assert build_preference_pairs(pairs, seed=1, limit=50) == build_preference_pairs(pairs, seed=1, limit=50)


def test_build_script_writes_valid_preference_jsonl(tmp_path):
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "recipes" / "rlhf" / "build_preferences.py"
    out = tmp_path / "prefs"
    argv = sys.argv
    sys.argv = [str(script), str(out), "60"]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
    res = load_examples(out / "train.jsonl", "preference")
    assert len(res.examples) > 40
    assert load_examples(out / "eval.jsonl", "preference").examples


def test_corrupt_reply_never_returns_original():
    import random

    rng = random.Random(0)
    for text in ["a b", "one two three four five", "single", "x y z"]:
        assert corrupt_reply(text, rng).strip() != text.strip()


def test_tokenized_pairs_share_prompt_and_keep_replies(tiny_tokenizer):
    ex = {"prompt": [{"role": "user", "content": "What is 2+2?"}], "chosen": "4", "rejected": "five"}
    [f] = tokenize_preferences([ex], tiny_tokenizer, CHATML, 64)
    assert f["input_ids"][: f["chosen_prompt_len"]] == f["rejected_ids"][: f["rejected_prompt_len"]]
    reply = tiny_tokenizer.decode(f["input_ids"][f["chosen_prompt_len"]:])
    assert reply == "4<|im_end|>"
    # overlong: the prompt loses its start, the reply is kept
    prompt = render_prompt(tiny_tokenizer, CHATML, [{"role": "user", "content": "x" * 100}])
    ids, n = encode_pair(tiny_tokenizer, prompt, render_reply(tiny_tokenizer, CHATML, ex["prompt"], "abc"), 32)
    assert len(ids) == 32 and tiny_tokenizer.decode(ids[n:]) == "abc<|im_end|>"
