"""Advise tab: what "Prove it" launches (the ranking metric for generation candidates included)."""
from __future__ import annotations

import json

import pytest
from typer.main import get_command

from leantune.cli import app
from leantune.webui.board import Board
from leantune.webui.tab_advise import AUTO, BY_LOSS, NO_GPU, start_prove
from leantune.webui.workspace import Workspace


class RecordingJobs:
    def __init__(self):
        self.launched = []

    def launch(self, run_dir, args, cwd, log_name):
        self.launched.append(args)


@pytest.mark.parametrize("metric, expected", [("rouge_l", ["--metrics", "rouge_l"]), (BY_LOSS, [])])
def test_prove_launches_advise_with_the_chosen_metric(tmp_path, metric, expected):
    ws = Workspace(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "chat.jsonl").write_text("".join(
        json.dumps({"instruction": f"Repeat {w}.", "output": f"{w} {w}"}) + "\n" for w in ("a", "b", "c", "d", "e")))
    board = Board(workspace=ws, jobs=RecordingJobs())
    folder = start_prove(board, "data/chat.jsonl", AUTO, "24GB", NO_GPU, None, None, 2, None, metric)
    (args,) = board.jobs.launched
    assert folder == "advice/chat" and args[:3] == ["advise", str(tmp_path / "data" / "chat.jsonl"), "--prove"]
    assert args[-2:] == expected or not expected and "--metrics" not in args
    params = {opt for p in get_command(app).commands["advise"].params for opt in p.opts}
    assert {a for a in args if a.startswith("--")} <= params  # every flag is one the CLI has
