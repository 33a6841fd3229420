"""Classification metrics: accuracy and macro-F1."""
from __future__ import annotations

from typing import Callable

from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from ..training.modes import evaluating


def predict(model: nn.Module, features: list[dict], batch_size: int,
            collate: Callable[[list[dict]], dict]) -> tuple[list[int], list[int], float]:
    device = next(model.parameters()).device
    preds, golds, loss_sum = [], [], 0.0
    with evaluating(model):
        for s in range(0, len(features), batch_size):
            batch = {k: v.to(device) for k, v in collate(features[s: s + batch_size]).items()}
            out = model(**batch)
            loss_sum += float(out.loss) * len(batch["labels"])
            preds += out.logits.argmax(-1).tolist()
            golds += batch["labels"].tolist()
    return preds, golds, loss_sum / max(len(features), 1)


def classification_metrics(preds: list[int], golds: list[int]) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(golds, preds)),
        "macro_f1": float(f1_score(golds, preds, average="macro", zero_division=0)),
    }
