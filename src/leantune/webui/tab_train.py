"""Train tab: the recipe as a form and as YAML (edit either), Start / Stop / Resume of a
`leantune train` process, and the run's progress: step, loss and eval curves, tokens/s,
memory beside the estimate, the log."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from ..atomic import atomic_write_text
from ..errors import LeantuneError
from ..recipe import Recipe
from ..run_dir import check_run_dir, run_path
from . import recipe_form as rf
from .board import Board, checked_paths, model_argument, refreshed
from .progress import Progress, read_progress

DRAFTS = ".leantune-webui/drafts"


def _absolute_output(board: Board, recipe: Recipe) -> Recipe:
    copy = recipe.model_copy(deep=True)
    copy.output.dir = str(board.workspace.path(recipe.output.dir))
    return copy


def checked_recipe(board: Board, text: str) -> tuple[Recipe, Path]:
    """The recipe validated as the CLI validates it, and the file it will be saved to."""
    target = rf.recipe_path(board.workspace.root / "recipes", text)
    draft = board.workspace.root / DRAFTS / target.name
    draft.parent.mkdir(parents=True, exist_ok=True)
    recipe = rf.validate(text, draft, board.workspace.rel(target))
    if Path(recipe.model.name).is_absolute() or (board.workspace.root / recipe.model.name).exists():
        model_argument(board.workspace, recipe.model.name)
    checked_paths(board.workspace, [recipe.data.train, recipe.data.eval, recipe.data.unlabeled
                                    if recipe.data.unlabeled != "keep" else None, recipe.output.dir])
    return recipe, target


def save_recipe(target: Path, text: str) -> Path:
    """Save the page's recipe; a different file of that name stays, the new one gets ``-2``, ``-3``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    path, n = target, 1
    while path.exists() and path.read_text(encoding="utf-8") != text:
        n += 1
        path = target.with_name(f"{target.stem}-{n}{target.suffix}")
    if not path.exists():
        atomic_write_text(path, text)
    return path


def start(board: Board, text: str, processes: int | None) -> str:
    """Start a new training; the run's folder, as the page shows it."""
    recipe, target = checked_recipe(board, text)
    run_dir = run_path(_absolute_output(board, recipe))
    check_run_dir(_absolute_output(board, recipe), resume=False)
    path = save_recipe(target, text)
    board.jobs.start(path, run_dir, cwd=board.workspace.root, nproc=int(processes or 1))
    return board.workspace.rel(run_dir)


def resume(board: Board, run: str) -> str:
    run_dir = board.workspace.path(run, must_exist=True, what="run")
    job = board.jobs.get(run_dir)
    recipe = next((a for a in (job.args if job else [])[1:] if a.endswith((".yaml", ".yml"))), None)
    board.jobs.start(Path(recipe or run_dir / "recipe.yaml"), run_dir, resume=True, cwd=board.workspace.root)
    return run


def progress_view(board: Board, run: str | None) -> tuple[str, pd.DataFrame, pd.DataFrame, str]:
    """(status line, loss curve, eval curve, log) of a run."""
    empty = pd.DataFrame({"step": [], "value": [], "metric": []})
    if not run:
        return "no run chosen", empty, empty, ""
    run_dir = board.workspace.path(run)
    job = board.jobs.get(run_dir)
    log = board.jobs.log_tail(run_dir) if job else ""
    p = read_progress(run_dir, job, log)
    losses = pd.DataFrame({"step": [s for s, _ in p.losses], "value": [v for _, v in p.losses],
                           "metric": ["train loss"] * len(p.losses)})
    evals = pd.DataFrame({"step": [s for s, _, _ in p.evals], "value": [v for _, _, v in p.evals],
                          "metric": [k for _, k, _ in p.evals]})
    return status_line(p), losses if len(losses) else empty, evals if len(evals) else empty, log


def status_line(p: Progress) -> str:
    parts = [f"**{p.status}**", p.detail]
    if p.tokens_per_s:
        parts.append(f"{p.tokens_per_s:,.0f} tokens/s")
    if p.peak_memory_mb is not None or p.estimate_mb is not None:
        peak = "—" if p.peak_memory_mb is None else f"{p.peak_memory_mb:,.0f} MB"
        est = "—" if p.estimate_mb is None else f"{p.estimate_mb:,.0f} MB"
        parts.append(f"{p.memory_kind or 'peak memory'}: {peak} (estimated {est})")
    return " · ".join(part for part in parts if part)


