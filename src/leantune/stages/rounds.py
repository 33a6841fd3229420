"""What the round-based stages (self_train, co_train, active) share: featurising labelled and
unlabelled text, the pool's true labels where known, training a sequence classifier with the
shared engine, class probabilities, and :class:`RoundClassifier`, the stage methods common to
the three."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from ..data.collate import pad_batch
from ..data.paths import resolve_data_path
from ..data.readers import read_rows
from ..errors import DataValidationError, Problem, RecipeError
from ..evaluation.classification import classification_metrics
from ..training.checkpoint import load_trainable
from ..training.engine import Engine, TrainResult
from ..training.modes import evaluating
from .registry import PreparedData

UNKNOWN = -1  # label id of an example whose label is not known


def label_index(recipe, train_examples, eval_examples, labels: list[str] | None) -> list[str]:
    labels = labels or sorted({str(e["label"]) for e in train_examples if "label" in e})
    index = set(labels)
    bad = [Problem(recipe.data.train or "data", e.get("line") or 0, "label",
                   f"label {e['label']!r} does not occur in the training labels {labels[:10]}")
           for e in list(train_examples) + list(eval_examples) if "label" in e and str(e["label"]) not in index]
    if bad:
        raise DataValidationError(bad)
    return labels


def pool_gold(recipe, pool: list[dict], labels: list[str]) -> list[int | None]:
    """True label ids of the pool rows where they can be found (else None): for ``unlabeled:
    keep`` from the training file by line, for a pool file from its ``label`` column."""
    spec = recipe.data.train if recipe.data.unlabeled == "keep" else recipe.data.unlabeled
    try:
        by_line = {line: row.get("label") for line, row in read_rows(resolve_data_path(spec))}
    except Exception:  # noqa: BLE001 - unreadable here (e.g. a recipe-relative path): unknown
        return [None] * len(pool)
    index = {lab: i for i, lab in enumerate(labels)}
    return [index.get(str(by_line.get(ex.get("line")))) for ex in pool]


def featurize(examples: list[dict], tokenizer, max_length: int, labels: list[str],
              view: Literal["full", "head", "tail"] = "full") -> list[dict]:
    """Token features with ``labels`` (``UNKNOWN`` when the example has none). ``head``/``tail``
    keep the first/last ``max_length // 2`` text tokens: two views of one text for co-training."""
    index = {lab: i for i, lab in enumerate(labels)}
    out = []
    for ex in examples:
        if view == "full":
            enc = tokenizer(ex["text"], ex.get("text_pair"), truncation=True, max_length=max_length)
            ids, tt = enc["input_ids"], enc.get("token_type_ids")
        else:
            full = tokenizer(ex["text"])["input_ids"]
            special = tokenizer.get_special_tokens_mask(full, already_has_special_tokens=True)
            lo = next((i for i, m in enumerate(special) if not m), len(full))
            hi = len(full) - next((i for i, m in enumerate(reversed(special)) if not m), len(full))
            body, half = full[lo:hi], max(1, max_length // 2)
            ids = full[:lo] + (body[:half] if view == "head" else body[-half:]) + full[hi:]
            tt = None
        feat = {"input_ids": ids, "labels": index.get(str(ex.get("label")), UNKNOWN) if "label" in ex else UNKNOWN}
        if tt is not None:
            feat["token_type_ids"] = tt
        out.append(feat)
    return out


def with_labels(features: list[dict], labels: list[int]) -> list[dict]:
    return [{**f, "labels": int(y)} for f, y in zip(features, labels)]


def make_collate(pad_id: int):
    def collate(features, generator=None) -> dict:
        return pad_batch(features, pad_id)
    return collate


def classifier_loss(model, batch) -> torch.Tensor:
    return model(**batch).loss


def class_probs(model, features: list[dict], batch_size: int, pad_id: int) -> torch.Tensor:
    """[N, C] softmax probabilities of a sequence classifier (labels ignored)."""
    device = next(model.parameters()).device
    out = []
    with evaluating(model):
        for s in range(0, len(features), batch_size):
            batch = pad_batch([{k: v for k, v in f.items() if k != "labels"} for f in features[s:s + batch_size]],
                              pad_id)
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            out.append(F.softmax(logits.float(), -1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def accuracy(probs: torch.Tensor, gold: list[int]) -> float:
    if not gold:
        return float("nan")
    return float((probs.argmax(-1) == torch.tensor(gold)).float().mean())


def fit(model, features: list[dict], recipe, folder: Path, pad_id: int,
        start: dict[str, torch.Tensor] | None = None) -> TrainResult:
    """Train ``model`` on ``features`` with the shared engine (``train.*`` settings, adversarial
    training included), logging to ``folder/metrics.jsonl``; first back to the trainable weights
    ``start`` when given (``reset: true``: every round starts from the same weights)."""
    if start is not None:
        load_trainable(model, start)
    folder.mkdir(parents=True, exist_ok=True)
    engine = Engine(model, features, recipe.train, folder, make_collate(pad_id), classifier_loss, progress=False)
    result = engine.fit(resume=False)
    model.train()
    return result


def merge_results(results: list[TrainResult]) -> TrainResult:
    """One TrainResult for a run made of several engine runs (steps, time and tokens summed)."""
    wall = sum(r.wall_time_s for r in results)
    tokens = sum(r.tokens for r in results)
    history, offset = [], 0
    for r in results:
        history += [{**h, "step": h["step"] + offset} for h in r.history]
        offset += r.steps
    return TrainResult(steps=offset, final_loss=results[-1].final_loss if results else float("nan"),
                       wall_time_s=wall, tokens=tokens, tokens_per_s=tokens / max(wall, 1e-9),
                       label_tokens_per_s=0.0, history=history)


class RoundClassifier:
    """Mixin of the round-based stages (``class SelfTrain(RoundClassifier, Stage)``): a sequence
    classifier on :func:`featurize` features, trained round by round in the shared engine (so
    ``train.adversarial`` applies). ``prepare`` sets ``self.pad_id``."""

    data_kinds = ("classification",)
    custom_loop = True
    multi_process = False  # its own loop runs in one process
    adversarial_ok = True  # every training of a round goes through the shared engine (fit)

    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        return "seq_cls"

    def collate(self, features, generator=None) -> dict:
        return pad_batch(features, self.pad_id)

    def loss(self, model, batch) -> torch.Tensor:
        return classifier_loss(model, batch)

    def start_pool(self, recipe, tokenizer, train_examples, eval_examples) -> None:
        """The start of ``prepare`` for the stages that label the unlabelled pool (self_train,
        co_train): a pool is required; sets ``pad_id``, ``labels`` (:func:`label_index`) and
        ``gold``, the pool's true label ids where known (:func:`pool_gold`)."""
        if not self.unlabeled:
            raise RecipeError(f"stage {self.name}: needs an unlabelled pool (data.unlabeled: keep, or a file)")
        self.pad_id = tokenizer.pad_token_id or 0
        self.labels = label_index(recipe, train_examples, eval_examples, self.config.labels)
        self.gold = pool_gold(recipe, self.unlabeled, self.labels)

    def evaluate(self, model, features, batch_size) -> dict[str, float]:
        probs = class_probs(model, features, batch_size, self.pad_id)
        return classification_metrics(probs.argmax(-1).tolist(), [f["labels"] for f in features])

    @staticmethod
    def prepared(train: list[dict], evals: list[dict], labels: list[str], pool: int) -> PreparedData:
        return PreparedData(train, evals, labels=labels,
                            info={"tokenize": {"examples": len(train), "tokens": sum(len(f["input_ids"]) for f in train)},
                                  "pool": pool})
