"""What every tab of the page shares: the workspace, the training jobs, loaded tokenizers and
chat models, and small helpers for the page's widgets."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from ..models.loading import load_tokenizer, resolve_model_path
from .chat import ChatModels
from .jobs import Jobs
from .workspace import Workspace


@dataclass
class Board:
    workspace: Workspace
    jobs: Jobs
    chat: ChatModels = field(default_factory=ChatModels)
    _tokenizers: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def tokenizer(self, model: str):
        with self._lock:
            if model not in self._tokenizers:
                self._tokenizers[model] = load_tokenizer(resolve_model_path(model))
            return self._tokenizers[model]

    def run_choices(self) -> list[str]:
        return [self.workspace.rel(p) for p in self.workspace.runs()]


def model_argument(workspace: Workspace, text: str | None) -> str:
    """A model as the page passes it on: a folder (kept inside the workspace) or a packaged name
    or hub id, which read nothing from the workspace's disk."""
    text = (text or "").strip()
    if not text:
        return ""
    looks_like_path = text.startswith((".", "/", "~")) or (workspace.root / text).exists()
    return str(workspace.path(text, must_exist=True, what="model folder")) if looks_like_path else text


def refreshed(choices: list[str], value: str | list[str] | None = None):
    """A picker's new choices, keeping what is chosen where it still exists."""
    if isinstance(value, list):
        return gr.update(choices=choices, value=[v for v in value if v in choices])
    return gr.update(choices=choices, value=value or None)


def checked_paths(workspace: Workspace, paths: list[str | None]) -> None:
    """Every local path a recipe names stays inside the workspace (``builtin:`` data is the package's)."""
    for p in paths:
        if p and not str(p).startswith("builtin:"):
            workspace.path(Path(p))
