"""Shared fixtures: a byte-level tokenizer and tiny models built offline from configs.

Nothing here downloads anything: the tokenizer is assembled with the
``tokenizers`` library (256-byte alphabet, no merges) and every model is a
randomly initialised (seeded) config-built model saved as safetensors.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest


SPECIAL_TOKENS = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>", "[MASK]"]

# Model sizes: small enough that the whole unit suite stays fast on CPU.
HIDDEN = 32
INTERMEDIATE = 64
LAYERS = 2
HEADS = 4

ARCH_HEADS = {
    "llama": ("causal_lm",),
    "qwen2": ("causal_lm",),
    "gpt2": ("causal_lm",),
    "bert": ("masked_lm", "seq_cls"),
    "t5": ("seq2seq",),
}
SEQ_CLS_LABELS = 3


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: uses the real packaged models (slower)")


# --------------------------------------------------------------------------- environment

@pytest.fixture(scope="session", autouse=True)
def leantune_env(tmp_path_factory):
    """Keep caches out of the user's home and never reach the hub."""
    home = tmp_path_factory.mktemp("leantune_home")
    saved = {k: os.environ.get(k) for k in ("LEANTUNE_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["LEANTUNE_HOME"] = str(home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    yield home
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def torch_single_thread():
    """One intra-op thread for a module of tiny-model tests.

    Tensors this small gain nothing from threads, and on a busy machine OpenMP's
    spinning threads make each op ~100x slower. Use it with
    ``pytestmark = pytest.mark.usefixtures("torch_single_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def torch_test_threads():
    """One intra-op thread unless LEANTUNE_TEST_THREADS says otherwise, for the real-model tests:
    on a small machine shared with other jobs, two OpenMP threads that wait on each other run
    several times slower than one."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("LEANTUNE_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(saved)


# --------------------------------------------------------------------------- tokenizer

def build_tiny_tokenizer():
    """Byte-level BPE with the 256-byte alphabet and no merges: one token per byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from leantune.data.templates import CHATML

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<|im_end|>",
        mask_token="[MASK]",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


# --------------------------------------------------------------------------- models

def _config(arch: str, head: str, tok):
    from transformers import BertConfig, GPT2Config, LlamaConfig, Qwen2Config, T5Config

    vocab, pad, eos = len(tok), tok.pad_token_id, tok.eos_token_id
    bos = tok.convert_tokens_to_ids("<|im_start|>")
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                           num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                           max_position_embeddings=256, pad_token_id=pad, bos_token_id=bos, eos_token_id=eos,
                           tie_word_embeddings=False)
    if arch == "qwen2":
        return Qwen2Config(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                           num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                           max_position_embeddings=256, pad_token_id=pad, bos_token_id=bos, eos_token_id=eos,
                           tie_word_embeddings=False)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=256,
                          n_inner=INTERMEDIATE, pad_token_id=pad, bos_token_id=bos, eos_token_id=eos)
    if arch == "bert":
        kw = {"num_labels": SEQ_CLS_LABELS} if head == "seq_cls" else {}
        return BertConfig(vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                          num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
                          max_position_embeddings=256, pad_token_id=pad, **kw)
    if arch == "t5":
        return T5Config(vocab_size=vocab, d_model=HIDDEN, d_kv=HIDDEN // HEADS, d_ff=INTERMEDIATE,
                        num_layers=LAYERS, num_decoder_layers=LAYERS, num_heads=HEADS,
                        pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad)
    raise ValueError(f"no tiny config for {arch!r}")


def build_tiny_model(arch: str, head: str, tok):
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
    )

    if head not in ARCH_HEADS.get(arch, ()):
        raise ValueError(f"tiny {arch} has no {head!r} head; available: {ARCH_HEADS.get(arch)}")
    classes = {"causal_lm": AutoModelForCausalLM, "masked_lm": AutoModelForMaskedLM,
               "seq_cls": AutoModelForSequenceClassification, "seq2seq": AutoModelForSeq2SeqLM}
    config = _config(arch, head, tok)
    torch.manual_seed(0)
    model = classes[head].from_config(config)
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """``tiny_model_dir(arch, head="causal_lm") -> Path``: a saved tiny HF model folder.

    Cached per (arch, head) for the session; load it with
    ``leantune.models.loading.load_model(path, head)`` / ``load_tokenizer(path)``.
    """
    cache: dict[tuple[str, str], Path] = {}

    def make(arch: str, head: str = "causal_lm") -> Path:
        key = (arch, head)
        if key not in cache:
            path = tmp_path_factory.mktemp(f"tiny-{arch}-{head}")
            model = build_tiny_model(arch, head, tiny_tokenizer)
            model.save_pretrained(path, safe_serialization=True)
            tiny_tokenizer.save_pretrained(path)
            cache[key] = path
        return cache[key]

    return make
