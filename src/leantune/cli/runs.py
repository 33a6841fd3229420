"""Commands on one run: train, demo, eval, chat, merge."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import LeantuneError
from .app import app, console, quiet_libraries, user_errors

BASE_OPTION = typer.Option(None, "--base", metavar="MODEL",
                           help="The run's base model (a folder, packaged name or hub id), when the run does "
                                "not find it where it was trained.")


def _print_summary(s) -> None:
    table = Table(title=f"run {s.name}", show_header=True)
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for key, value in (s.eval_after or {}).items():
        b = (s.eval_before or {}).get(key)
        table.add_row(key, "" if b is None else f"{b:.4f}", f"{value:.4f}")
    console.print(table)
    for prompt, before, after in s.samples:
        console.print(f"\n[bold]Q:[/] {prompt}")
        console.print(f"[dim]before:[/] {before}", highlight=False)
        console.print(f"[green]after:[/]  {after}", highlight=False)
    pct = 100 * s.trainable_params / max(s.total_params, 1)
    console.print(
        f"\ntrainable parameters: {s.trainable_params:,} of {s.total_params:,} ({pct:.3f}%)\n"
        f"steps: {s.steps}   wall time: {s.wall_time_s:.1f} s   tokens/s: {s.tokens_per_s:.0f}   "
        f"precision: {s.precision}   device: {s.device}"
        f"{f' × {s.processes} processes' if s.processes > 1 else ''}   effective batch: {s.effective_batch}\n"
        f"{s.memory_kind}: {s.peak_memory_mb:.0f} MB{' (rank 0)' if s.processes > 1 else ''}\n"
        f"run directory: [bold]{s.run_dir}[/]  (report: {s.run_dir}/report.md)", highlight=False, soft_wrap=True,
    )


def _run_training(recipe_path: Optional[Path], overrides: list[str], resume: bool, raw: dict | None = None,
                  launch: dict | None = None) -> None:
    from ..data.paths import check_data_files
    from ..models.safety import check_model_folder
    from ..recipe import load_recipe
    from ..run_dir import check_run_dir

    if recipe_path is not None and raw is None and os.environ.get("RANK", "0") == "0":
        from .recipes import print_translation

        print_translation(recipe_path)  # a LLaMA-Factory or axolotl config: what it became, what did not map
    # everything the user wrote is checked before torch loads: errors in a second
    recipe = load_recipe(recipe_path, overrides, raw=raw)
    base_dir = recipe_path.parent if recipe_path else None
    check_run_dir(recipe, resume)
    model_dir = Path(recipe.model.name).expanduser()
    if (model_dir / "config.json").is_file():
        check_model_folder(model_dir, recipe.model.trust_remote_code)
    d = recipe.data
    check_data_files(d.train, d.eval, d.format, d.skip_invalid, base_dir)
    from . import launch as launcher

    if launch is not None and not launcher.under_launcher():
        nproc = launcher.processes_to_start(launch.pop("nproc"), recipe.train.device)
        if nproc > 1 or launch["nnodes"] > 1:
            child = [str(recipe_path), *overrides, *(["--resume"] if resume else [])]
            console.print(f"starting {nproc} process(es) on this machine through torchrun", highlight=False)
            raise typer.Exit(launcher.launch(launcher.torchrun_command(nproc, child, **launch)))
    quiet_libraries()
    from ..pipeline import train
    from ..training.runtime import shutdown

    try:
        summary = train(recipe, resume=resume, base_dir=base_dir, progress=True,
                        say=lambda m: console.print(m, highlight=False))
    finally:
        shutdown()
    if not launcher.under_launcher() or os.environ.get("RANK", "0") == "0":
        _print_summary(summary)


@app.command()
@user_errors
def train(recipe: Path = typer.Argument(..., help="Recipe YAML file."),
          overrides: list[str] = typer.Argument(None, help="key.path=value overrides, e.g. train.lr=1e-4"),
          resume: bool = typer.Option(False, "--resume", help="Continue from the run's last checkpoint."),
          nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help="Processes on this machine (torchrun; "
                                              "default: one per visible GPU, else 1)."),
          nnodes: int = typer.Option(1, "--nnodes", min=1, help="Machines in the run."),
          node_rank: int = typer.Option(0, "--node-rank", min=0, help="This machine's index (0 … nnodes-1)."),
          master_addr: Optional[str] = typer.Option(None, "--master-addr", help="Address of the node-rank 0 "
                                                    "machine (several machines)."),
          master_port: Optional[int] = typer.Option(None, "--master-port", min=1, max=65535,
                                                    help="Its port (default 29500; one machine: a free port).")):
    """Train: load the recipe, apply the method, run the stage, write the run directory."""
    if node_rank >= nnodes:
        raise typer.BadParameter(f"--node-rank {node_rank} must be below --nnodes {nnodes}")
    _run_training(recipe, overrides or [], resume,
                  launch={"nproc": nproc, "nnodes": nnodes, "node_rank": node_rank, "master_addr": master_addr,
                          "master_port": master_port})


@app.command()
@user_errors
def demo(overrides: list[str] = typer.Argument(None, help="Overrides of the demo recipe.")):
    """Fine-tune SmolLM2-135M with LoRA on the built-in shell-help data; print command accuracy before/after."""
    quiet_libraries()
    from ..workflows.demo import print_report, run_demo

    result = run_demo(overrides or [], say=lambda m: console.print(m, highlight=False, soft_wrap=True),
                      progress=True)
    _print_summary(result.summary)
    print_report(result, console)


@app.command("eval")
@user_errors
def evaluate(run_dir: Path, data: Optional[Path] = typer.Option(None, "--data", help="Evaluate on this file instead."),
             base: Optional[str] = BASE_OPTION):
    """Evaluate a finished run (loss and perplexity; accuracy and macro-F1 for cls)."""
    from ..run_dir import read_run_files

    read_run_files(run_dir)
    quiet_libraries()
    from ..pipeline import evaluate_run

    metrics = evaluate_run(run_dir, data, say=lambda m: console.print(m), base=base)
    console.print_json(json.dumps(metrics))


@app.command()
@user_errors
def chat(run_dir: Path, prompt: Optional[str] = typer.Option(None, "--prompt", help="Answer once and exit."),
         max_new_tokens: int = typer.Option(256, help="Longest answer in tokens."),
         base: Optional[str] = BASE_OPTION):
    """Talk to a trained model (interactive; --prompt answers once)."""
    from ..run_dir import read_run_files

    read_run_files(run_dir)
    quiet_libraries()
    from ..evaluation.generate import generate_answer
    from ..export.run_loading import load_run

    run = load_run(run_dir, base=base)
    if run.head not in ("causal_lm",):
        raise LeantuneError(f"{run_dir}: chat needs a generative (causal LM) run, this one is {run.head}")
    template = run.recipe.data.template
    if prompt is not None:
        console.print(generate_answer(run.model, run.tokenizer, [{"role": "user", "content": prompt}],
                                      template, max_new_tokens), highlight=False)
        return
    history: list[dict] = []
    console.print("[dim]empty line or Ctrl-D to quit; /reset clears the history[/]")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        if line == "/reset":
            history = []
            continue
        history.append({"role": "user", "content": line})
        answer = generate_answer(run.model, run.tokenizer, history, template, max_new_tokens)
        history.append({"role": "assistant", "content": answer})
        console.print(f"[green]model>[/] {answer}", highlight=False)


@app.command()
@user_errors
def merge(run_dir: Path, out_dir: Path,
          force: bool = typer.Option(False, "--force", help="Replace an existing OUT_DIR (never the run, the "
                                     "current folder, home or a parent of them)."),
          base: Optional[str] = BASE_OPTION):
    """Fold the adapter into the base weights: a plain Hugging Face folder."""
    from ..atomic import check_output
    from ..run_dir import read_run_files

    read_run_files(run_dir)
    check_output(out_dir, force=force, sources=(run_dir,), what="merged model")
    quiet_libraries()
    from ..export.merge import merge_run

    out, notes = merge_run(run_dir, out_dir, force=force, base=base)
    for note in notes:
        console.print(f"[yellow]warning:[/] {note}")
    console.print(f"merged model written to [bold]{out}[/]")
