"""Teachers for self-instruct (Wang et al. 2022, arXiv:2212.10560): the model that writes new tasks.

* :class:`LocalTeacher`: any model leantune loads (a packaged name, a Hugging Face folder, a run
  directory with its method merged), continuing the prompt as plain text, as the paper's GPT-3 did.
* :class:`EndpointTeacher`: an OpenAI-compatible server (``leantune serve`` included) through
  ``POST /v1/chat/completions``, the prompt as one user message. The API key is read from an
  environment variable and sent only in the ``Authorization`` header; it is never written anywhere.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Protocol

import torch

from ..errors import LeantuneError
from ..evaluation.forgetting import continuation_logprobs
from ..evaluation.generate import _stop_ids
from ..models.loading import load_model, load_tokenizer, resolve_model_path
from ..training.modes import evaluating

TOP_P = 0.5  # the paper's nucleus sampling for instruction generation (with temperature 0.7)


class Teacher(Protocol):
    name: str

    def complete(self, prompt: str, *, max_new_tokens: int, temperature: float, seed: int) -> str:
        """The teacher's continuation of ``prompt``."""


class LocalTeacher:
    """A causal LM loaded in this process; sampling with ``temperature`` and top-p 0.5."""

    def __init__(self, model: str):
        path = resolve_model_path(model)
        self.name = model
        self.tokenizer = load_tokenizer(path)
        self.model = load_model(path, "causal_lm", "float32")
        self.context = getattr(self.model.config, "max_position_embeddings", None) or 2048

    def complete(self, prompt: str, *, max_new_tokens: int, temperature: float, seed: int) -> str:
        enc = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        keep = max(1, self.context - max_new_tokens)
        enc = {k: v[:, -keep:] for k, v in enc.items()}  # the prompt's end is what the teacher continues
        torch.manual_seed(seed)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": TOP_P} if temperature > 0 else \
            {"do_sample": False}
        stop = _stop_ids(self.tokenizer)
        with evaluating(self.model):
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=stop or None,
                                      pad_token_id=self.tokenizer.pad_token_id, **sampling)
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def choose(self, prompt: str, options: list[str]) -> int:
        """The index of the option likeliest (summed log-probability of its tokens) to continue
        ``prompt``: a forced choice, as lm-evaluation-harness scores multiple choice."""
        scores = continuation_logprobs(self.model, self.tokenizer, [(prompt, o) for o in options], len(options))
        return max(range(len(options)), key=scores.__getitem__)


class EndpointTeacher:
    """An OpenAI-compatible endpoint; ``url`` is the server (``http://host:port``), its ``/v1``, or
    the full ``/v1/chat/completions`` address. ``model_name`` None: the first of ``GET /v1/models``."""

    def __init__(self, url: str, model_name: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 key_required: bool = False, timeout: float = 600):
        base = url.rstrip("/").removesuffix("/chat/completions").removesuffix("/v1")
        self.url, self.timeout = base, timeout
        self._key = os.environ.get(api_key_env) or None
        if key_required and self._key is None:
            raise LeantuneError(f"--api-key-env {api_key_env}: the environment variable {api_key_env} is not set "
                                f"(or empty); export it with the endpoint's API key")
        if model_name is None:
            models = self._call("GET", "/v1/models").get("data") or []
            if not models or not isinstance(models[0], dict) or "id" not in models[0]:
                raise LeantuneError(f"{base}/v1/models lists no model; name one with --model-name")
            model_name = models[0]["id"]
        self.name = model_name

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            raise LeantuneError(f"{self.url}{path}: the endpoint answered HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LeantuneError(f"{self.url}{path}: cannot reach the endpoint ({reason})") from None
        except ValueError:
            raise LeantuneError(f"{self.url}{path}: the endpoint's answer is not JSON") from None

    def complete(self, prompt: str, *, max_new_tokens: int, temperature: float, seed: int) -> str:
        body = {"model": self.name, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_new_tokens, "temperature": temperature, "top_p": TOP_P, "seed": seed}
        answer = self._call("POST", "/v1/chat/completions", body)
        try:
            return answer["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise LeantuneError(f"{self.url}/v1/chat/completions: the answer has no choices[0].message.content; "
                                f"is this an OpenAI-compatible endpoint?") from None


def make_teacher(spec: str, *, model_name: str | None = None, api_key_env: str | None = None) -> Teacher:
    """An endpoint for an ``http(s)://`` address, else a model leantune loads. ``api_key_env`` None:
    ``OPENAI_API_KEY`` when set; a variable named explicitly must be set."""
    if spec.startswith(("http://", "https://")):
        return EndpointTeacher(spec, model_name, api_key_env or "OPENAI_API_KEY", key_required=api_key_env is not None)
    if model_name is not None:
        raise LeantuneError(f"--model-name is for an endpoint teacher; {spec!r} is a model, not an http(s):// address")
    return LocalTeacher(spec)
