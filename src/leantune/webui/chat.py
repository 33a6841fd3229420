"""Chat tab's models: runs side by side on one base model, the base itself included, each
answering in the chat template it was trained with (the server's loading: ``serving/``)."""
from __future__ import annotations

import threading
from pathlib import Path

from ..data.templates import render, resolve_template
from ..errors import LeantuneError
from ..serving.generation import Sampling, complete_text
from ..serving.models import ServedModels, load_served
from ..serving.specs import read_specs


class ChatModels:
    """The models of the last choice of runs, loaded once and kept until another choice."""

    def __init__(self):
        self._key: tuple | None = None
        self._served: ServedModels | None = None
        self._lock = threading.Lock()

    def load(self, run_dirs: list[Path], with_base: bool) -> list[str]:
        """Names answering, in the order of ``run_dirs`` (then the base model's)."""
        if not run_dirs:
            raise LeantuneError("chat: choose at least one finished run")
        key = tuple(str(p.resolve()) for p in run_dirs)
        with self._lock:
            if key != self._key:
                specs = read_specs([f"{p.name}={p}" for p in run_dirs])
                self._served, self._key = None, None  # the old models go before the new ones load
                self._served, self._key = load_served(specs), key
            names = [n for n, e in self._served.entries.items() if not e.base]
            base = [n for n, e in self._served.entries.items() if e.base]
        if with_base and not base:
            raise LeantuneError(f"{run_dirs[0]}: its method changes the base weights themselves, so the base "
                                f"model cannot answer beside it; chat with the run alone")
        return names + (base if with_base else [])

    def answer(self, name: str, history: list[dict], sampling: Sampling) -> str:
        """``name``'s answer to the conversation ``history`` (OpenAI-style messages)."""
        served = self._served
        if served is None or name not in served.entries:
            raise LeantuneError(f"chat: {name!r} is not loaded; choose the runs again")
        entry = served.entries[name]
        if entry.ask is not None:  # a run trained with data.retrieval reads its documentation
            history = entry.ask(history, sampling.max_tokens)
        template = resolve_template(served.tokenizer, entry.template)
        text = render(served.tokenizer, history, template, add_generation_prompt=True)
        ids = served.tokenizer(text, add_special_tokens=False)["input_ids"]
        return complete_text(served, name, ids, sampling).text
