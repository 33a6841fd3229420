"""Rewards for PPO, GRPO and RLOO: a reward-model run directory or a Python function.

A reward function takes keyword arguments and returns one float per completion::

    def my_reward(prompts: list[str], completions: list[str], **kwargs) -> list[float]

``prompts`` are the last user messages, ``completions`` the generated replies (plain
text); ``kwargs`` carry ``messages`` (the prompts as message lists) and the recipe's
``reward_args``. TRL's GRPO/RLOO call the same functions. A recipe names one as
``reward: module:function``, a built-in name below, or a run directory of ``stage: rm``.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from ..data.collate import pad_batch
from ..data.templates import resolve_template
from ..errors import RecipeError
from ..export.run_loading import load_run
from ..training.modes import evaluating
from .preference import encode_pair, render_prompt, render_reply

# --------------------------------------------------------------------------- built-in verifiable rewards

def max_words(prompts: list[str], completions: list[str], n: int = 20, **kwargs) -> list[float]:
    """1.0 for a non-empty reply of at most ``n`` words, n/len beyond; 0.0 for an empty one."""
    out = []
    for c in completions:
        words = len(c.split())
        out.append(0.0 if words == 0 else 1.0 if words <= n else n / words)
    return out


def mentions_keyword(prompts: list[str], completions: list[str], keyword: str = "please",
                     **kwargs) -> list[float]:
    """1.0 when the reply contains ``keyword`` (case-insensitive), else 0.0."""
    k = keyword.lower()
    return [1.0 if k in c.lower() else 0.0 for c in completions]


def char_fraction(prompts: list[str], completions: list[str], chars: str = "abcdefghijklmnopqrstuvwxyz ",
                  **kwargs) -> list[float]:
    """Fraction of the reply's characters that are in ``chars`` (0.0 for an empty reply)."""
    allowed = set(chars)
    return [sum(ch in allowed for ch in c) / len(c) if c else 0.0 for c in completions]


BUILTIN_REWARDS: dict[str, Callable[..., list[float]]] = {
    "max_words": max_words, "mentions_keyword": mentions_keyword, "char_fraction": char_fraction,
}


# --------------------------------------------------------------------------- resolving a recipe's reward

class RewardFunction:
    """A reward callable with one interface: ``(messages, completions) -> tensor [N]``."""

    def __init__(self, name: str, fn: Callable[..., Any], args: dict[str, Any] | None = None):
        self.name, self.fn, self.args = name, fn, dict(args or {})

    def __call__(self, messages: list[list[dict]], completions: list[str]) -> torch.Tensor:
        prompts = [m[-1]["content"] if m else "" for m in messages]
        values = self.fn(prompts=prompts, completions=completions, messages=messages, **self.args)
        values = torch.as_tensor([float("nan") if v is None else float(v) for v in values], dtype=torch.float32)
        if values.shape != (len(completions),):
            raise RecipeError(f"reward {self.name}: returned {values.numel()} value(s) for "
                              f"{len(completions)} completion(s)")
        return values

    def place_on(self, device: torch.device) -> None:
        """Move what scores to the run's device (a Python function has nothing to move)."""

    def as_trl(self) -> Callable[..., list[float]]:
        """The function in TRL's reward-function convention (GRPO/RLOO), with ``reward_args`` bound.

        The dataset carries ``messages`` (the prompt as messages) so that completions are
        judged on the original prompt, not on its chat-template rendering.
        """
        def reward(prompts, completions, messages=None, **kwargs):
            texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
            msgs = messages if messages is not None else [[{"role": "user", "content": str(p)}] for p in prompts]
            return self(msgs, texts).tolist()

        reward.__name__ = self.name.replace(":", "_").replace("/", "_").replace(".", "_")
        return reward


class RewardModelScorer(RewardFunction):
    """The scalar output of a ``stage: rm`` run, computed on (prompt, reply) with the RM's template."""

    def __init__(self, run_dir: str | Path, max_length: int | None = None, batch_size: int = 8):
        run = load_run(run_dir)
        if run.head != "seq_cls":
            raise RecipeError(f"reward {run_dir}: the run's head is {run.head}, not a reward model "
                              f"(train one with stage: rm)")
        self.model, self.tokenizer = run.model, run.tokenizer
        self.model.requires_grad_(False)
        self.template = run.recipe.data.template
        self.max_length = max_length or run.recipe.train.max_length
        self.batch_size = batch_size
        super().__init__(str(run_dir), self._score)

    def place_on(self, device: torch.device) -> None:
        self.model.to(device)

    def _score(self, prompts, completions, messages, **kwargs) -> list[float]:
        template = resolve_template(self.tokenizer, self.template)
        ids = []
        for msgs, reply in zip(messages, completions):
            prompt = render_prompt(self.tokenizer, template, msgs)
            ids.append(encode_pair(self.tokenizer, prompt, render_reply(self.tokenizer, template, msgs, reply),
                                   self.max_length)[0])
        device = next(self.model.parameters()).device
        out: list[float] = []
        with evaluating(self.model):
            for s in range(0, len(ids), self.batch_size):
                batch = pad_batch([{"input_ids": x} for x in ids[s: s + self.batch_size]],
                                  self.tokenizer.pad_token_id)
                logits = self.model(input_ids=batch["input_ids"].to(device),
                                    attention_mask=batch["attention_mask"].to(device)).logits
                out += logits[:, 0].float().tolist()
        return out


def import_function(spec: str) -> Callable[..., Any]:
    """``package.module:function`` (or ``path/to/file.py:function``) → the function."""
    module_name, _, func_name = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser().resolve()
            spec_obj = importlib.util.spec_from_file_location(path.stem, path)
            if spec_obj is None or not path.is_file():
                raise ImportError(f"no file {path}")
            module = importlib.util.module_from_spec(spec_obj)
            sys.modules.setdefault(path.stem, module)
            spec_obj.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RecipeError(f"reward {spec!r}: cannot import {module_name!r}: {exc}") from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise RecipeError(f"reward {spec!r}: {module_name} has no function {func_name!r}")
    return fn


def resolve_reward(spec: str, args: dict[str, Any] | None = None, max_length: int | None = None) -> RewardFunction:
    """A built-in name, ``module:function``, or a reward-model run directory."""
    args = dict(args or {})
    if spec in BUILTIN_REWARDS:
        fn = BUILTIN_REWARDS[spec]
        params = inspect.signature(fn).parameters
        unknown = [k for k in args if k not in params]
        if unknown:
            allowed = [p for p in params if p not in ("prompts", "completions", "kwargs")]
            raise RecipeError(f"reward {spec}: unknown reward_args {unknown}; it takes {allowed}")
        return RewardFunction(spec, fn, args)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "run.json").is_file():
            raise RecipeError(f"reward {spec!r}: the folder is not a leantune run directory (no run.json)")
        if args:
            raise RecipeError(f"reward {spec!r}: reward_args are only for reward functions, not reward models")
        return RewardModelScorer(path, max_length)
    if ":" in spec:
        return RewardFunction(spec, import_function(spec), args)
    close = difflib.get_close_matches(spec, list(BUILTIN_REWARDS), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise RecipeError(f"reward {spec!r} is not a built-in reward ({', '.join(BUILTIN_REWARDS)}), a "
                      f"module:function, or an existing reward-model run directory.{hint}")
