"""Greedy answers to a few prompts, for before/after comparisons and `leantune chat`."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..data.templates import render, resolve_template
from ..training.modes import evaluating

# The decoding of the answers in report.md and `leantune chat`; exported folders ship the same
# settings (generation_config.json, Ollama's Modelfile) so that others decode as training reported.
ANSWER_SETTINGS = {"do_sample": False, "repetition_penalty": 1.1}


def _stop_ids(tokenizer) -> list[int]:
    """End-of-turn token ids: the tokenizer's EOS and ChatML's ``<|im_end|>`` where it exists."""
    return [t for t in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
            if isinstance(t, int) and t >= 0 and t != tokenizer.unk_token_id]


def generate_answer(model: nn.Module, tokenizer, messages: list[dict], template_name: str = "auto",
                    max_new_tokens: int = 96) -> str:
    template = resolve_template(tokenizer, template_name)
    text = render(tokenizer, messages, template, add_generation_prompt=True)
    enc = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    stop = _stop_ids(tokenizer)
    with evaluating(model):
        out = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=stop or None,
                             pad_token_id=tokenizer.pad_token_id, **ANSWER_SETTINGS)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def generate_answers(model: nn.Module, tokenizer, prompts: list[str], template_name: str = "auto",
                     max_new_tokens: int = 96,
                     prepare: Callable[[list[dict]], list[dict]] | None = None) -> list[str]:
    """Answers to single-turn ``prompts``; ``prepare`` rewrites each conversation first (e.g. adds
    retrieved documentation)."""
    torch.manual_seed(0)
    prepare = prepare or (lambda messages: messages)
    return [generate_answer(model, tokenizer, prepare([{"role": "user", "content": p}]), template_name,
                            max_new_tokens) for p in prompts]


def generate_batched(model: nn.Module, tokenizer, prompts: list[str], template_name: str = "auto",
                     max_new_tokens: int = 64, batch_size: int = 16) -> list[str]:
    """Greedy answers to single-turn ``prompts``, ``batch_size`` at a time (left padding, KV cache).

    Plain greedy decoding (no repetition penalty, which would also penalise words of the
    question, and of the padding, that a correct answer repeats). Prompts are grouped by
    length to keep padding small; the answers come back in the order of ``prompts``.
    """
    return generate_conversations(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts],
                                  template_name, max_new_tokens, batch_size)


def generate_conversations(model: nn.Module, tokenizer, conversations: list[list[dict]], template_name: str = "auto",
                           max_new_tokens: int = 64, batch_size: int = 16,
                           max_prompt_tokens: int | None = None) -> list[str]:
    """Greedy next replies to whole ``conversations`` (each a list of messages ending before the
    reply), batched as :func:`generate_batched`; a prompt longer than ``max_prompt_tokens`` keeps
    its last tokens (the latest turns and the generation prompt)."""
    template = resolve_template(tokenizer, template_name)
    texts = [render(tokenizer, messages, template, add_generation_prompt=True) for messages in conversations]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    device = next(model.parameters()).device
    stop = _stop_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop or [0])[0]
    answers: list[str] = [""] * len(texts)
    sides = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side = tokenizer.truncation_side = "left"
    cut = {"truncation": True, "max_length": max_prompt_tokens} if max_prompt_tokens else {}
    try:
        with evaluating(model):
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                enc = tokenizer([texts[i] for i in idx], add_special_tokens=False, padding=True,
                                return_tensors="pt", **cut).to(device)
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                     eos_token_id=stop or None, pad_token_id=pad_id, use_cache=True)
                for row, i in enumerate(idx):
                    answers[i] = tokenizer.decode(out[row, enc["input_ids"].shape[1]:],
                                                  skip_special_tokens=True).strip()
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
    return answers
