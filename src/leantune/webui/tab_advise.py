"""Advise tab: the advisor's ranking for a data file and a budget, with its reasons and the
memory estimate per candidate; one click runs `leantune advise --prove` in the background and
its table fills in as the candidates train."""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pandas as pd

from ..atomic import atomic_write_text
from ..errors import LeantuneError
from ..guide.advisor import TASKS
from ..guide.consult import consult
from ..guide.gpus import GPUS
from ..recipe import TEXT_METRICS
from ..workflows.prove import candidates
from .board import Board, model_argument
from .progress import read_progress, run_row

AUTO = "from the data"
NO_GPU = "none (memory budget)"
BY_LOSS = "validation loss / the task's own"
RANK_COLUMNS = ["rank", "approach", "score", "estimated MB", "fits", "why"]


def _consult(board: Board, data: str, task: str, memory: str, gpu: str, hours: float | None, model: str | None):
    path = board.workspace.path(data or "", must_exist=True, what="data file")
    return path, consult(path, task=None if task == AUTO else task, memory=memory or "24GB",
                         gpu=None if gpu in (None, "", NO_GPU) else gpu, time_h=hours or None,
                         model=model_argument(board.workspace, model) or None, data=board.workspace.rel(path))


def ranking(board: Board, data: str, task: str, memory: str, gpu: str, hours: float | None,
            model: str | None = None) -> tuple[str, pd.DataFrame]:
    """(what the advisor read and assumed, the ranking table)."""
    path, c = _consult(board, data, task, memory, gpu, hours, model)
    rows = [[r["rank"], r["approach"] + (f" on {r['model']}" if r["model"] else ""), r["score"],
             "" if r["memory_mb"] is None else f"{r['memory_mb']:,.0f}",
             {True: "yes", False: "over budget", None: ""}[r["fits"]],
             " ".join([*r["reasons"], r["note"], r["recipe_line"]]).strip()] for r in c.rows()]
    facts = [line.replace(str(path), board.workspace.rel(path)) for line in c.facts_lines]
    text = "\n\n".join([*facts, f"_{c.header}_", *(f"note: {n}" for n in c.notes),
                        *([f"left out (cannot run here): {'; '.join(c.dropped)}"] if c.dropped else [])])
    return text.replace(f"{board.workspace.root}/", ""), pd.DataFrame(rows, columns=RANK_COLUMNS)


def prove_folder(board: Board, data: str) -> Path:
    return board.workspace.root / "advice" / Path(data).stem


def _candidates_file(board: Board, out: Path) -> Path:
    return board.workspace.root / ".leantune-webui" / "proofs" / f"{out.name}.json"


def start_prove(board: Board, data: str, task: str, memory: str, gpu: str, hours: float | None,
                model: str | None, top: int, minutes: float | None, metric: str | None = None) -> str:
    """Launch `advise --prove`; ``metric`` (one of TEXT_METRICS) ranks the generation candidates by their
    answers to the held-out examples instead of by loss."""
    path, c = _consult(board, data, task, memory, gpu, hours, model)
    out = prove_folder(board, data)
    picked = [a.approach for a in candidates(c.ranking.advice, int(top or 3))]
    args = ["advise", str(path), "--prove", "--out", str(out), "--top", str(int(top or 3)),
            "--budget", memory or "24GB"]
    args += [] if task == AUTO else ["--task", task]
    args += [] if gpu in (None, "", NO_GPU) else ["--gpu", gpu]
    args += ["--time", str(hours)] if hours else []
    args += ["--model", model_argument(board.workspace, model)] if model else []
    args += ["--budget-minutes", str(minutes)] if minutes else []
    args += ["--metrics", metric] if metric in TEXT_METRICS else []
    board.jobs.launch(out, args, cwd=board.workspace.root, log_name=f"advise-{path.stem}")
    atomic_write_text(_candidates_file(board, out), json.dumps(picked))
    return board.workspace.rel(out)


