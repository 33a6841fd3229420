"""``eval.metrics`` on a run: greedy answers to the held-out conversations, scored against their
references, as LLaMA-Factory's ``predict_with_generate`` does; the answers go to ``predictions.jsonl``.

The prompt of a held-out example is every message before its last reply (chat data) or its
``prompt`` (preference data, whose reference is the ``chosen`` reply); the examples are taken as
the run loaded them, so retrieved documentation already in their last user turn is kept.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..atomic import atomic_write_text
from ..errors import RecipeError
from ..recipe import Recipe
from .generate import generate_conversations
from .text_metrics import Metric, resolve_metrics, score_all


@dataclass(frozen=True)
class Item:
    prompt: list[dict]
    reference: str
    example: dict


def conversation_items(examples: list[dict]) -> list[Item]:
    """(prompt messages, reference reply) of every example that is a conversation."""
    items = []
    for ex in examples:
        messages = ex.get("messages")
        if messages and messages[-1].get("role") == "assistant":
            items.append(Item(list(messages[:-1]), messages[-1]["content"], ex))
        elif isinstance(ex.get("prompt"), list) and isinstance(ex.get("chosen"), str):
            items.append(Item(list(ex["prompt"]), ex["chosen"], ex))
    return items


@dataclass
class GenerationEval:
    """The metrics, the (capped) held-out conversations and how to answer them."""

    metrics: list[Metric]
    items: list[Item]
    total: int  # held-out examples before the cap
    template: str
    max_new_tokens: int
    batch_size: int
    max_length: int
    keys: tuple[str, ...] = ()  # the scores' names, in the order of eval.metrics (known after a run)

    def run(self, model: nn.Module, tokenizer) -> tuple[dict[str, float], list[dict]]:
        """The aggregate scores and one row per example (prompt, reference, prediction, scores)."""
        predictions = generate_conversations(
            model, tokenizer, [i.prompt for i in self.items], self.template, self.max_new_tokens,
            self.batch_size, max_prompt_tokens=max(1, self.max_length - self.max_new_tokens))
        references = [i.reference for i in self.items]
        totals, per = score_all(self.metrics, predictions, references, [i.example for i in self.items])
        self.keys = tuple(totals)
        rows = [{"line": i.example.get("line"), "prompt": i.prompt, "reference": i.reference, "prediction": p,
                 "scores": s} for i, p, s in zip(self.items, predictions, per)]
        return totals, rows

    def describe(self) -> dict:
        """What the report says about the generation metrics."""
        return {"metrics": [m.name for m in self.metrics], "examples": len(self.items), "held_out": self.total,
                "max_generate": len(self.items) if len(self.items) < self.total else None}


def generation_eval(recipe: Recipe, stage, eval_examples: list[dict], folder: Path | None,
                    names: list[str] | None = None) -> GenerationEval | None:
    """``eval.metrics`` (or ``names``) ready to run on ``stage``'s model, None when there are none;
    checked before any training: a trained causal LM, held-out conversations, importable user metrics."""
    names = recipe.eval.metrics if names is None else names
    if not names:
        return None
    listed = f"eval.metrics ({', '.join(names)})"
    if stage.head_name != "causal_lm" or not stage.trains:
        what = f"trains a {stage.head_name} head" if stage.trains else "does not train"
        raise RecipeError(f"{listed}: generation metrics are computed for a trained causal language model; stage "
                          f"{stage.name} {what}. Remove eval.metrics")
    items = conversation_items(eval_examples)
    if not items:
        raise RecipeError(f"{listed}: no held-out conversations to answer; set data.eval (chat or preference "
                          f"data) or data.eval_split")
    return GenerationEval(resolve_metrics(names, folder), items[: recipe.eval.max_generate], len(items),
                          recipe.data.template, recipe.eval.max_new_tokens, recipe.eval.batch_size,
                          recipe.train.max_length)


def ranking_metric(recipe: Recipe, metrics: dict, gen: GenerationEval | None) -> str | None:
    """What ``compare`` and ``advise --prove`` rank this run by: ``eval.metric``, else the first
    score of the first of ``eval.metrics``; None when that is not among ``metrics``."""
    named = recipe.eval.metric or (gen.keys[0] if gen is not None and gen.keys else None)
    return named if named in metrics else None


def check_ranking_metric(recipe: Recipe, metrics: dict) -> None:
    """``eval.metric`` must be among the metrics a run computes (checked on the base model, before training)."""
    named = recipe.eval.metric
    if named is not None and metrics and named not in metrics:
        raise RecipeError(f"eval.metric: {named!r} is not among this run's metrics ({', '.join(sorted(metrics))}); "
                          f"name one of them, or a metric eval.metrics computes")


def write_predictions(path: Path, rows: list[dict]) -> Path:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path
