"""The `leantune` app: its options, the quiet set-up before heavy imports, the one place where
every failure becomes a sentence (crash.py), and the table layout the listings share."""
from __future__ import annotations

import functools
import os

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from ..crash import describe


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
    from ..quiet import quiet

    quiet(verbose=verbose)


def quiet_libraries() -> None:
    """Before the heavy imports: offline hub, no tokenizer threads, library chatter to the log file."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .. import quiet

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


def detail_table(first: str, second: str, rows: list[tuple[list, list]], title: str | None = None) -> Table:
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
