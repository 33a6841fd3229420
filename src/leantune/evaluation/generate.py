"""Greedy answers to a few prompts, for before/after comparisons and `leantune chat`."""
from __future__ import annotations

import torch
from torch import nn

from ..data.templates import render, resolve_template
from ..training.modes import evaluating


def generate_answer(model: nn.Module, tokenizer, messages: list[dict], template_name: str = "auto",
                    max_new_tokens: int = 96) -> str:
    template = resolve_template(tokenizer, template_name)
    text = render(tokenizer, messages, template, add_generation_prompt=True)
    enc = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    stop = [t for t in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
            if isinstance(t, int) and t >= 0 and t != tokenizer.unk_token_id]
    with evaluating(model):
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop or None,
                             pad_token_id=tokenizer.pad_token_id, repetition_penalty=1.1)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def generate_answers(model: nn.Module, tokenizer, prompts: list[str], template_name: str = "auto",
                     max_new_tokens: int = 96) -> list[str]:
    torch.manual_seed(0)
    return [generate_answer(model, tokenizer, [{"role": "user", "content": p}], template_name, max_new_tokens)
            for p in prompts]
