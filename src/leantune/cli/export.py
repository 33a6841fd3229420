"""`leantune export`: a finished run in the file formats other tools run (GGUF for llama.cpp and Ollama)."""
from __future__ import annotations

from pathlib import Path

import typer

from .app import app, console, quiet_libraries, user_errors
from .runs import BASE_OPTION

export_app = typer.Typer(no_args_is_help=True, help="Export a finished run for other tools (llama.cpp, Ollama).")
app.add_typer(export_app, name="export")


@export_app.command("gguf")
@user_errors
def export_gguf_command(
        run_dir: Path, out: Path,
        gguf_type: str = typer.Option("f16", "--type", "-t", help="Tensor type: f16 (half the f32 size, "
                                      "near-lossless), q8_0 (8-bit blocks, about a quarter), or f32."),
        force: bool = typer.Option(False, "--force", help="Replace an existing OUT and Modelfile (never inside "
                                   "the run)."),
        base: str | None = BASE_OPTION):
    """The run's merged model as one GGUF file, with an Ollama Modelfile beside it."""
    from ..atomic import check_output
    from ..run_dir import read_run_files

    read_run_files(run_dir)
    check_output(out, force=force, sources=(run_dir,), what="GGUF file")
    quiet_libraries()
    from ..export.gguf import export_gguf

    result = export_gguf(run_dir, out, gguf_type, force=force, base=base)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    console.print(f"GGUF ({result.gguf_type}, {result.size_bytes / 2**20:.1f} MiB) written to [bold]{result.path}[/]\n"
                  f"Ollama: ollama create NAME -f {result.modelfile}", highlight=False, soft_wrap=True)
