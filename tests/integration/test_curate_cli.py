"""`leantune data curate` on real 20 Newsgroups posts with planted duplicates, noise and leaks;
diversity selection on the packaged MiniLM's sentence embeddings."""
from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from typer.testing import CliRunner

from leantune.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("torch_test_threads")]

LABELS = ["rec.sport.hockey", "sci.med"]
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """20 posts per label (60 words each), then planted: 3 exact and 2 near duplicates, 2 degenerate
    rows, 1 invalid row, 1 unreadable line; plus an evaluation file that leaks 2 of the posts."""
    from leantune.data.builtin import newsgroups

    folder = tmp_path_factory.mktemp("curate")
    posts = {lab: [] for lab in LABELS}
    seen = set()
    for r in newsgroups("train"):
        words = r["text"].split()
        if r["label"] in posts and len(posts[r["label"]]) < 20 and len(words) >= 60 and words[5] not in seen:
            seen.add(words[5])
            posts[r["label"]].append({"text": " ".join(words[:60]), "label": r["label"]})
    rows = [p for pair in zip(*posts.values()) for p in pair]  # alternating labels, 40 rows
    planted = [dict(rows[0]), dict(rows[5]), {**rows[9], "text": rows[9]["text"].upper()},
               {**rows[2], "text": rows[2]["text"].rsplit(" ", 1)[0]},  # the last word cut: near
               {**rows[7], "text": rows[7]["text"] + " thanks"},
               {"text": "ha " * 40, "label": LABELS[0]}, {"text": "#### ---- ####", "label": LABELS[1]},
               {"text": "no label"}]
    lines = [json.dumps(r) for r in rows + planted] + ["{not json"]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    leaks = [{"question": " ".join(rows[i]["text"].split()[20:40]), "answer": "?"} for i in (12, 31)]
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in leaks))
    return folder, len(lines)


def _counts(output: str) -> dict[str, int]:
    return {m[0]: int(m[1]) for m in re.findall(r"(input|kept|dropped: [a-z-]+)\s*│\s*(\d+)", output)}


def test_curate_counts_reasons_and_loses_nothing(data):
    folder, total = data
    out = folder / "curated.jsonl"
    r = runner.invoke(app, ["data", "curate", str(folder / "train.jsonl"), "--out", str(out), "--max", "20",
                            "--decontaminate", str(folder / "eval.jsonl")], env={"COLUMNS": "120"})
    assert r.exit_code == 0, r.output
    assert _counts(r.output) == {"input": total, "dropped: invalid": 2, "dropped: repeated-words": 1,
                                 "dropped: junk": 1, "dropped: contaminated": 2, "dropped: exact-duplicate": 3,
                                 "dropped: near-duplicate": 2, "dropped: not-selected": 18, "kept": 20}
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    dropped = [json.loads(x) for x in (folder / "curated.dropped.jsonl").read_text().splitlines()]
    assert len(kept) + len(dropped) == total
    assert Counter(k["label"] for k in kept) == {LABELS[0]: 10, LABELS[1]: 10}  # the balance of the 38 left
    assert {d["line"] for d in dropped if d["reason"] == "contaminated"} == {13, 32}
    assert sorted(d["duplicate_of"] for d in dropped if "duplicate" in d["reason"]) == [1, 3, 6, 8, 10]
    assert next(d for d in dropped if d["line"] == total)["raw"] == "{not json"
    original = (folder / "train.jsonl").read_text().splitlines()
    assert all(line in original for line in out.read_text().splitlines())  # rows kept as written


def test_curate_refuses_an_existing_output_and_bad_input(data):
    folder, _ = data
    src, out = folder / "train.jsonl", folder / "mine.jsonl"
    out.write_text("precious\n")
    r = runner.invoke(app, ["data", "curate", str(src), "--out", str(out), "--dedup", "exact"])
    assert r.exit_code == 2 and "--force" in r.output and "Traceback" not in r.output
    assert out.read_text() == "precious\n" and not (folder / "mine.dropped.jsonl").exists()
    bad = [(["--dedup", "fuzzy"], "unknown --dedup kind"), (["--out", str(folder / "x.csv")], "same extension"),
           (["--near-threshold", "1.5"], "--near-threshold")]
    for args, message in bad:
        r = runner.invoke(app, ["data", "curate", str(src), "--out", str(folder / "new.jsonl"), *args])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    r = runner.invoke(app, ["data", "curate", str(folder / "missing.jsonl"), "--out", str(folder / "new.jsonl")])
    assert r.exit_code == 2 and "not found" in r.output
    assert not (folder / "new.jsonl").exists() and not (folder / "x.csv").exists()
    r = runner.invoke(app, ["data", "curate", str(src), "--out", str(out), "--dedup", "none", "--force"])
    assert r.exit_code == 0 and _counts(r.output)["kept"] == 45  # 40 posts, 3 exact and 2 near copies


def test_curate_says_when_nothing_is_kept(data):
    folder, n_lines = data
    src, out = folder / "train.jsonl", folder / "none-kept.jsonl"
    r = runner.invoke(app, ["data", "curate", str(src), "--out", str(out), "--dedup", "none", "--min-chars", "100000"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "warning: no row was kept" in text and "dropped as too-short" in text, text
    assert out.read_text() == "" and len((folder / "none-kept.dropped.jsonl").read_text().splitlines()) == n_lines
