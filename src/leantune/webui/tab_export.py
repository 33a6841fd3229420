"""Export tab: a finished run as a merged Hugging Face folder, a copy of its PEFT adapter, or a
GGUF file with an Ollama Modelfile; the paths written are listed. Nothing is replaced: an
existing target is refused, as on the command line without --force."""
from __future__ import annotations

import shutil
from pathlib import Path

import gradio as gr

from ..atomic import atomic_dir
from ..errors import LeantuneError
from ..export.gguf import GGUF_TYPES, export_gguf
from ..export.merge import merge_run
from ..run_dir import read_run_files
from .board import Board

KINDS = ["merged folder", "adapter", "GGUF + Modelfile"]


def default_target(run: str | None, kind: str, gguf_type: str = "f16") -> str:
    name = Path(run or "run").name
    return {"merged folder": f"exports/{name}-merged", "adapter": f"exports/{name}-adapter",
            "GGUF + Modelfile": f"exports/{name}-gguf/{name}-{gguf_type}.gguf"}[kind]


def export(board: Board, run: str, kind: str, target: str, gguf_type: str = "f16") -> str:
    """Write the export; a report of the paths written (relative to the workspace)."""
    run_dir = board.workspace.path(run or "", must_exist=True, what="run")
    out = board.workspace.path(target or "", what="target")
    read_run_files(run_dir)
    ws = board.workspace
    if kind == "merged folder":
        folder, notes = merge_run(run_dir, out)
        files = sorted(p.name for p in folder.iterdir())
        return "\n".join([f"merged model written to {ws.rel(folder)}: {', '.join(files)}",
                          *(f"warning: {n}" for n in notes)])
    if kind == "adapter":
        source = run_dir / "adapter"
        if not source.is_dir():
            raise LeantuneError(f"{run}: this run has no PEFT adapter folder (its method changes the weights "
                                f"themselves); export it as a merged folder")
        with atomic_dir(out, what="adapter copy") as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        return f"adapter copied to {ws.rel(out)}: {', '.join(sorted(p.name for p in out.iterdir()))}"
    if kind == "GGUF + Modelfile":
        result = export_gguf(run_dir, out, gguf_type)
        size = result.size_bytes / 2**20
        return "\n".join([f"GGUF ({result.gguf_type}, {size:.1f} MiB) written to {ws.rel(result.path)}",
                          f"Ollama Modelfile written to {ws.rel(result.modelfile)} (ollama create NAME -f "
                          f"{result.modelfile.name})", *(f"note: {n}" for n in result.notes)])
    raise LeantuneError(f"export: {kind!r} is not one of {', '.join(KINDS)}")


def build(board: Board) -> gr.Dropdown:
    with gr.Row():
        run = gr.Dropdown(board.run_choices(), label="Run", allow_custom_value=True, elem_id="export-run")
        kind = gr.Radio(KINDS, value=KINDS[0], label="Export as", elem_id="export-kind")
        gguf_type = gr.Dropdown(list(GGUF_TYPES), value="f16", label="GGUF type", elem_id="export-gguf-type")
    target = gr.Textbox(label="Write to (inside the workspace)", elem_id="export-target")
    go = gr.Button("Export", variant="primary", elem_id="export-go")
    result = gr.Textbox(label="Written", lines=4, interactive=False, elem_id="export-result")

    def on_export(chosen, how, where, t):
        try:
            return export(board, chosen, how, where, t)
        except LeantuneError as exc:
            return f"error: {exc}"

    for widget in (run, kind, gguf_type):
        widget.change(default_target, [run, kind, gguf_type], [target])
    go.click(on_export, [run, kind, target, gguf_type], [result])
    return run
