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
CORPUS_OPTION = typer.Option(None, "--corpus", metavar="PATH",
                             help="Documentation to retrieve from (runs trained with data.retrieval): e.g. newer "
                                  "docs; default: the corpus the run trained with.")


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
    from ..data.paths import check_data_files, resolve_data_path
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
    if d.retrieval is not None:  # a missing or empty corpus is said before the model loads
        from ..data.retrieval import load_corpus

        load_corpus(resolve_data_path(d.retrieval.corpus, base_dir))
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
             base: Optional[str] = BASE_OPTION, corpus: Optional[Path] = CORPUS_OPTION,
             metrics: Optional[str] = typer.Option(None, "--metrics", metavar="NAMES",
                                                   help="Generation metrics, comma-separated (rouge_l, bleu, "
                                                        "exact_match, contains, json_valid, module:function); "
                                                        "default: the recipe's eval.metrics."),
             out: Optional[Path] = typer.Option(None, "--out", help="Write the answers here (default: the run's "
                                                "predictions.jsonl; --harness: its results, default harness.json)."),
             force: bool = typer.Option(False, "--force", help="Replace an existing predictions (or harness) file."),
             harness: Optional[str] = typer.Option(None, "--harness", metavar="TASKS",
                                                   help="lm-evaluation-harness tasks, comma-separated (e.g. "
                                                        "arc_easy,hellaswag), run offline on the run's model "
                                                        "(pip install 'leantune[harness]')."),
             harness_include: Optional[Path] = typer.Option(None, "--harness-include", metavar="DIR",
                                                            help="--harness: a folder of lm-eval task YAMLs (e.g. "
                                                                 "over local data files)."),
             limit: Optional[int] = typer.Option(None, "--limit", min=1, help="--harness: at most N examples per "
                                                 "task (a quick look, not a figure to report).")):
    """Evaluate a finished run (loss and perplexity; accuracy and macro-F1 for cls; eval.metrics on answers)."""
    from pydantic import ValidationError

    from ..atomic import check_output
    from ..recipe import EvalSection
    from ..run_dir import read_run_files

    read_run_files(run_dir)
    if harness is not None:
        _harness(run_dir, harness, harness_include, limit, base, out, force, data is not None or metrics is not None)
        return
    if harness_include is not None or limit is not None:
        raise LeantuneError("--harness-include and --limit go with --harness TASKS")
    names = None
    if metrics is not None:
        names = [n.strip() for n in metrics.split(",") if n.strip()]
        if not names:
            raise LeantuneError("--metrics: name at least one metric, e.g. --metrics rouge_l,exact_match")
        try:
            EvalSection(metrics=names)
        except ValidationError as err:
            raise LeantuneError(f"--metrics {metrics}: {err.errors()[0]['msg'].removeprefix('Value error, ')}") \
                from None
        check_output(out or run_dir / "predictions.jsonl", force=force, what="predictions file")
    quiet_libraries()
    from ..pipeline import evaluate_run

    metrics = evaluate_run(run_dir, data, say=lambda m: console.print(m), base=base, corpus=corpus, metrics=names,
                           out=out, force=force)
    console.print_json(json.dumps(metrics))


def _harness(run_dir: Path, tasks: str, include: Optional[Path], limit: Optional[int], base: Optional[str],
             out: Optional[Path], force: bool, other: bool) -> None:
    """``leantune eval RUN --harness TASKS``: lm-eval's table printed, its results to harness.json."""
    from ..atomic import atomic_write_text, check_output
    from ..evaluation.harness import HARNESS_FILE

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise LeantuneError("--harness: name at least one lm-eval task, e.g. --harness arc_easy")
    if other:
        raise LeantuneError("--harness runs lm-eval's own tasks and data; use --data and --metrics in a separate "
                            "leantune eval")
    target = out or run_dir / HARNESS_FILE
    check_output(target, force=force, what="harness results")
    quiet_libraries()
    from ..evaluation.harness import harness_model, prepare_tasks, result_rows, run_harness
    from ..export.run_loading import load_run

    prepared = prepare_tasks(names, include)
    run = load_run(run_dir, base=base)
    results = run_harness(harness_model(run), run.tokenizer, prepared, limit, run.recipe.eval.batch_size)
    atomic_write_text(target, json.dumps(results, indent=2, ensure_ascii=False))
    table = Table(title=f"lm-evaluation-harness on {run_dir}{f' (--limit {limit})' if limit else ''}")
    for column in ("task", "metric", "value", "± stderr"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for task, metric, value, stderr in result_rows(results):
        table.add_row(task, metric, f"{value:.4f}", "" if stderr is None else f"{stderr:.4f}")
    console.print(table)
    console.print(f"results: [bold]{target}[/]", highlight=False)


@app.command()
@user_errors
def chat(run_dir: Path, prompt: Optional[str] = typer.Option(None, "--prompt", help="Answer once and exit."),
         max_new_tokens: int = typer.Option(256, help="Longest answer in tokens."),
         base: Optional[str] = BASE_OPTION, corpus: Optional[Path] = CORPUS_OPTION):
    """Talk to a trained model (interactive; --prompt answers once)."""
    from ..run_dir import read_run_files

    read_run_files(run_dir)
    quiet_libraries()
    from ..evaluation.generate import generate_answer
    from ..export.run_loading import load_run
    from ..prompting.documentation import documentation_of_run

    run = load_run(run_dir, base=base)
    if run.head not in ("causal_lm",):
        raise LeantuneError(f"{run_dir}: chat needs a generative (causal LM) run, this one is {run.head}")
    template = run.recipe.data.template
    docs = documentation_of_run(run_dir, run.recipe, corpus)

    def answer(history: list[dict]) -> str:  # the documentation goes to this turn only, as in training
        if docs is not None:
            history = docs.for_prompt(history, run.tokenizer, template, run.recipe.train.max_length, max_new_tokens)
        return generate_answer(run.model, run.tokenizer, history, template, max_new_tokens)

    if prompt is not None:
        console.print(answer([{"role": "user", "content": prompt}]), highlight=False)
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
        reply = answer(history)
        history.append({"role": "assistant", "content": reply})
        console.print(f"[green]model>[/] {reply}", highlight=False)


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
