"""Examples → token features, with the loss mask.

Chat examples are rendered with the chat template; by default only the tokens of
assistant turns carry labels (the rest are -100), found by character spans so
that the tokenizer's merges across a turn boundary cannot shift the mask.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from ..errors import LeantuneError
from .templates import render

IGNORE = -100


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated: int = 0
    dropped_empty: int = 0
    tokens: int = 0
    label_tokens: int = 0
    notes: list[str] = field(default_factory=list)


def assistant_spans(tokenizer, messages: list[dict], template: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    full = render(tokenizer, messages, template)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        start_text = render(tokenizer, messages[:i], template, add_generation_prompt=True)
        end_text = render(tokenizer, messages[: i + 1], template)
        if not (full.startswith(start_text) and full.startswith(end_text)):
            raise LeantuneError(
                "the chat template renders a conversation's prefix differently from the whole, so the "
                "response tokens cannot be located; set data.template: chatml (or plain)"
            )
        # the turn ends at its end marker; whitespace the template puts after it is not the response
        spans.append((len(start_text), len(end_text.rstrip())))
    return full, spans


def tokenize_chat(examples: list[dict], tokenizer: PreTrainedTokenizerBase, template: str,
                  max_length: int, train_on_prompt: bool = False) -> tuple[list[dict], TokenizeStats]:
    stats = TokenizeStats()
    out = []
    for ex in examples:
        text, spans = assistant_spans(tokenizer, ex["messages"], template)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        if train_on_prompt:
            labels = list(ids)
        else:
            labels = [t if any(s <= a < e for s, e in spans) else IGNORE for t, (a, _) in zip(ids, offsets)]
        stats.examples += 1
        if len(ids) > max_length:
            stats.truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        if all(lab == IGNORE for lab in labels[1:]):
            stats.dropped_empty += 1
            continue
        stats.tokens += len(ids)
        stats.label_tokens += sum(lab != IGNORE for lab in labels[1:])
        out.append({"input_ids": ids, "labels": labels, "line": ex.get("line")})
    return out, stats


def tokenize_text_blocks(examples: list[dict], tokenizer: PreTrainedTokenizerBase,
                         block_size: int) -> tuple[list[dict], TokenizeStats]:
    """Causal-LM continued pretraining: concatenate texts (EOS between) and cut into blocks."""
    stats = TokenizeStats(examples=len(examples))
    stream: list[int] = []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for ex in examples:
        stream += tokenizer(ex["text"], add_special_tokens=False)["input_ids"] + eos
    blocks = [stream[i: i + block_size] for i in range(0, len(stream), block_size)]
    blocks = [b for b in blocks if len(b) > 1]
    stats.tokens = stats.label_tokens = sum(len(b) for b in blocks)
    return [{"input_ids": b, "labels": list(b)} for b in blocks], stats


def tokenize_for_mlm(examples: list[dict], tokenizer: PreTrainedTokenizerBase,
                     max_length: int) -> tuple[list[dict], TokenizeStats]:
    """Masked-LM continued pretraining: one truncated sequence per text; masking at collation."""
    stats = TokenizeStats(examples=len(examples))
    out = []
    for ex in examples:
        enc = tokenizer(ex["text"], truncation=True, max_length=max_length)
        stats.truncated += len(tokenizer(ex["text"])["input_ids"]) > max_length
        stats.tokens += len(enc["input_ids"])
        out.append({"input_ids": enc["input_ids"]})
    return out, stats


def tokenize_classification(examples: list[dict], tokenizer: PreTrainedTokenizerBase, max_length: int,
                            label_ids: dict[str, int]) -> tuple[list[dict], TokenizeStats]:
    stats = TokenizeStats(examples=len(examples))
    out = []
    for ex in examples:
        pair = ex.get("text_pair")
        enc = tokenizer(ex["text"], pair, truncation=True, max_length=max_length)
        full = tokenizer(ex["text"], pair)["input_ids"]
        stats.truncated += len(full) > max_length
        stats.tokens += len(enc["input_ids"])
        feat = {"input_ids": enc["input_ids"], "labels": label_ids[str(ex["label"])], "line": ex.get("line")}
        if "token_type_ids" in enc:
            feat["token_type_ids"] = enc["token_type_ids"]
        out.append(feat)
    return out, stats
