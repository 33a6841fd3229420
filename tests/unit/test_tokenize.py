"""Examples → features: the loss mask of chat examples, text blocks, padding, MLM masking."""
from __future__ import annotations

import torch

from leantune.data.collate import mask_tokens, pad_batch
from leantune.data.templates import CHATML, PLAIN
from leantune.data.tokenize import IGNORE, tokenize_chat, tokenize_text_blocks

END = "<|im_end|>"


def msg(role, content):
    return {"role": role, "content": content}


SINGLE = [msg("user", "What is 2+2?"), msg("assistant", "It is 4.")]
MULTI = [
    msg("system", "You answer briefly."),
    msg("user", "Name a colour."),
    msg("assistant", "Blue — like the sky."),
    msg("user", "And a fruit?"),
    msg("assistant", "A pear.\nOr an apple."),
]


def labelled_text(tok, feat) -> str:
    return tok.decode([t for t, lab in zip(feat["input_ids"], feat["labels"]) if lab != IGNORE])


def labelled_runs(feat) -> list[tuple[int, int]]:
    """[start, end) index ranges of consecutive labelled tokens."""
    runs, start = [], None
    for i, lab in enumerate(feat["labels"] + [IGNORE]):
        if lab != IGNORE and start is None:
            start = i
        elif lab == IGNORE and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_tiny_tokenizer_is_byte_level(tiny_tokenizer):
    text = "héllo <|im_start|>x"
    enc = tiny_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    # one token per byte ('é' is two), the marker one special token
    assert len(enc["input_ids"]) == len("héllo x".encode()) + 1
    assert tiny_tokenizer.decode(enc["input_ids"]) == text
    start = text.index("<|im_start|>")
    assert enc["input_ids"][-2] == tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert enc["offset_mapping"][-2] == (start, start + len("<|im_start|>"))
    assert tiny_tokenizer.chat_template == CHATML


