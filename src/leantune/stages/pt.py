"""Continued pretraining on unlabelled domain text (Gururangan et al. 2020, Don't Stop
Pretraining, arXiv:2004.10964): causal LM for decoders, masked LM for encoders."""
from __future__ import annotations

import torch
from torch import nn

from ..data.collate import mask_tokens, pad_batch, pad_packed
from ..data.packing import (
    SEGMENTS,
    check_packed_attention,
    pack_features,
    packing_info,
    tokenize_documents,
    uses_varlen_attention,
)
from ..data.tokenize import tokenize_for_mlm, tokenize_text_blocks
from ..errors import RecipeError
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
    packing = False  # train.packing: each document a segment of packed rows (data/packing.py)
    one_row = False  # packed rows of a batch concatenated into one (variable-length attention kernels)

    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        mlm = self.config.objective == "mlm" or (self.config.objective == "auto" and model_type in ENCODERS)
        return "masked_lm" if mlm else "causal_lm"

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        self.tokenizer = tokenizer
        self.mlm = self.head_name == "masked_lm"
        n = recipe.train.max_length
        self.packing = recipe.train.packing
        if self.packing and self.mlm:
            raise RecipeError("train.packing: masked-LM pretraining (an encoder, or stage.objective: mlm) attends "
                              "in both directions and does not pack; set train.packing: false")
        if self.mlm:
            train, stats = tokenize_for_mlm(train_examples, tokenizer, n)
            evals, _ = tokenize_for_mlm(eval_examples, tokenizer, n)
        elif self.packing:  # documents kept apart: one segment each, no block across two
            docs, stats = tokenize_documents(train_examples, tokenizer, n)
            evals, _ = tokenize_documents(eval_examples, tokenizer, n)
            train = pack_features(docs, n)
            info = {"tokenize": stats.__dict__, "packing": packing_info(docs, train, n)}
            return PreparedData(train, evals, info=info)
        else:
            train, stats = tokenize_text_blocks(train_examples, tokenizer, n)
            evals, _ = tokenize_text_blocks(eval_examples, tokenizer, n)
        return PreparedData(train, evals, info={"tokenize": stats.__dict__})

    def attach(self, model: nn.Module) -> nn.Module:
        if self.packing:
            self.one_row = uses_varlen_attention(model)
            check_packed_attention(model)
        return model

    def collate(self, features, generator: torch.Generator | None = None) -> dict:
        if SEGMENTS in features[0]:
            return pad_packed(features, self.tokenizer.pad_token_id, self.one_row)
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
