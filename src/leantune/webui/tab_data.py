"""Data tab: choose or upload a file, check it as `leantune data check` does, preview it, and
show its statistics (examples, labels, token lengths)."""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pandas as pd

from ..data.formats import FORMATS, load_examples
from ..data.inspect import DataReport, inspect_data
from ..errors import LeantuneError
from .board import Board, model_argument, refreshed

DETECT = "detect"
PREVIEW_ROWS = 20
HISTOGRAM_BINS = 12


def label_frame(report: DataReport) -> pd.DataFrame:
    counts = sorted((report.label_counts or {}).items(), key=lambda kv: -kv[1])
    return pd.DataFrame({"label": [str(k) for k, _ in counts], "examples": [v for _, v in counts]})


def length_frame(counts: list[int] | None, bins: int = HISTOGRAM_BINS) -> pd.DataFrame:
    """A histogram of token lengths: one row per bin, labelled with its range."""
    if not counts:
        return pd.DataFrame({"tokens": [], "examples": []})
    low, high = min(counts), max(counts)
    width = max(1, -(-(high - low + 1) // bins))
    edges = list(range(low, high + 1, width))
    rows = [(f"{e}–{e + width - 1}", sum(e <= c < e + width for c in counts)) for e in edges]
    return pd.DataFrame({"tokens": [r[0] for r in rows], "examples": [r[1] for r in rows]})


def preview(path: Path, fmt: str | None) -> pd.DataFrame:
    loaded = load_examples(path, fmt, skip_invalid=True)
    rows = []
    for ex in loaded.examples[:PREVIEW_ROWS]:
        body = {k: v for k, v in ex.items() if k != "line"}
        rows.append({"line": ex.get("line", ""), "example": json.dumps(body, ensure_ascii=False)[:400]})
    return pd.DataFrame(rows, columns=["line", "example"])


def check(board: Board, name: str | None, fmt: str | None, tokenizer_model: str | None) -> tuple:
    """(summary, problems, facts, preview, labels, lengths) of one workspace file."""
    path = board.workspace.path(name or "", must_exist=True, what="data file")
    tokenizer = board.tokenizer(model_argument(board.workspace, tokenizer_model)) if tokenizer_model else None
    chosen = None if fmt in (None, "", DETECT) else fmt
    report = inspect_data(path, chosen, tokenizer)
    report.path = board.workspace.rel(path)
    facts = pd.DataFrame(report.table_rows(), columns=["", "value"])
    problems = "\n".join(line.replace(str(path), report.path) for line in report.problem_lines())
    verdict = (f"**{len(report.problems)} problem(s)** in {report.path}: every one is listed below "
               f"(file:line: field: problem)" if report.problems
               else f"**{report.path}**: {report.valid_rows} valid examples, no problems")
    if not tokenizer_model:
        verdict += " · give a model to measure token lengths"
    notes = "".join(f"\n\nnote: {n}" for n in report.notes)
    return (verdict + notes, problems, facts, preview(path, chosen), label_frame(report),
            length_frame(report.token_counts))


def build(board: Board) -> gr.Dropdown:
    with gr.Row():
        with gr.Column(scale=1):
            files = gr.Dropdown(board.workspace.data_files(), label="Data file in the workspace",
                                allow_custom_value=True, elem_id="data-file")
            upload = gr.File(label="…or upload one", file_types=[".jsonl", ".json", ".csv", ".tsv", ".parquet",
                                                                  ".txt"], elem_id="data-upload")
            fmt = gr.Dropdown([DETECT, *FORMATS], value=DETECT, label="Format", elem_id="data-format")
            tokenizer_model = gr.Textbox(label="Model whose tokenizer measures lengths (optional)",
                                         placeholder="smollm2-135m, a hub id or a folder in the workspace",
                                         elem_id="data-tokenizer")
            run = gr.Button("Check", variant="primary", elem_id="data-check")
        with gr.Column(scale=2):
            verdict = gr.Markdown(elem_id="data-verdict")
            problems = gr.Textbox(label="Problems", lines=6, max_lines=20, interactive=False,
                                  elem_id="data-problems")
            facts = gr.Dataframe(label="Statistics", interactive=False, elem_id="data-facts")
    with gr.Row():
        labels = gr.BarPlot(x="label", y="examples", label="Examples per label", elem_id="data-labels")
        lengths = gr.BarPlot(x="tokens", y="examples", label="Token lengths", sort=None, elem_id="data-lengths")
    table = gr.Dataframe(label=f"Preview (first {PREVIEW_ROWS} valid examples)", interactive=False,
                         wrap=True, elem_id="data-preview")
    outputs = [verdict, problems, facts, table, labels, lengths]

    def on_check(name, chosen_format, model):
        try:
            return check(board, name, chosen_format, model)
        except LeantuneError as exc:
            return (f"**error:** {exc}", "", None, None, None, None)

    def on_upload(file):
        if file is None:
            return gr.update(), ""
        try:
            saved = board.workspace.save_upload(Path(file), Path(file).name)
        except LeantuneError as exc:
            return gr.update(), f"**error:** {exc}"
        name = board.workspace.rel(saved)
        return refreshed(board.workspace.data_files(), name), f"uploaded to **{name}**"

    run.click(on_check, [files, fmt, tokenizer_model], outputs)
    upload.upload(on_upload, [upload], [files, verdict]).then(on_check, [files, fmt, tokenizer_model], outputs)
    return files
