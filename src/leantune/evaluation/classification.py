"""Classification metrics: accuracy and macro-F1."""
from __future__ import annotations

from typing import Callable

from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from .batching import inference, length_sorted


def predict(model: nn.Module, features: list[dict], batch_size: int,
            collate: Callable[[list[dict]], dict]) -> tuple[list[int], list[int], float]:
    """(predicted labels, gold labels) in the order of ``features`` and the mean loss; batches
    of similar length, longest first."""
    device = next(model.parameters()).device
    preds, golds, loss_sum = [0] * len(features), [0] * len(features), 0.0
    with inference(model):
        for idx, chunk in length_sorted(features, batch_size):
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            out = model(**batch)
            loss_sum += float(out.loss) * len(idx)
            for i, p, g in zip(idx, out.logits.argmax(-1).tolist(), batch["labels"].tolist()):
                preds[i], golds[i] = p, g
    return preds, golds, loss_sum / max(len(features), 1)


def classification_metrics(preds: list[int], golds: list[int]) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(golds, preds)),
        "macro_f1": float(f1_score(golds, preds, average="macro", zero_division=0)),
    }
