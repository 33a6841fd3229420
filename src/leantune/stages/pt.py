"""Continued pretraining on unlabelled domain text (Gururangan et al. 2020, Don't Stop
Pretraining, arXiv:2004.10964): causal LM for decoders, masked LM for encoders."""
from __future__ import annotations

import torch

from ..data.collate import mask_tokens, pad_batch
from ..data.tokenize import tokenize_for_mlm, tokenize_text_blocks
from ..evaluation.lm import lm_metrics
from ..recipe.stage_settings import PretrainSettings
from ..training.losses import causal_lm_loss, label_count, model_loss
from .registry import PreparedData, Stage, register

ENCODERS = {"bert", "roberta", "distilbert", "electra", "deberta", "deberta-v2", "xlm-roberta", "albert"}


@register
class Pretrain(Stage):
    name = "pt"
    summary = "Continued pretraining on plain text: causal LM (decoders) or masked LM (encoders)."
    data_kinds = ("text",)

    Config = PretrainSettings

    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        mlm = self.config.objective == "mlm" or (self.config.objective == "auto" and model_type in ENCODERS)
        return "masked_lm" if mlm else "causal_lm"

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        self.tokenizer = tokenizer
        self.mlm = self.head_name == "masked_lm"
        n = recipe.train.max_length
        if self.mlm:
            train, stats = tokenize_for_mlm(train_examples, tokenizer, n)
            evals, _ = tokenize_for_mlm(eval_examples, tokenizer, n)
        else:
            train, stats = tokenize_text_blocks(train_examples, tokenizer, n)
            evals, _ = tokenize_text_blocks(eval_examples, tokenizer, n)
        return PreparedData(train, evals, info={"tokenize": stats.__dict__})

    def collate(self, features, generator: torch.Generator | None = None) -> dict:
        batch = pad_batch(features, self.tokenizer.pad_token_id)
        if self.mlm:
            gen = generator if generator is not None else torch.Generator().manual_seed(0)
            batch = mask_tokens(batch, self.tokenizer, self.config.mlm_probability, gen)
        return batch

    def loss(self, model, batch) -> torch.Tensor:
        return model_loss(model, batch) if self.mlm else causal_lm_loss(model, batch)

    def loss_weight(self, batch: dict) -> int:
        return label_count(batch, shifted=not self.mlm)

    def evaluate(self, model, features, batch_size) -> dict[str, float]:
        # masked LM: collate (no generator) masks with a fixed seed, so that evaluations are comparable
        return lm_metrics(model, features, batch_size, self.collate, shifted=not self.mlm)
