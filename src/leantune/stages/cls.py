"""Sequence classification with a task head: cross-entropy on the label, accuracy and
macro-F1 (Devlin et al. 2019, BERT, arXiv:1810.04805, §4.1)."""
from __future__ import annotations

from ..data.collate import pad_batch
from ..data.tokenize import tokenize_classification
from ..errors import DataValidationError, Problem
from ..evaluation.classification import classification_metrics, predict
from ..recipe.stage_settings import ClassificationSettings
from ..training.losses import model_loss
from .registry import PreparedData, Stage, register


@register
class Classification(Stage):
    name = "cls"
    summary = "Sequence classification (text or text pairs → label); accuracy and macro-F1."
    data_kinds = ("classification",)

    Config = ClassificationSettings

    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        return "seq_cls"

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        self.pad_id = tokenizer.pad_token_id
        labels = self.config.labels or sorted({str(e["label"]) for e in train_examples})
        label_ids = {label: i for i, label in enumerate(labels)}
        train_file = recipe.data.train or "data"
        unknown = [
            Problem(file, e.get("line") or 0, "label",
                    f"label {e['label']!r} does not occur in the training labels {labels[:10]}")
            for file, examples in ((train_file, train_examples), (recipe.data.eval or train_file, eval_examples))
            for e in examples if str(e["label"]) not in label_ids
        ]
        if unknown:
            raise DataValidationError(unknown)
        train, stats = tokenize_classification(train_examples, tokenizer, recipe.train.max_length, label_ids)
        evals, _ = tokenize_classification(eval_examples, tokenizer, recipe.train.max_length, label_ids)
        return PreparedData(train, evals, labels=labels, info={"tokenize": stats.__dict__})

    def collate(self, features, generator=None) -> dict:
        return pad_batch(features, self.pad_id)

    def loss(self, model, batch):
        return model_loss(model, batch)

    def evaluate(self, model, features, batch_size) -> dict[str, float]:
        preds, golds, loss = predict(model, features, batch_size, self.collate)
        return {"loss": loss, **classification_metrics(preds, golds)}
