"""Contrastive sentence embeddings on an encoder (mean pooling):

- ``simcse`` (text data): unsupervised SimCSE, two dropout views of each sentence (Gao et al.
  2021, arXiv:2104.08821);
- ``supcon`` (classification data): supervised contrastive loss, same-label examples are
  positives (Khosla et al. 2020, arXiv:2004.11362);
- ``pairs`` (prompt/completion chat rows or classification rows with ``text_pair``): symmetric
  InfoNCE with in-batch negatives on parallel pairs (e.g. cross-lingual alignment).

Evaluation: recall@1 (pairs, both directions), kNN accuracy against the training embeddings
(supcon), uniformity (all). The run exports mean-pooled embeddings of the evaluation set (the
training set when there is none) to ``adapter/embeddings.safetensors`` with their texts in
``adapter/embeddings.jsonl``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..data.collate import pad_batch
from ..errors import RecipeError
from ..recipe.stage_settings import ContrastiveSettings
from ..semisup.contrastive import encode, info_nce, knn_accuracy, recall_at_1, simcse_loss, supcon_loss, uniformity
from ..training.modes import evaluating
from .registry import PreparedData, Stage, register


@register
class Contrastive(Stage):
    name = "contrastive"
    summary = "Contrastive embeddings: SimCSE (text), supervised contrastive (labels), InfoNCE (pairs); recall@1, kNN."
    data_kinds = ("text", "classification", "chat")

    Config = ContrastiveSettings

    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        if is_encoder_decoder:
            raise RecipeError("stage contrastive: use an encoder (BERT) or decoder model, not encoder-decoder")
        return "encoder"

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        self.pad_id = tokenizer.pad_token_id or 0
        first = (train_examples or eval_examples)[0]
        if self.config.objective != "auto":
            self.objective = self.config.objective
        elif "messages" in first or first.get("text_pair"):
            self.objective = "pairs"
        elif "label" in first:
            self.objective = "supcon"
        else:
            self.objective = "simcse"
        if self.objective == "supcon" and "label" not in first:
            raise RecipeError("stage contrastive: objective supcon needs labelled (classification) data")
        labels = sorted({str(e["label"]) for e in train_examples + eval_examples if "label" in e}) or None
        self.labels = labels
        ml = recipe.train.max_length

        def feats(examples):
            out = []
            for ex in examples:
                a, b = _pair(ex)
                if self.objective == "pairs" and b is None:
                    raise RecipeError("stage contrastive: objective pairs needs prompt/completion rows or text_pair")
                f = {"input_ids": tokenizer(a, truncation=True, max_length=ml)["input_ids"], "text": a}
                if self.objective == "pairs":
                    f["pair_ids"] = tokenizer(b, truncation=True, max_length=ml)["input_ids"]
                    f["pair_text"] = b
                if labels and "label" in ex:
                    f["labels"] = labels.index(str(ex["label"]))
                out.append(f)
            return out

        self.train_features = feats(train_examples)
        evals = feats(eval_examples)
        tokens = sum(len(f["input_ids"]) + len(f.get("pair_ids", [])) for f in self.train_features)
        return PreparedData(self.train_features, evals, labels=None,
                            info={"tokenize": {"examples": len(train_examples), "tokens": tokens},
                                  "objective": self.objective})

    def collate(self, features, generator=None) -> dict:
        batch = pad_batch([{"input_ids": f["input_ids"]} for f in features], self.pad_id)
        if "pair_ids" in features[0]:
            pair = pad_batch([{"input_ids": f["pair_ids"]} for f in features], self.pad_id)
            batch["pair_input_ids"], batch["pair_attention_mask"] = pair["input_ids"], pair["attention_mask"]
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features])
        return batch

    def loss(self, model, batch) -> torch.Tensor:
        tau = self.config.temperature
        if self.objective == "simcse":
            return simcse_loss(encode(model, batch), encode(model, batch), tau)
        if self.objective == "pairs":
            a, b = encode(model, batch), encode(model, batch, "pair_")
            return (info_nce(a, b, tau) + info_nce(b, a, tau)) / 2
        return supcon_loss(encode(model, batch), batch["labels"], tau)

    def embed(self, model, features, batch_size: int, pair: bool = False) -> torch.Tensor:
        device = next(model.parameters()).device
        key = "pair_ids" if pair else "input_ids"
        out = []
        with evaluating(model):
            for s in range(0, len(features), batch_size):
                batch = pad_batch([{"input_ids": f[key]} for f in features[s:s + batch_size]], self.pad_id)
                out.append(encode(model, {k: v.to(device) for k, v in batch.items()}).cpu())
        return torch.cat(out)

    def evaluate(self, model, features, batch_size) -> dict[str, float]:
        z = self.embed(model, features, batch_size)
        metrics = {"uniformity": uniformity(z)}
        if self.objective == "pairs":
            zb = self.embed(model, features, batch_size, pair=True)
            metrics["recall_at_1"] = recall_at_1(z, zb)
            metrics["recall_at_1_reverse"] = recall_at_1(zb, z)
        if "labels" in features[0] and self.train_features and "labels" in self.train_features[0]:
            memory = self.embed(model, self.train_features, batch_size)
            metrics["knn_accuracy"] = knn_accuracy(z, [f["labels"] for f in features], memory,
                                                   [f["labels"] for f in self.train_features], self.config.knn_k)
        self.eval_details = {"objective": self.objective}
        self._last_eval = features
        return metrics

    def save_extra(self, model, folder: Path) -> None:
        if not self.config.export:
            return

        features = getattr(self, "_last_eval", None) or self.train_features
        z = self.embed(model, features, 16)
        tensors = {"embeddings": z.contiguous()}
        if self.objective == "pairs":
            tensors["pair_embeddings"] = self.embed(model, features, 16, pair=True).contiguous()
        save_file(tensors, str(Path(folder) / "embeddings.safetensors"), metadata={"pooling": "mean"})
        rows = [{"text": f["text"], **({"pair": f["pair_text"]} if "pair_text" in f else {}),
                 **({"label": self.labels[f["labels"]]} if "labels" in f and self.labels else {})} for f in features]
        (Path(folder) / "embeddings.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _pair(ex: dict) -> tuple[str, str | None]:
    if "messages" in ex:
        users = [m["content"] for m in ex["messages"] if m["role"] == "user"]
        replies = [m["content"] for m in ex["messages"] if m["role"] == "assistant"]
        return users[-1], replies[-1]
    return ex["text"], ex.get("text_pair")