def build(board: Board) -> gr.Dropdown:
    values = rf.form_values(rf.starter_yaml())
    with gr.Row():
        with gr.Column(scale=1):
            inputs = {
                "model": gr.Textbox(values["model"], label="Model (packaged name, hub id or workspace folder)",
                                    elem_id="form-model"),
                "method": gr.Dropdown(rf.METHODS, value=values["method"], label="Method", elem_id="form-method"),
                "stage": gr.Dropdown(rf.STAGES, value=values["stage"], label="Stage", elem_id="form-stage"),
                "train_file": gr.Textbox(values["train_file"], label="Training data", elem_id="form-train"),
                "eval_file": gr.Textbox(values["eval_file"], label="Evaluation data (optional)",
                                        elem_id="form-eval"),
                "format": gr.Textbox(values["format"], label="Data format (empty: detected)", elem_id="form-format"),
                "max_steps": gr.Number(values["max_steps"], label="Max steps (empty: epochs)", precision=0,
                                       elem_id="form-max-steps"),
                "epochs": gr.Number(values["epochs"], label="Epochs", elem_id="form-epochs"),
                "batch_size": gr.Number(values["batch_size"], label="Batch size", precision=0,
                                        elem_id="form-batch"),
                "lr": gr.Number(values["lr"], label="Learning rate", elem_id="form-lr"),
                "max_length": gr.Number(values["max_length"], label="Max length (tokens)", precision=0,
                                        elem_id="form-max-length"),
                "device": gr.Dropdown(rf.DEVICES, value=values["device"], label="Device", elem_id="form-device"),
                "run_name": gr.Textbox(values["run_name"], label="Run name", elem_id="form-run-name"),
            }
            processes = gr.Number(1, label="Processes (torchrun when more than 1)", precision=0,
                                  elem_id="form-processes")
        with gr.Column(scale=1):
            yaml_box = gr.Textbox(rf.starter_yaml(), label="Recipe (YAML)", lines=24, max_lines=60,
                                  elem_id="recipe-yaml", elem_classes=["mono"])
            problems = gr.Markdown(elem_id="recipe-problems")
    with gr.Row():
        start_btn = gr.Button("Start", variant="primary", elem_id="train-start")
        stop_btn = gr.Button("Stop (checkpoint)", variant="stop", elem_id="train-stop")
        resume_btn = gr.Button("Resume", elem_id="train-resume")
        run = gr.Dropdown(board.run_choices(), label="Run", allow_custom_value=True, elem_id="train-run")
    status = gr.Markdown(elem_id="train-status")
    with gr.Row():
        loss_plot = gr.LinePlot(x="step", y="value", color="metric", label="Training loss", elem_id="train-loss")
        eval_plot = gr.LinePlot(x="step", y="value", color="metric", label="Evaluation", elem_id="train-eval")
    log = gr.Textbox(label="Log", lines=12, max_lines=12, autoscroll=True, interactive=False, elem_id="train-log")
    names = list(inputs)

    def problems_of(text: str) -> str:
        try:
            checked_recipe(board, text)
        except LeantuneError as exc:
            return f"**error:** {exc}"
        return "recipe valid"

    def form_to_yaml(text, *vals):
        try:
            new = rf.apply_form(text, dict(zip(names, vals)))
        except LeantuneError as exc:
            return gr.update(), f"**error:** {exc}"
        return new, problems_of(new)

    def yaml_to_form(text):
        try:
            vals = rf.form_values(text)
        except LeantuneError as exc:
            return [gr.update()] * len(names) + [f"**error:** {exc}"]
        return [vals[n] for n in names] + [problems_of(text)]

    def on_start(text, nproc):
        try:
            chosen = start(board, text, nproc)
        except LeantuneError as exc:
            return gr.update(), f"**error:** {exc}"
        return refreshed(board.run_choices(), chosen), f"started {chosen}"

    def on_stop(chosen):
        if not chosen:
            return "choose a run"
        try:
            stopped = board.jobs.stop(board.workspace.path(chosen))
        except LeantuneError as exc:
            return f"**error:** {exc}"
        return f"stopped {chosen}; Resume continues from its checkpoint" if stopped else f"{chosen} is not running"

    def on_resume(chosen):
        try:
            return f"resumed {resume(board, chosen)}"
        except LeantuneError as exc:
            return f"**error:** {exc}"

    def on_tick(chosen):
        try:
            return progress_view(board, chosen)
        except LeantuneError as exc:
            return f"**error:** {exc}", gr.update(), gr.update(), gr.update()

    for name in names:
        inputs[name].input(form_to_yaml, [yaml_box, *inputs.values()], [yaml_box, problems])
    yaml_box.blur(yaml_to_form, [yaml_box], [*inputs.values(), problems])  # edited YAML: the form follows
    start_btn.click(on_start, [yaml_box, processes], [run, problems])
    stop_btn.click(on_stop, [run], [problems])
    resume_btn.click(on_resume, [run], [problems])
    gr.Timer(1.0).tick(on_tick, [run], [status, loss_plot, eval_plot, log])
    return run
