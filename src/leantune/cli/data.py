"""`leantune data`: check a data file, export a built-in data set."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import LeantuneError
from .app import console, data_app, quiet_libraries, user_errors


@data_app.command("check")
@user_errors
def data_check(file: Path, format: Optional[str] = typer.Option(None, "--format", "-f", help="Data format (default: detected)."),
               model: Optional[str] = typer.Option(None, "--model", "-m", help="Model whose tokenizer measures lengths.")):
    """Validate a data file: counts, token lengths, duplicates, every invalid row."""
    quiet_libraries()
    from ..data.inspect import inspect_data

    tokenizer = None
    if model:
        from ..models.loading import load_tokenizer, resolve_model_path

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
    from ..atomic import atomic_file, check_output
    from ..data import builtin

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
