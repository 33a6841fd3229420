"""data.retrieval end to end on the tiny causal LM: training adds the documentation (the run
records its corpus), and `eval`, `chat`, `serve` read it again, or newer documentation with
--corpus; misuse is one sentence and exit 2."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from leantune.cli import app
from leantune.data.retrieval import REFERENCE
from leantune.prompting.documentation import CORPUS_KEY
from leantune.serving.models import load_served
from leantune.serving.specs import read_specs

pytestmark = pytest.mark.usefixtures("torch_single_thread")
runner = CliRunner()

QA = [("How full are my disks?", "`df -h`", "df.md", "df -h shows free disk space per filesystem."),
      ("How do I unpack an archive?", "`tar -xf a.tar`", "tar.md", "tar -xf FILE extracts an archive."),
      ("How do I search text?", "`grep -r word .`", "grep.md", "grep -r PATTERN searches files for text.")]


def _setup(tmp_path, model_dir, retrieval: bool = True, stage: str = "sft"):
    docs = tmp_path / "cmd_docs"
    docs.mkdir(exist_ok=True)
    for _, _, name, text in QA:
        (docs / name).write_text(text)
    rows = [{"instruction": q, "input": "", "output": a} for q, a, _, _ in QA] * 4
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"model": str(model_dir), "method": {"name": "lora", "r": 4}, "stage": stage,
              "data": {"train": "train.jsonl", "eval": "train.jsonl", "format": "alpaca"},
              "train": {"max_steps": 2, "batch_size": 4, "max_length": 160, "precision": "fp32"},
              "eval": {"batch_size": 4, "before": False, "prompts": ["How full are my disks?"],
                       "max_new_tokens": 4},
              "output": {"dir": str(tmp_path / "runs"), "name": "docs-run" if retrieval else "plain"}}
    if retrieval:
        recipe["data"]["retrieval"] = {"corpus": "cmd_docs", "k": 1}
    path = tmp_path / f"recipe-{recipe['output']['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_retrieval_run_records_and_reads_its_documentation(tmp_path, tiny_model_dir, monkeypatch):
    recipe = _setup(tmp_path, tiny_model_dir("llama"))
    r = runner.invoke(app, ["train", str(recipe)])
    assert r.exit_code == 0, r.output
    assert "data.retrieval: top 1 of 3 passages (bm25)" in " ".join(r.output.split())
    run = tmp_path / "runs" / "docs-run"
    meta = json.loads((run / "run.json").read_text())
    assert meta[CORPUS_KEY] == str((tmp_path / "cmd_docs").resolve())

    monkeypatch.chdir(tmp_path.parent)  # the recorded absolute path, not the recipe's relative one
    data = ["--data", str(tmp_path / "train.jsonl")]
    same = runner.invoke(app, ["eval", str(run), *data])
    assert same.exit_code == 0, same.output
    newer = tmp_path / "newer"
    shutil.copytree(tmp_path / "cmd_docs", newer)
    (newer / "df.md").write_text("In version 9, df -h was renamed df --human-units and prints more columns.")
    changed = runner.invoke(app, ["eval", str(run), *data, "--corpus", str(newer)])
    assert changed.exit_code == 0, changed.output
    assert json.loads(same.output)["loss"] != json.loads(changed.output)["loss"]  # other passages, other loss

    chat = runner.invoke(app, ["chat", str(run), "--prompt", "How full are my disks?", "--max-new-tokens", "3"])
    assert chat.exit_code == 0, chat.output

    served = load_served(read_specs([str(run)]))
    entry = served.entries[next(iter(served.entries))]
    asked = entry.ask([{"role": "user", "content": "How full are my disks?"}], 8)
    assert asked[0]["content"].startswith("How full are my disks?\n\n" + REFERENCE)
    assert "df -h shows free disk space" in asked[0]["content"]


def test_misuse_is_one_sentence(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    plain = _setup(tmp_path, model, retrieval=False)
    assert runner.invoke(app, ["train", str(plain)]).exit_code == 0
    r = runner.invoke(app, ["eval", str(tmp_path / "runs" / "plain"), "--corpus", str(tmp_path / "cmd_docs")])
    assert r.exit_code == 2 and "trained without data.retrieval" in r.output

    recipe = _setup(tmp_path, model)
    data = yaml.safe_load(recipe.read_text())
    data["data"]["retrieval"]["corpus"] = "missing-docs"
    recipe.write_text(yaml.safe_dump(data))
    r = runner.invoke(app, ["train", str(recipe)])
    assert r.exit_code == 2 and "data.retrieval.corpus" in r.output and "Traceback" not in r.output


def test_judge_asks_a_retrieval_run_with_its_documentation(tmp_path, tiny_model_dir, monkeypatch):
    """`leantune judge` puts each question to a retrieval run as training did (passages after the
    question), and to a plain run as it is; the judge sees the question alone."""
    import leantune.workflows.judge as judge_workflow

    model = tiny_model_dir("llama")
    for retrieval in (True, False):
        assert runner.invoke(app, ["train", str(_setup(tmp_path, model, retrieval))]).exit_code == 0
    asked = []
    real = judge_workflow.generate_conversations
    monkeypatch.setattr(judge_workflow, "generate_conversations",
                        lambda m, tok, convs, *a, **k: asked.append(convs) or real(m, tok, convs, *a, **k))
    out = tmp_path / "j"
    r = runner.invoke(app, ["judge", str(tmp_path / "runs" / "docs-run"), str(tmp_path / "runs" / "plain"),
                            "--data", str(tmp_path / "train.jsonl"), "--max", "2", "--judge", str(model),
                            "--max-new-tokens", "4", "--judge-max-tokens", "8", "--out", str(out)])
    assert r.exit_code == 0, r.output
    with_docs, plain = asked
    for convs, (question, _, _, text) in zip(zip(with_docs, plain), QA[:2]):
        docs_turn, plain_turn = convs[0][-1]["content"], convs[1][-1]["content"]
        assert plain_turn == question and docs_turn.startswith(question) and text in docs_turn
    judged = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert [j["question"] for j in judged] == [q for q, *_ in QA[:2]]