def prove_table(board: Board, data: str) -> tuple[str, pd.DataFrame]:
    """The candidates `--prove` trains, each with its run's progress; the winner when known."""
    out = prove_folder(board, data)
    job = board.jobs.get(out)
    if job is None or not _candidates_file(board, out).is_file():
        return "", pd.DataFrame()
    rows = []
    for approach in json.loads(_candidates_file(board, out).read_text(encoding="utf-8")):
        run_dir = out / "runs" / approach
        row = run_row(run_dir, read_progress(run_dir, job if (run_dir / "run.json").is_file() else None))
        row["model"] = str(row["model"]).replace(f"{board.workspace.root}/", "")
        rows.append({"approach": approach, **{k: v for k, v in row.items() if k not in ("name", "method")}})
    state = "running" if job.alive() else f"ended (exit {board.jobs.exit_code(out)})"
    text = f"`leantune advise --prove` {state} · folder {board.workspace.rel(out)}"
    result = out / "prove.json"
    if result.is_file():
        winner = json.loads(result.read_text(encoding="utf-8")).get("winner")
        text += (f"\n\n**measured winner: {winner['approach']}** ({winner['metric']} {winner['value']:.4f}); "
                 f"recipe {board.workspace.rel(Path(winner['recipe']))}" if winner else "\n\nno candidate finished")
    return text, pd.DataFrame(rows)


def build(board: Board) -> gr.Dropdown:
    with gr.Row():
        with gr.Column(scale=1):
            data = gr.Dropdown(board.workspace.data_files(), label="Data file", allow_custom_value=True,
                               elem_id="advise-data")
            task = gr.Dropdown([AUTO, *TASKS], value=AUTO, label="Task", elem_id="advise-task")
            memory = gr.Textbox("24GB", label="Memory budget", elem_id="advise-memory")
            gpu = gr.Dropdown([NO_GPU, *GPUS], value=NO_GPU, label="…or a GPU", elem_id="advise-gpu")
            hours = gr.Number(None, label="Time budget (hours, optional)", elem_id="advise-hours")
            model = gr.Textbox(label="Model (empty: the advisor's choice)", elem_id="advise-model",
                               placeholder="smollm2-135m, minilm-l6, a hub id or a folder in the workspace")
            go = gr.Button("Advise", variant="primary", elem_id="advise-go")
        with gr.Column(scale=3):
            facts = gr.Markdown(elem_id="advise-facts")
            table = gr.Dataframe(label="Ranking", interactive=False, wrap=True, elem_id="advise-ranking")
    with gr.Row():
        top = gr.Number(3, label="Candidates to train", precision=0, elem_id="prove-top")
        minutes = gr.Number(None, label="Start no candidate after (minutes)", elem_id="prove-minutes")
        metric = gr.Dropdown([BY_LOSS, *TEXT_METRICS], value=BY_LOSS, elem_id="prove-metric",
                             label="Rank generation candidates by (their answers to held-out examples)")
        prove = gr.Button("Prove it: train the top candidates", elem_id="prove-go")
    prove_text = gr.Markdown(elem_id="prove-status")
    prove_rows = gr.Dataframe(label="Proof (fills in as candidates train)", interactive=False,
                              elem_id="prove-table")
    form = [data, task, memory, gpu, hours, model]

    def on_advise(*vals):
        try:
            return ranking(board, *vals)
        except LeantuneError as exc:
            return f"**error:** {exc}", None

    def on_prove(*vals):
        try:
            return f"started in {start_prove(board, *vals)}"
        except LeantuneError as exc:
            return f"**error:** {exc}"

    def on_tick(chosen):
        try:
            text, rows = prove_table(board, chosen)
        except LeantuneError:
            return gr.update(), gr.update()
        return (text or gr.update()), (rows if len(rows) else gr.update())

    go.click(on_advise, form, [facts, table])
    prove.click(on_prove, [*form, top, minutes, metric], [prove_text])
    gr.Timer(2.0).tick(on_tick, [data], [prove_text, prove_rows])
    return data
