"""Text generation for the server: greedy or sampled, streamed piece by piece.

``model.generate`` runs in a worker thread that holds the model's lock; a streamer hands
each new token to the request's thread, which decodes the answer so far and releases only
text that can no longer change: not a partial UTF-8 character, not the start of a stop
string (OpenAI's ``stop``: the answer ends before it). A streamed answer is therefore the
same text as the whole answer, piece by piece.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..evaluation.generate import _stop_ids
from .models import ServedModels

REPLACEMENT = "\ufffd"  # what decoding gives for the first bytes of a character not yet complete


@dataclass(frozen=True)
class Sampling:
    """OpenAI's decoding fields; ``temperature == 0`` is greedy decoding."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    repetition_penalty: float = 1.0  # vLLM's extra field; 1.0 is none (OpenAI has no such field)

    def generate_kwargs(self) -> dict:
        """Every field given, so that the model's generation_config.json changes none of them."""
        kwargs: dict = {"max_new_tokens": self.max_tokens, "repetition_penalty": self.repetition_penalty}
        if self.temperature > 0:  # top_k=0: no top-k cut, which OpenAI's API does not have
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0)
        else:
            kwargs["do_sample"] = False
        return kwargs


@dataclass
class Outcome:
    """Filled in while the pieces are read: the usage and why the answer ended."""

    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str = "length"
    text: str = ""
    error: BaseException | None = field(default=None, repr=False)


class _TokenQueue(BaseStreamer):
    """Receives ``generate``'s tokens; the first ``put`` is the prompt and is skipped."""

    def __init__(self):
        self.tokens: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.tokens.put(value.reshape(-1).tolist())

    def end(self):
        self.tokens.put(None)


class _Cancelled(StoppingCriteria):
    """Stops generation once the reader has what it needs (a stop string) or went away."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


def stream_text(served: ServedModels, name: str, prompt_ids: list[int], sampling: Sampling,
                outcome: Outcome) -> Iterator[str]:
    """Pieces of the answer of model ``name`` to ``prompt_ids``; ``outcome`` holds the rest at the end."""
    tokenizer = served.tokenizer
    stop_ids = _stop_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop_ids or [0])[0]
    streamer, cancel = _TokenQueue(), threading.Event()

    def work():
        try:
            with served.lock, served.activated(name) as model:
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                device = next(model.parameters()).device
                ids = torch.tensor([prompt_ids], device=device)
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                               eos_token_id=stop_ids or None, pad_token_id=pad_id,
                               stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]),
                               **sampling.generate_kwargs())
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, who answers with an error
            outcome.error = exc
        finally:
            streamer.end()

    worker = threading.Thread(target=work, name="leantune-generate", daemon=True)
    worker.start()
    generated: list[int] = []
    sent = ""
    hold = max((len(s) for s in sampling.stop), default=1) - 1
    try:
        while (tokens := streamer.tokens.get()) is not None:
            if cancel.is_set():
                continue  # the answer is complete; drain what generate still emits
            generated.extend(tokens)
            outcome.completion_tokens = len(generated)
            if generated[-1] in stop_ids:
                outcome.finish_reason = "stop"
            text = tokenizer.decode(generated, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in sampling.stop) if i >= 0), default=-1)
            if cut >= 0:
                text, outcome.finish_reason = text[:cut], "stop"
                cancel.set()
            ready = len(text) if cut >= 0 else len(text) - hold
            while ready > len(sent) and text[ready - 1] == REPLACEMENT:
                ready -= 1
            if ready > len(sent) and text.startswith(sent):
                piece = text[len(sent):ready]
                sent += piece
                yield piece
        if outcome.error is not None:
            raise outcome.error
        text = tokenizer.decode(generated, skip_special_tokens=True)
        if not cancel.is_set() and text.startswith(sent) and len(text) > len(sent):
            yield text[len(sent):]  # held back for a stop string that never came
            sent = text
        outcome.text = sent
    finally:
        cancel.set()  # the reader is done (or gone): no more tokens are needed


def complete_text(served: ServedModels, name: str, prompt_ids: list[int], sampling: Sampling) -> Outcome:
    """The whole answer at once: the same pieces, joined."""
    outcome = Outcome(prompt_tokens=len(prompt_ids))
    for _ in stream_text(served, name, prompt_ids, sampling, outcome):
        pass
    return outcome
