"""`consult`: the advisor as one call, the same ranking `rank` gives and the same text `leantune advise` prints."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from leantune.cli import app
from leantune.errors import LeantuneError
from leantune.guide.advisor import Situation, rank
from leantune.guide.consult import budget_memory, consult
from leantune.guide.data_facts import read_data, situation_from_data

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SENTENCE = ("the model of a space probe is in orbit and the crew of the station is on the way to the moon with "
            "a new engine for the rocket")
WORDS = SENTENCE.split()


@pytest.fixture
def cls_file(tmp_path):
    rows = [{"text": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(12)) + f" topic{c} {i}", "label": f"topic{c}"}
            for c in range(8) for i in range(8)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_consult_ranks_a_data_file_as_rank_does(tmp_path, cls_file):
    found = consult(cls_file, recipes_dir=tmp_path / "rec")
    facts = read_data(cls_file, None, "minilm-l6")
    expected = rank(situation_from_data(facts, Situation(labelled=0)), None, str(cls_file))
    rows = found.rows()
    assert [(r["approach"], r["score"], r["reasons"]) for r in rows] == \
        [(a.approach, a.score, a.reasons) for a in expected.advice]
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert found.dropped == expected.dropped and found.facts_lines == facts.lines()
    assert "8 labels, 8 examples per label" in found.facts_lines
    assert found.header == "task: classification · model: minilm-l6 · memory budget 24GB"
    by = {r["approach"]: r for r in rows}
    assert by["full"]["model"] == "" and by["pet"]["model"] == "smollm2-135m"  # only a model other than the default
    assert by["full"]["recipe_line"].startswith("recipe: 160 steps × batch 8, lr ") and by["icl"]["recipe_line"] == ""
    assert by["full"]["fits"] is True and by["full"]["memory_mb"] > 0 and by["active_learning"]["memory_mb"] is None
    assert by["full"]["recipe"] == str(tmp_path / "rec" / "full.yaml") and (tmp_path / "rec" / "full.yaml").is_file()
    assert by["active_learning"]["recipe"] is None  # advice only: no recipe


def test_budget_memory():
    assert budget_memory("24GB", "t4") == "16GB" and budget_memory("24GB", "NVIDIA-H200") == "141GB"
    assert budget_memory("24GB", "a100-40gb") == "40GB" and budget_memory("24GB", "rtx4090") == "24GB"
    assert budget_memory("24GB", "nvidia-a6000-48gb") == "48gb"
    assert budget_memory("8GB", None) == "8GB" and budget_memory(None, None) == "24GB"
    with pytest.raises(LeantuneError, match=r"--gpu 'voodoo2': one of t4, .*h200, or a name ending in NNGB"):
        budget_memory("24GB", "voodoo2")


def test_consult_refuses_what_advise_refuses(tmp_path):
    with pytest.raises(LeantuneError, match="--task 'poetry'; one of classification"):
        consult(None, task="poetry", labelled=10)
    with pytest.raises(LeantuneError, match="give a DATA file, or the number of labelled examples"):
        consult(None)
    with pytest.raises(LeantuneError, match="nope.jsonl: no such file"):
        consult(tmp_path / "nope.jsonl")


def test_advise_prints_the_consultation():
    found = consult(None, task="classification", labelled=12, memory="8GB", time_h=2.5)
    result = CliRunner().invoke(app, ["advise", "--task", "classification", "-n", "12", "--memory", "8GB",
                                      "--time", "2.5"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert found.facts_lines == ["classification, 12 labelled examples (no data file read)"]
    assert found.header == "task: classification · model: minilm-l6 · memory budget 8GB · 2.5 h"
    at = out.index(found.header)
    for r in found.rows():  # each row's rank, approach and score, in order
        at = out.index(f"│ {r['rank']}. {r['approach']} ", at)
        at = out.index(f"│ score {r['score']} ", at)
    assert len(found.rows()) >= 5 and found.facts_lines[0] in out
