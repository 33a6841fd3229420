"""Forgetting probe: what a fine-tune cost in general ability (catastrophic forgetting,
McCloskey & Cohen 1989; measured for LLM fine-tuning by Luo et al. 2023, arXiv:2308.08747).

Two figures, before and after training (``eval.forgetting``):

- ``general_perplexity``: token-weighted perplexity on general text. The built-in sample
  (:func:`builtin_text`) is fixed (seed 0): 60 replies of the 20 Newsgroups test split
  (Lang 1995; as shipped: lower-cased, no punctuation), each the 120 words after its quoting
  header (subject and "in article … writes"), skipping posts whose words still hold a header,
  an address, a token over 20 characters or a quote marker (a word that is one word in ten);
  and 240 English ChatterBot dialog pairs in 30 blocks of 8 "question\\nanswer" lines: 13.6k
  SmolLM2 tokens. Each text is scored in windows of at most 256 tokens.
- ``probe_accuracy``: accuracy on the project's multiple-choice questions
  (``resources/probe/general_mc.jsonl``, see its README): the option with the highest
  log-likelihood divided by its length in characters as the continuation of ``"Question: …\\nAnswer:"``
  (lm-evaluation-harness's ``acc_norm``).
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data.builtin import dialog_pairs, newsgroups
from ..data.collate import pad_batch
from ..data.paths import resolve_data_path
from ..data.readers import read_rows
from ..errors import DataValidationError, LeantuneError, Problem, RecipeError
from ..training.losses import fast_path, unwrap, uses_prompt_learning
from .batching import inference, length_sorted
from .lm import lm_metrics

FORGETTING_METRICS = ("general_perplexity", "probe_accuracy")
BUILTIN_PROBE = "builtin:probe/general_mc.jsonl"
WINDOW = 256            # tokens per scored window of general text
SAMPLE_SEED = 0
NEWS_POSTS, NEWS_WORDS = 60, 120
DIALOG_PAIRS, DIALOG_BLOCK = 240, 8
HEADER_WORDS = {"writes", "wrote", "article", "path", "edu", "com", "subject"}


def builtin_text() -> list[str]:
    """The fixed general-text sample described in the module docstring."""
    rng = random.Random(SAMPLE_SEED)
    posts = newsgroups("test")
    texts = []
    for i in rng.sample(range(len(posts)), len(posts)):
        words = posts[i]["text"].split()
        head = [j for j, w in enumerate(words[:40]) if w == "writes"]
        body = words[head[-1] + 1:][:NEWS_WORDS] if head else []
        if len(body) == NEWS_WORDS and _plain(body):
            texts.append(" ".join(body))
            if len(texts) == NEWS_POSTS:
                break
    pairs = rng.sample(dialog_pairs("english"), DIALOG_PAIRS)
    lines = [f"{p['prompt']}\n{p['completion']}" for p in pairs]
    return texts + ["\n".join(lines[s:s + DIALOG_BLOCK]) for s in range(0, len(lines), DIALOG_BLOCK)]


def _plain(words: list[str]) -> bool:
    """Prose: no further quoting header or address, no uuencoded or tabular lines, no quote
    marker repeated through the text."""
    return (not HEADER_WORDS & set(words) and max(map(len, words)) <= 20
            and Counter(words).most_common(1)[0][1] <= len(words) // 10)


def read_text(path: Path) -> list[str]:
    """A user's general text: ``.jsonl``/``.json``/``.csv`` rows with a ``text`` field, or plain
    text whose paragraphs (separated by blank lines) are the texts."""
    if path.suffix.lower() in (".jsonl", ".json", ".csv", ".parquet"):
        rows = read_rows(path)
        bad = [Problem(str(path), line, "text", "missing or not a non-empty string") for line, row in rows
               if not isinstance(row.get("text"), str) or not row["text"].strip()]
        if bad:
            raise DataValidationError(bad)
        texts = [row["text"] for _, row in rows]
    else:
        try:
            texts = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise LeantuneError(f"eval.forgetting.text: cannot read {path}: {exc}") from None
    if not texts:
        raise LeantuneError(f"eval.forgetting.text: {path} holds no text")
    return texts


def read_probe(path: Path) -> list[dict]:
    """Multiple-choice items ``{question, options, answer}`` (answer: index into options)."""
    rows, problems = read_rows(path), []
    for line, row in rows:
        q, options, answer = row.get("question"), row.get("options"), row.get("answer")
        if not isinstance(q, str) or not q.strip():
            problems.append(Problem(str(path), line, "question", "missing or not a non-empty string"))
        if (not isinstance(options, list) or len(options) < 2
                or not all(isinstance(o, str) and o.strip() for o in options) or len(set(options)) != len(options)):
            problems.append(Problem(str(path), line, "options", "needs a list of at least two different, "
                                                                 "non-empty strings"))
        elif type(answer) is not int or not 0 <= answer < len(options):
            problems.append(Problem(str(path), line, "answer", f"needs the index of the right option, "
                                                               f"0 to {len(options) - 1}"))
    if problems:
        raise DataValidationError(problems)
    if not rows:
        raise LeantuneError(f"eval.forgetting.probe: {path} holds no questions")
    return [row for _, row in rows]


def probe_context(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation tokens as lm-evaluation-harness splits them: the context's
    trailing spaces move to the continuation, the whole text is encoded and cut after the
    context's own tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


def continuation_logprobs(model: nn.Module, tokenizer, pairs: list[tuple[str, str]],
                          batch_size: int) -> list[float]:
    """log p(continuation | context) summed over the continuation's tokens, for each pair;
    batched, longest first, the output projection run only at the continuation's positions."""
    encoded = [encode_pair(tokenizer, c, x) for c, x in pairs]
    features = [{"input_ids": (ctx + cont)[:-1], "start": len(ctx) - 1, "target": cont} for ctx, cont in encoded]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lm = unwrap(model)
    path = None if uses_prompt_learning(model) else fast_path(lm)
    out = [0.0] * len(pairs)
    with inference(model):
        for idx, chunk in length_sorted(features, batch_size):
            batch = pad_batch([{"input_ids": f["input_ids"]} for f in chunk], pad)
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            rows = torch.tensor([r for r, f in enumerate(chunk) for _ in f["target"]], device=device)
            cols = torch.tensor([f["start"] + k for f in chunk for k in range(len(f["target"]))], device=device)
            targets = torch.tensor([t for f in chunk for t in f["target"]], device=device)
            if path is not None:
                backbone, head = path
                hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
                logits = head(hidden[rows, cols])
            else:  # prompt learning (virtual tokens first) or a model without a plain head
                logits = model(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1]:][rows, cols]
            picked = torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
            sums = torch.zeros(len(chunk), device=device).index_add_(0, rows, picked)
            for i, s in zip(idx, sums.tolist()):
                out[i] = s
    return out


