"""Task metrics on generated answers, named in ``eval.metrics``.

* ``rouge_l``: mean ROUGE-L F-measure (Lin 2004) with ``rouge-score``'s default tokens (lower
  case, runs of ASCII letters and digits, no stemming; data/selfinstruct.py), in [0, 1];
* ``bleu``: corpus BLEU (Papineni et al. 2002) by ``sacrebleu`` (13a tokens, exponential
  smoothing) divided by 100, so that every metric is in [0, 1]; per example, sentence BLEU / 100;
* ``exact_match``: the share of answers equal to the reference after :func:`normalize`;
* ``contains``: the share of answers that contain the normalised reference;
* ``json_valid``: the share of answers that parse as JSON (a fenced block is unwrapped);
* ``module:function``: the user's own, imported from the recipe's folder or the Python path,
  called as ``function(predictions, references[, examples])`` and returning a float (named
  after the function) or a dict of floats (named by its keys).

Every built-in metric is a rate in [0, 1], higher is better; so is a user metric for ``compare``.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..data.selfinstruct import rouge_l as rouge_l_tokens
from ..data.selfinstruct import rouge_tokens
from ..errors import RecipeError
from ..registry import lookup

# Per-example scores (or None where a metric has none) and the aggregate, by metric name.
Scored = tuple[dict[str, float], list[dict[str, float]]]

_FENCE = re.compile(r"^```[\w+\-.]*[ \t]*\n?(.*?)\n?```$", re.DOTALL)
_QUOTES = "\"'`"


def unfence(text: str) -> str:
    """The content of one Markdown code fence (```lang … ```) around the whole text, else the text; stripped."""
    text = text.strip()
    match = _FENCE.match(text)
    return match.group(1).strip() if match else text


def normalize(text: str) -> str:
    """What exact_match and contains compare: one fenced block unwrapped, surrounding whitespace and
    matching quotes or backticks removed (repeatedly: ```"ls"``` → ls), case folded, runs of
    whitespace made one space. Punctuation inside the answer is kept (it matters in commands and code)."""
    text = unfence(text)
    while len(text) >= 2 and text[0] == text[-1] and text[0] in _QUOTES:
        text = text[1:-1].strip()
    return " ".join(text.casefold().split())


def rouge_l(predictions: list[str], references: list[str]) -> Scored:
    per = [rouge_l_tokens(rouge_tokens(p), rouge_tokens(r)) for p, r in zip(predictions, references)]
    return _mean("rouge_l", per)


def bleu(predictions: list[str], references: list[str]) -> Scored:
    import sacrebleu  # lazy: only runs that name bleu need it

    per = [sacrebleu.sentence_bleu(p, [r]).score / 100 for p, r in zip(predictions, references)]
    corpus = sacrebleu.corpus_bleu(predictions, [references]).score / 100 if predictions else 0.0
    return {"bleu": corpus}, [{"bleu": s} for s in per]


def exact_match(predictions: list[str], references: list[str]) -> Scored:
    return _mean("exact_match", [float(normalize(p) == normalize(r)) for p, r in zip(predictions, references)])


def contains(predictions: list[str], references: list[str]) -> Scored:
    return _mean("contains", [float(normalize(r) in normalize(p)) for p, r in zip(predictions, references)])


def _parses(text: str) -> bool:
    try:
        json.loads(unfence(text))
    except ValueError:
        return False
    return True


def json_valid(predictions: list[str], references: list[str]) -> Scored:
    return _mean("json_valid", [float(_parses(p)) for p in predictions])


def _mean(name: str, per: list[float]) -> Scored:
    return {name: sum(per) / len(per) if per else 0.0}, [{name: s} for s in per]


METRICS: dict[str, Callable[[list[str], list[str]], Scored]] = {
    "rouge_l": rouge_l, "bleu": bleu, "exact_match": exact_match, "contains": contains, "json_valid": json_valid,
}  # the recipe checks names against its torch-free TEXT_METRICS; a unit test keeps the two equal


@dataclass(frozen=True)
class Metric:
    """One entry of ``eval.metrics``: a built-in, or the user's function (``user``)."""

    name: str
    fn: Callable
    user: bool = False

    def score(self, predictions: list[str], references: list[str], examples: list[dict]) -> Scored:
        if not self.user:
            return self.fn(predictions, references)
        try:
            value = self.fn(predictions, references, examples) if _takes_three(self.fn) \
                else self.fn(predictions, references)
        except Exception as exc:  # the user's code: one paragraph naming the entry, not a traceback
            raise RecipeError(f"eval.metrics: {self.name} raised {type(exc).__name__}: {exc}") from None
        key = self.name.rsplit(":", 1)[1]
        values = {key: value} if not isinstance(value, dict) else value
        out = {}
        for k, v in values.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise RecipeError(f"eval.metrics: {self.name} must return a finite number or a dict of finite "
                                  f"numbers; it returned {type(v).__name__} {v!r:.80}"
                                  f"{f' for {k!r}' if isinstance(value, dict) else ''}")
            out[str(k)] = float(v)
        return out, [{} for _ in predictions]


def _takes_three(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)


def load_user_metric(entry: str, folder: Path | None) -> Metric:
    """``module:function`` imported from ``folder`` (the recipe's) or the Python path."""
    module_name, _, fn_name = entry.partition(":")
    where = f"{folder} or the Python path" if folder else "the Python path"
    saved = list(sys.path)
    if folder is not None:
        sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.split(".")[0] != exc.name.split(".")[0]:
            raise RecipeError(f"eval.metrics: {entry}: importing {module_name} failed: {exc}") from None
        raise RecipeError(f"eval.metrics: {entry}: no module {module_name!r} in {where}; write "
                          f"{module_name.replace('.', '/')}.py beside the recipe or install it") from None
    except Exception as exc:  # the user's module: its error, one paragraph
        raise RecipeError(f"eval.metrics: {entry}: importing {module_name} failed: "
                          f"{type(exc).__name__}: {exc}") from None
    finally:
        sys.path[:] = saved
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        found = getattr(module, "__file__", module_name)
        raise RecipeError(f"eval.metrics: {entry}: {found} has no function {fn_name!r} "
                          f"(it gets predictions, references[, examples] and returns a float or a dict of floats)")
    return Metric(entry, fn, user=True)


def resolve_metrics(names: list[str], folder: Path | None = None) -> list[Metric]:
    """The metrics ``names`` denote; an unknown name is an error listing the built-in ones."""
    out = []
    for name in names:
        if ":" in name:
            out.append(load_user_metric(name, folder))
        else:
            out.append(Metric(name, lookup(METRICS, name, "metric", "eval.metrics: ")))
        if name == "bleu" and importlib.util.find_spec("sacrebleu") is None:
            raise RecipeError("eval.metrics: bleu is computed by sacrebleu, which is not installed: "
                              "pip install sacrebleu, or remove bleu")
    return out


def score_all(metrics: list[Metric], predictions: list[str], references: list[str],
              examples: list[dict]) -> Scored:
    """Every metric on the same answers: the aggregates and one dict of scores per example."""
    totals: dict[str, float] = {}
    per: list[dict[str, float]] = [{} for _ in predictions]
    for metric in metrics:
        agg, rows = metric.score(predictions, references, examples)
        totals.update(agg)
        for mine, theirs in zip(per, rows):
            mine.update(theirs)
    return totals, per