def test_single_turn_labels_only_the_answer(tiny_tokenizer):
    (feat,), stats = tokenize_chat([{"messages": SINGLE, "line": 3}], tiny_tokenizer, CHATML, 512)
    ids, labels = feat["input_ids"], feat["labels"]
    full = tiny_tokenizer.apply_chat_template(SINGLE, chat_template=CHATML, tokenize=False)
    assert tiny_tokenizer.decode(ids) == full
    assert feat["line"] == 3
    assert labelled_text(tiny_tokenizer, feat) == "It is 4." + END
    # the labelled tokens are exactly the tokens after the prompt, up to and including <|im_end|>
    prompt = tiny_tokenizer.apply_chat_template(SINGLE[:1], chat_template=CHATML, tokenize=False,
                                                add_generation_prompt=True)
    n_prompt = len(tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    n_answer = len(tiny_tokenizer("It is 4." + END, add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:n_prompt + n_answer] == ids[n_prompt:n_prompt + n_answer]
    assert labels[n_prompt + n_answer:] == [IGNORE] * (len(ids) - n_prompt - n_answer)
    assert ids[n_prompt + n_answer - 1] == tiny_tokenizer.eos_token_id
    assert stats.examples == 1 and stats.truncated == 0 and stats.dropped_empty == 0
    assert stats.tokens == len(ids) and stats.label_tokens == n_answer


def test_multi_turn_with_system_labels_every_answer(tiny_tokenizer):
    (feat,), stats = tokenize_chat([{"messages": MULTI}], tiny_tokenizer, CHATML, 512)
    answers = [m["content"] + END for m in MULTI if m["role"] == "assistant"]
    assert labelled_text(tiny_tokenizer, feat) == "".join(answers)
    runs = labelled_runs(feat)
    assert len(runs) == 2
    for (a, b), answer in zip(runs, answers):
        assert feat["labels"][a:b] == feat["input_ids"][a:b]
        assert tiny_tokenizer.decode(feat["input_ids"][a:b]) == answer
    # everything else (system, user turns, role headers) is masked
    prompt_ids = [t for t, lab in zip(feat["input_ids"], feat["labels"]) if lab == IGNORE]
    prompt_text = tiny_tokenizer.decode(prompt_ids)
    for m in MULTI:
        if m["role"] != "assistant":
            assert m["content"] in prompt_text
    assert prompt_text.count("<|im_start|>assistant\n") == 2
    assert stats.label_tokens == sum(b - a for a, b in runs)


def test_plain_template_labels_answer_and_eos(tiny_tokenizer):
    (feat,), _ = tokenize_chat([{"messages": SINGLE}], tiny_tokenizer, PLAIN, 512)
    assert labelled_text(tiny_tokenizer, feat) == "It is 4." + tiny_tokenizer.eos_token


def test_train_on_prompt_labels_everything(tiny_tokenizer):
    (feat,), stats = tokenize_chat([{"messages": MULTI}], tiny_tokenizer, CHATML, 512, train_on_prompt=True)
    assert feat["labels"] == feat["input_ids"]
    assert stats.label_tokens == len(feat["input_ids"]) - 1  # the first token is never predicted


def test_truncation_counts_and_drops_examples_without_labels(tiny_tokenizer):
    long_prompt = [msg("user", "x" * 200), msg("assistant", "ok")]
    short = SINGLE
    long_answer = [msg("user", "hi"), msg("assistant", "y" * 200)]
    examples = [{"messages": m, "line": i + 1} for i, m in enumerate([long_prompt, short, long_answer])]
    feats, stats = tokenize_chat(examples, tiny_tokenizer, CHATML, max_length=64)
    assert stats.examples == 3
    assert stats.truncated == 2            # long_prompt and long_answer
    assert stats.dropped_empty == 1        # long_prompt: the answer was cut off entirely
    assert [f["line"] for f in feats] == [2, 3]
    kept = feats[1]
    assert len(kept["input_ids"]) == len(kept["labels"]) == 64
    assert set(tiny_tokenizer.decode([t for t, l in zip(kept["input_ids"], kept["labels"]) if l != IGNORE])) == {"y"}
    assert all(len(f["input_ids"]) <= 64 for f in feats)
    assert stats.tokens == sum(len(f["input_ids"]) for f in feats)


def test_text_blocks_have_the_block_size(tiny_tokenizer):
    texts = [{"text": "abcdefghij"}, {"text": "klmnop"}, {"text": "qrs"}]
    blocks, stats = tokenize_text_blocks(texts, tiny_tokenizer, block_size=8)
    eos = tiny_tokenizer.eos_token_id
    stream = []
    for t in texts:
        stream += tiny_tokenizer(t["text"], add_special_tokens=False)["input_ids"] + [eos]
    assert len(stream) == 22
    assert [len(b["input_ids"]) for b in blocks] == [8, 8, 6]
    assert sum((b["input_ids"] for b in blocks), []) == stream
    assert all(b["labels"] == b["input_ids"] for b in blocks)
    assert stats.examples == 3 and stats.tokens == 22
    # a trailing block of one token has nothing to predict and is dropped
    blocks, _ = tokenize_text_blocks([{"text": "abcdefg"}, {"text": "h"}], tiny_tokenizer, block_size=5)
    assert [len(b["input_ids"]) for b in blocks] == [5, 5]


def test_pad_batch_pads_ids_mask_and_labels(tiny_tokenizer):
    pad = tiny_tokenizer.pad_token_id
    feats = [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = pad_batch(feats, pad)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, pad, pad]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert all(t.dtype == torch.long for t in batch.values())
    # classification: one label per example; token_type_ids padded with 0
    cls = pad_batch([{"input_ids": [1, 2], "token_type_ids": [0, 1], "labels": 2},
                     {"input_ids": [3, 4, 5, 6], "token_type_ids": [0, 0, 1, 1], "labels": 0}], pad)
    assert cls["labels"].tolist() == [2, 0]
    assert cls["token_type_ids"].tolist() == [[0, 1, 0, 0], [0, 0, 1, 1]]
    assert cls["input_ids"].tolist() == [[1, 2, pad, pad], [3, 4, 5, 6]]


def _mlm_batch(tok, rows=16, length=64):
    g = torch.Generator().manual_seed(123)
    specials = [tok.convert_tokens_to_ids("<|im_start|>"), tok.eos_token_id]
    feats = []
    for i in range(rows):
        n = length - (i % 5) * 7  # ragged, so that there is padding
        body = torch.randint(0, 256, (n - 2,), generator=g).tolist()
        feats.append({"input_ids": [specials[0]] + body + [specials[1]]})
    return pad_batch(feats, tok.pad_token_id)


def test_mask_tokens_masks_fifteen_percent_of_ordinary_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    batch = _mlm_batch(tok)
    out = mask_tokens(batch, tok, 0.15, torch.Generator().manual_seed(0))
    again = mask_tokens(batch, tok, 0.15, torch.Generator().manual_seed(0))
    other = mask_tokens(batch, tok, 0.15, torch.Generator().manual_seed(1))
    assert torch.equal(out["input_ids"], again["input_ids"]) and torch.equal(out["labels"], again["labels"])
    assert not torch.equal(out["labels"], other["labels"])

    ids, labels = batch["input_ids"], out["labels"]
    special = torch.isin(ids, torch.tensor(tok.all_special_ids)) | (batch["attention_mask"] == 0)
    chosen = labels != IGNORE
    assert not (chosen & special).any()                              # pad/special never chosen
    assert torch.equal(out["input_ids"][special], ids[special])      # …nor changed
    assert torch.equal(labels[chosen], ids[chosen])                  # labels are the original tokens
    n = int((~special).sum())
    rate = chosen.sum().item() / n
    assert 0.12 < rate < 0.18, rate                                  # ~15 % of ~900 tokens
    # of the chosen: ~80 % [MASK], the rest random or kept; unchosen tokens are untouched
    masked = out["input_ids"] == tok.mask_token_id
    assert not (masked & ~chosen).any()
    assert torch.equal(out["input_ids"][~chosen], ids[~chosen])
    assert 0.65 < (masked & chosen).sum().item() / chosen.sum().item() < 0.95
    assert torch.equal(out["attention_mask"], batch["attention_mask"])
    assert torch.equal(batch["input_ids"], ids)  # the input batch is not modified in place
