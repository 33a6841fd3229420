"""The models a server answers with: one base in memory, each run's PEFT adapter loaded beside it.

As vLLM's multi-LoRA serving: the first run is loaded with ``load_run``; every further run's
adapter joins it with PEFT's ``load_adapter(path, adapter_name=...)``; a request picks its
adapter with ``set_adapter``, and the base model answers under its recipe name inside
``disable_adapter()``. One generation runs at a time (``lock``): adapters are switched on
the shared model, and on CPU parallel generations only share the same cores.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable

from peft import PeftModel
from torch import nn

from ..export.run_loading import load_run
from ..prompting.documentation import documentation_of_run
from .specs import RunSpec

AUTO_TEMPLATE = "auto"  # the base model answers in its own chat template (else ChatML)


@dataclass(frozen=True)
class Served:
    """One name the server answers to."""

    name: str
    adapter: str | None  # PEFT's adapter name; None: the model as loaded (a lone non-PEFT run) or the base
    template: str        # data.template of the run (data/templates.py)
    base: bool = False   # answer with every adapter disabled
    # (messages, max_tokens) → messages with the run's documentation (data.retrieval), else None
    ask: Callable[[list[dict], int], list[dict]] | None = None


class ServedModels:
    def __init__(self, model: nn.Module, tokenizer, entries: list[Served]):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.entries = {e.name: e for e in entries}
        self.lock = threading.Lock()

    @property
    def context_length(self) -> int | None:
        config = getattr(self.model, "config", None)
        return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    @contextlib.contextmanager
    def activated(self, name: str):
        """The shared model with ``name``'s adapter on (or all off for the base); hold ``lock``."""
        entry = self.entries[name]
        if entry.base:
            with self.model.disable_adapter():
                yield self.model
            return
        if entry.adapter is not None:
            self.model.set_adapter(entry.adapter, inference_mode=True)
        yield self.model


def load_served(specs: list[RunSpec]) -> ServedModels:
    """The base once, each run's adapter on it (specs checked by ``specs.read_specs``)."""
    first = load_run(specs[0].run_dir)
    tokenizer = first.tokenizer
    if not isinstance(first.model, PeftModel):  # a lone run whose method changed the weights: served alone
        return ServedModels(first.model, tokenizer,
                            [Served(specs[0].name, None, specs[0].recipe.data.template,
                                    ask=_asking(specs[0], tokenizer))])
    model = first.model
    entries = [Served(specs[0].name, model.active_adapter, specs[0].recipe.data.template,
                      ask=_asking(specs[0], tokenizer))]
    for i, spec in enumerate(specs[1:], start=1):
        adapter = f"run{i}"  # PEFT's names become module keys: keep them plain
        model.load_adapter(str(spec.run_dir / "adapter"), adapter_name=adapter, is_trainable=False)
        entries.append(Served(spec.name, adapter, spec.recipe.data.template, ask=_asking(spec, tokenizer)))
    entries.append(Served(specs[0].recipe.model.name, None, AUTO_TEMPLATE, base=True))
    return ServedModels(model, first.tokenizer, entries)


def _asking(spec: RunSpec, tokenizer) -> Callable[[list[dict], int], list[dict]] | None:
    """A run's documentation retriever (data.retrieval) over the corpus it trained with, read now."""
    docs = documentation_of_run(spec.run_dir, spec.recipe)
    if docs is None:
        return None
    recipe = spec.recipe
    return lambda messages, max_tokens: docs.for_prompt(messages, tokenizer, recipe.data.template,
                                                        recipe.train.max_length, max_tokens)
