"""Supervised instruction fine-tuning (Wei et al. 2022, FLAN, arXiv:2109.01652; Ouyang et
al. 2022, InstructGPT, arXiv:2203.02155): next-token loss on the responses only."""
from __future__ import annotations

import torch
from torch import nn

from ..data.collate import pad_batch
from ..data.templates import render, resolve_template
from ..data.tokenize import IGNORE, TokenizeStats, tokenize_chat
from ..evaluation.lm import lm_metrics
from ..training.losses import causal_lm_loss, label_count, model_loss
from .registry import PreparedData, Stage, register


@register
class SFT(Stage):
    name = "sft"
    summary = "Instruction tuning on chat data (alpaca, sharegpt, messages, chatglm, prompt_completion)."
    data_kinds = ("chat",)

    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        return "seq2seq" if is_encoder_decoder else "causal_lm"

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        self.pad_id = tokenizer.pad_token_id
        self.seq2seq = self.head_name == "seq2seq"
        if self.seq2seq:
            train, stats = tokenize_seq2seq(train_examples, tokenizer, recipe.train.max_length)
            evals, _ = tokenize_seq2seq(eval_examples, tokenizer, recipe.train.max_length)
        else:
            template = resolve_template(tokenizer, recipe.data.template)
            args = (tokenizer, template, recipe.train.max_length, recipe.data.train_on_prompt)
            train, stats = tokenize_chat(train_examples, *args)
            evals, _ = tokenize_chat(eval_examples, *args)
        return PreparedData(train, evals, info={"tokenize": stats.__dict__})

    def collate(self, features, generator=None) -> dict:
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
