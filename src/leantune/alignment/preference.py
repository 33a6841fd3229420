"""Preference pairs: building them from real dialog data, and turning them into tokens.

A pair is ``{"prompt", "chosen", "rejected"}`` (the ``preference`` data format). The
builder makes pairs from dialog data without any human labels: the real reply is
chosen; the rejected one is either a reply to a prompt of a *different* category
(fluent but off-topic) or a corrupted copy of the real reply (words shuffled and
truncated). Both are cheap, reproducible negatives in the spirit of contrastive
response ranking; they teach relevance and fluency, not helpfulness.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.builtin import write_jsonl as _write_jsonl
from ..data.collate import pad_batch
from ..data.templates import render
from ..errors import LeantuneError

REJECT_MODES = ("mismatch", "corrupt", "mixed")


def corrupt_reply(text: str, rng: random.Random) -> str:
    """The reply's words shuffled and cut to at most 2/3 of them (never the original text)."""
    words = text.split()
    if len(words) < 2:
        return (text[::-1] + " " + text).strip() if text.strip() else "..."
    keep = max(1, (2 * len(words)) // 3)
    for _ in range(5):
        shuffled = words[:]
        rng.shuffle(shuffled)
        out = " ".join(shuffled[:keep])
        if out.strip() != text.strip():
            return out
    return " ".join(reversed(words))


def build_preference_pairs(pairs: list[dict], mode: str = "mixed", seed: int = 0,
                           limit: int | None = None) -> list[dict]:
    """Preference rows from ``{"prompt", "completion", "category"}`` dialog pairs
    (e.g. :func:`leantune.data.builtin.dialog_pairs`).

    ``mode``: ``mismatch`` (a reply from another category), ``corrupt`` (the real reply
    shuffled and truncated) or ``mixed`` (alternating). Rows keep ``category`` and say how
    the rejected reply was made in ``rejected_kind``.
    """
    if mode not in REJECT_MODES:
        raise LeantuneError(f"preference builder: mode {mode!r} is not one of {', '.join(REJECT_MODES)}")
    rng = random.Random(seed)
    by_cat: dict[str, list[str]] = {}
    for p in pairs:
        by_cat.setdefault(p.get("category", ""), []).append(p["completion"])
    cats = sorted(by_cat)
    rows = []
    order = list(range(len(pairs)))
    rng.shuffle(order)
    for n, i in enumerate(order):
        p = pairs[i]
        kind = mode if mode != "mixed" else ("mismatch" if n % 2 == 0 else "corrupt")
        rejected = None
        others = [c for c in cats if c != p.get("category", "")]
        if kind == "mismatch" and others:
            for _ in range(5):
                cand = rng.choice(by_cat[rng.choice(others)])
                if cand.strip() != p["completion"].strip():
                    rejected = cand
                    break
        if rejected is None:
            kind, rejected = "corrupt", corrupt_reply(p["completion"], rng)
        if rejected.strip() == p["completion"].strip():
            continue
        rows.append({"prompt": p["prompt"], "chosen": p["completion"], "rejected": rejected,
                     "category": p.get("category", ""), "rejected_kind": kind})
        if limit and len(rows) >= limit:
            break
    return rows


# --------------------------------------------------------------------------- rendering and tokens

def prompt_messages(example: dict) -> list[dict]:
    """The prompt of a chat or preference example as messages ending with a user turn."""
    if "prompt" in example:
        return example["prompt"]
    return example["messages"][:-1]


def render_prompt(tokenizer, template: str, messages: list[dict]) -> str:
    return render(tokenizer, messages, template, add_generation_prompt=True)


def render_reply(tokenizer, template: str, messages: list[dict], reply: str) -> str:
    """The text the template puts after the generation prompt for ``reply`` (with its end marker)."""
    prompt = render_prompt(tokenizer, template, messages)
    full = render(tokenizer, messages + [{"role": "assistant", "content": reply}], template)
    if not full.startswith(prompt):
        raise LeantuneError("the chat template renders the prompt differently inside the whole conversation; "
                            "set data.template: chatml (or plain)")
    return full[len(prompt):].rstrip()


def encode_pair(tokenizer, prompt_text: str, reply_text: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + reply and the prompt's length; an overlong prompt loses its start,
    an overlong reply its end (the reply keeps at least half of ``max_length``)."""
    p = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    r = tokenizer(reply_text, add_special_tokens=False)["input_ids"]
    if len(p) + len(r) > max_length:
        r = r[: max_length - min(len(p), max_length // 2)]
        p = p[len(p) - (max_length - len(r)):] if max_length > len(r) else []
    return p + r, len(p)


def tokenize_preferences(examples: list[dict], tokenizer, template: str, max_length: int) -> list[dict]:
    """Features ``{"input_ids": chosen ids, "rejected_ids", "chosen_prompt_len", "rejected_prompt_len", "line"}``."""
    out = []
    for ex in examples:
        prompt = render_prompt(tokenizer, template, ex["prompt"])
        chosen, pc = encode_pair(tokenizer, prompt, render_reply(tokenizer, template, ex["prompt"], ex["chosen"]),
                                 max_length)
        rejected, pr = encode_pair(tokenizer, prompt,
                                   render_reply(tokenizer, template, ex["prompt"], ex["rejected"]), max_length)
        out.append({"input_ids": chosen, "rejected_ids": rejected, "chosen_prompt_len": pc,
                    "rejected_prompt_len": pr, "line": ex.get("line")})
    return out


def collate_pairs(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """One right-padded batch: the chosen sequences first, then the rejected ones."""
    rows = [{"input_ids": f["input_ids"]} for f in features] + [{"input_ids": f["rejected_ids"]} for f in features]
    batch = pad_batch(rows, pad_id)
    prompt_lens = [f.get("chosen_prompt_len", 0) for f in features] + [f.get("rejected_prompt_len", 0)
                                                                       for f in features]
    batch["reply_mask"] = batch["attention_mask"].clone()
    for i, n in enumerate(prompt_lens):
        batch["reply_mask"][i, :n] = 0
    return batch


def reply_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probability of each row's reply tokens (``reply_mask``) under ``model``."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    logp = torch.gather(F.log_softmax(logits, -1), 2, targets.unsqueeze(-1)).squeeze(-1)
    return (logp * batch["reply_mask"][:, 1:]).sum(-1)


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    return _write_jsonl(rows, Path(path))