def probe_accuracy(model: nn.Module, tokenizer, items: list[dict], batch_size: int) -> float:
    """Share of items whose right option has the highest log-likelihood per character."""
    pairs = [(probe_context(it["question"]), " " + o) for it in items for o in it["options"]]
    scores = iter(continuation_logprobs(model, tokenizer, pairs, batch_size))
    right = 0
    for it in items:
        per_char = [next(scores) / len(o) for o in it["options"]]
        right += max(range(len(per_char)), key=per_char.__getitem__) == it["answer"]
    return right / len(items)


def text_windows(tokenizer, texts: list[str], window: int = WINDOW) -> list[dict]:
    """Each text's tokens in consecutive windows of at most ``window`` tokens, every token labelled."""
    out = []
    for text in texts:
        ids = tokenizer.encode(text)
        for s in range(0, len(ids), window):
            piece = ids[s:s + window]
            if len(piece) > 1:
                out.append({"input_ids": piece, "labels": list(piece)})
    return out


@dataclass
class ForgettingProbe:
    """The general text (tokenized) and the probe's items of one run, scored by :meth:`measure`."""

    windows: list[dict]
    items: list[dict]
    tokenizer: object

    def measure(self, model: nn.Module, batch_size: int) -> dict[str, float]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        lm = lm_metrics(model, self.windows, batch_size, lambda f: pad_batch(f, pad), shifted=True)
        return {"general_perplexity": lm["perplexity"],
                "probe_accuracy": probe_accuracy(model, self.tokenizer, self.items, batch_size)}


def _file(spec: str, base_dir: Path | None, field: str) -> Path:
    path = resolve_data_path(spec, base_dir)
    if not path.is_file():
        raise RecipeError(f"eval.forgetting.{field}: {spec} is not a file")
    return path


def forgetting_probe(setting, tokenizer, base_dir: Path | None, head: str) -> ForgettingProbe | None:
    """``eval.forgetting`` read and tokenized (None when off); files resolve like data files."""
    if not setting:
        return None
    if head != "causal_lm":
        raise RecipeError(f"eval.forgetting: the forgetting probe scores causal language models (sft, pt, …); "
                          f"this run trains a {head} model: set eval.forgetting: false")
    text = getattr(setting, "text", None)
    probe = getattr(setting, "probe", None)
    texts = read_text(_file(text, base_dir, "text")) if text else builtin_text()
    items = read_probe(_file(probe or BUILTIN_PROBE, base_dir, "probe"))
    windows = text_windows(tokenizer, texts)
    if not windows:
        raise LeantuneError(f"eval.forgetting.text: {text} has no text of two tokens or more")
    return ForgettingProbe(windows, items, tokenizer)
