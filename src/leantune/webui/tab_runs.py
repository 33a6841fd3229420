"""Runs tab: every run in the workspace with its status and key metrics; several chosen are
compared (the table and charts of `leantune compare`, without training anything)."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from ..errors import LeantuneError
from ..workflows.compare import compare_runs
from .board import Board
from .progress import read_progress, run_row

COMPARE_COLUMNS = ["variant", "metric", "trainable_params", "wall_time_s", "tokens_per_s", "peak_memory_mb",
                   "estimate_mb", "status"]


def runs_table(board: Board) -> pd.DataFrame:
    rows = []
    for run_dir in board.workspace.runs():
        row = run_row(run_dir, read_progress(run_dir, board.jobs.get(run_dir)))
        rows.append({"run": board.workspace.rel(run_dir), **{k: v for k, v in row.items() if k != "name"}})
    return pd.DataFrame(rows)


DECIMALS = {"metric": 4, "wall_time_s": 1, "tokens_per_s": 0, "peak_memory_mb": 0, "estimate_mb": 0}


def _rounded(key: str, value):
    if key not in DECIMALS or not isinstance(value, (int, float)):
        return value
    return round(value, DECIMALS[key]) if DECIMALS[key] else int(round(value))


def comparison_folder(board: Board, runs: list[str]) -> Path:
    name = "-vs-".join(Path(r).name for r in runs)[:120]
    return board.workspace.root / "comparisons" / name


def compare(board: Board, runs: list[str]) -> tuple[str, pd.DataFrame, list[str]]:
    """(heading, table, chart files) of the chosen runs."""
    if not runs or len(runs) < 2:
        raise LeantuneError("compare: choose two runs or more")
    run_dirs = [board.workspace.path(r, must_exist=True, what="run") for r in runs]
    out = comparison_folder(board, runs)
    result = compare_runs(run_dirs, out)
    table = pd.DataFrame([{k: _rounded(k, r.get(k)) for k in COMPARE_COLUMNS} for r in result.rows])
    table = table.rename(columns={"metric": result.metric or "metric"})
    heading = (f"compared on **{result.metric or 'no common metric'}** · table and charts in "
               f"{board.workspace.rel(out)}/compare.md")
    return heading, table, [str(c) for c in result.charts]


def build(board: Board) -> gr.CheckboxGroup:
    table = gr.Dataframe(runs_table(board), label="Runs in the workspace", interactive=False, wrap=True,
                         elem_id="runs-table")
    refresh = gr.Button("Refresh", elem_id="runs-refresh")
    chosen = gr.CheckboxGroup(board.run_choices(), label="Compare these runs", elem_id="runs-choose")
    go = gr.Button("Compare", variant="primary", elem_id="runs-compare")
    heading = gr.Markdown(elem_id="compare-heading")
    result = gr.Dataframe(label="Comparison", interactive=False, elem_id="compare-table")
    charts = gr.Gallery(label="Charts", columns=3, height="auto", elem_id="compare-charts")

    def on_refresh(current):
        choices = board.run_choices()
        return runs_table(board), gr.update(choices=choices, value=[c for c in current or [] if c in choices])

    def on_compare(runs):
        try:
            return compare(board, runs)
        except LeantuneError as exc:
            return f"**error:** {exc}", None, None

    refresh.click(on_refresh, [chosen], [table, chosen])
    go.click(on_compare, [chosen], [heading, result, charts])
    gr.Timer(5.0).tick(lambda: runs_table(board), None, [table])
    return chosen
