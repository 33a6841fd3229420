"""Supervised instruction fine-tuning (Wei et al. 2022, FLAN, arXiv:2109.01652; Ouyang et
al. 2022, InstructGPT, arXiv:2203.02155): next-token loss on the responses only."""
from __future__ import annotations

import torch
from torch import nn

from ..data.collate import pad_batch, pad_packed
from ..data.packing import SEGMENTS, check_packed_attention, pack_features, packing_info, uses_varlen_attention
from ..data.templates import render, resolve_template
from ..data.tokenize import IGNORE, TokenizeStats, tokenize_chat
from ..errors import RecipeError
from ..evaluation.lm import lm_metrics
from ..training.losses import causal_lm_loss, label_count, model_loss
from .registry import PreparedData, Stage, register


@register
class SFT(Stage):
    name = "sft"
    summary = "Instruction tuning on chat data (alpaca, sharegpt, messages, chatglm, prompt_completion)."
    data_kinds = ("chat",)
    packing = False  # train.packing: training features are packed rows (data/packing.py)
    one_row = False  # packed rows of a batch concatenated into one (variable-length attention kernels)

    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        return "seq2seq" if is_encoder_decoder else "causal_lm"

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        self.pad_id = tokenizer.pad_token_id
        self.seq2seq = self.head_name == "seq2seq"
        self.packing = recipe.train.packing
        if self.packing and self.seq2seq:
            raise RecipeError("train.packing: an encoder-decoder model reads each example as a source and a target, "
                              "which do not pack into rows; set train.packing: false")
        if self.seq2seq:
            train, stats = tokenize_seq2seq(train_examples, tokenizer, recipe.train.max_length)
            evals, _ = tokenize_seq2seq(eval_examples, tokenizer, recipe.train.max_length)
        else:
            template = resolve_template(tokenizer, recipe.data.template)
            args = (tokenizer, template, recipe.train.max_length, recipe.data.train_on_prompt)
            train, stats = tokenize_chat(train_examples, *args)
            evals, _ = tokenize_chat(eval_examples, *args)
        info = {"tokenize": stats.__dict__}
        if self.packing:
            rows = pack_features(train, recipe.train.max_length)
            info["packing"] = packing_info(train, rows, recipe.train.max_length)
            train = rows
        return PreparedData(train, evals, info=info)

    def attach(self, model: nn.Module) -> nn.Module:
        if self.packing:
            self.one_row = uses_varlen_attention(model)
            check_packed_attention(model)
        return model

    def collate(self, features, generator=None) -> dict:
        if SEGMENTS in features[0]:
            return pad_packed(features, self.pad_id, self.one_row)
        if self.seq2seq:
            batch = pad_batch([{"input_ids": f["input_ids"]} for f in features], self.pad_id)
            batch["labels"] = pad_batch([{"input_ids": f["labels"]} for f in features], self.pad_id)["input_ids"]
            lengths = [len(f["labels"]) for f in features]
            for i, n in enumerate(lengths):
                batch["labels"][i, n:] = IGNORE
            return batch
        return pad_batch(features, self.pad_id)

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model_loss(model, batch) if self.seq2seq else causal_lm_loss(model, batch)

    def loss_weight(self, batch: dict) -> int:
        return label_count(batch, shifted=not self.seq2seq)

    def evaluate(self, model, features, batch_size) -> dict[str, float]:
        return lm_metrics(model, features, batch_size, self.collate, shifted=not self.seq2seq)


def tokenize_seq2seq(examples, tokenizer, max_length) -> tuple[list[dict], TokenizeStats]:
    """Encoder-decoder models: the conversation so far is the source, the last reply the target."""
    stats = TokenizeStats(examples=len(examples))
    out = []
    for ex in examples:
        *context, target = ex["messages"]
        source = "\n".join(m["content"] for m in context)
        src = tokenizer(source, truncation=True, max_length=max_length)["input_ids"]
        tgt = tokenizer(text_target=target["content"], truncation=True, max_length=max_length)["input_ids"]
        out.append({"input_ids": src, "labels": tgt, "line": ex.get("line")})
        stats.tokens += len(src) + len(tgt)
        stats.label_tokens += len(tgt)
    return out, stats


def prompt_text(tokenizer, template_name: str, prompt: str) -> str:
    """A single user prompt rendered for generation."""
    return render(tokenizer, [{"role": "user", "content": prompt}], resolve_template(tokenizer, template_name),
                  add_generation_prompt=True)
