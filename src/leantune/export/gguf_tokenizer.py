"""The tokenizer part of a GGUF file (``tokenizer.ggml.*``), written as llama.cpp's
``convert_hf_to_gguf.py`` writes a byte-level BPE vocabulary (``_set_vocab_gpt2``): the token
list padded to the embedding rows, token types, the pre-tokenizer name found by hashing a check
text, merges and special ids from gguf-py's ``SpecialVocab``, and ``add_bos_token`` from what the
tokenizer does when it encodes."""
from __future__ import annotations

import json
import tempfile
from hashlib import sha256

import gguf

from ..errors import MethodError

# convert_hf_to_gguf.py, get_vocab_base_pre: the check text and the hashes of its token ids
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
PRE_TOKENIZERS = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
}


def pre_tokenizer_name(tokenizer) -> str | None:
    """llama.cpp's name for the tokenizer's pre-tokenization rules, or None when unknown."""
    digest = sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()
    return PRE_TOKENIZERS.get(digest)


def _byte_level_steps(spec) -> list[dict]:
    """The ByteLevel steps of a tokenizers pre-tokenizer spec (possibly nested in a Sequence)."""
    if isinstance(spec, list):
        return [step for item in spec for step in _byte_level_steps(item)]
    if not isinstance(spec, dict):
        return []
    own = [spec] if spec.get("type") == "ByteLevel" else []
    return own + _byte_level_steps(spec.get("pretokenizers", []))


def byte_level_pre_tokenizer(tokenizer) -> dict | None:
    """The ByteLevel pre-tokenizer step of a byte-level BPE tokenizer; None for other kinds."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    steps = _byte_level_steps(spec.get("pre_tokenizer"))
    return steps[0] if steps and spec.get("model", {}).get("type") == "BPE" else None


def adds_special(tokenizer) -> tuple[bool, bool]:
    """Whether encoding puts BOS first / EOS last (what ``add_bos_token`` / ``add_eos_token`` mean)."""
    ids = tokenizer("a")["input_ids"]
    return (tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id,
            tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id)


def _looks_special(token: str) -> bool:
    """Added tokens that llama.cpp treats as control tokens even when not marked special
    (``does_token_look_special``)."""
    return (token in ("<pad>", "<mask>") or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>")))


def vocabulary(tokenizer, n_rows: int) -> tuple[list[str], list[int]]:
    """Token strings and types for every embedding row (``get_vocab_base``); rows past the
    tokenizer's ids become ``[PAD{i}]`` (unused)."""
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoders = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_rows):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        kind = gguf.TokenType.NORMAL
        if token in added:
            if not decoders[i].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            kind = gguf.TokenType.CONTROL if decoders[i].special or _looks_special(token) else gguf.TokenType.USER_DEFINED
        tokens.append(token)
        types.append(kind)
    return tokens, types


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer, n_rows: int, chat_template: str) -> list[str]:
    """Write the ``tokenizer.*`` keys; returns notes for the user (an unknown pre-tokenizer)."""
    byte_level = byte_level_pre_tokenizer(tokenizer)
    if byte_level is None:
        raise MethodError(
            f"GGUF export writes byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2, SmolLM2 style); "
            f"{type(tokenizer).__name__} is another kind. Convert the merged model (leantune merge) "
            f"with llama.cpp's convert_hf_to_gguf.py instead")
    if max(tokenizer.get_vocab().values()) >= n_rows:
        raise MethodError(f"the tokenizer has ids up to {max(tokenizer.get_vocab().values())} but the model has "
                          f"only {n_rows} embedding rows; the run's tokenizer does not match its model")
    notes = []
    pre = pre_tokenizer_name(tokenizer)
    if pre is None:
        pre = "default"
        notes.append("llama.cpp does not know this tokenizer's pre-tokenization rules; the file says "
                     "'default', so llama.cpp may split some texts differently from transformers")
    tokens, types = vocabulary(tokenizer, n_rows)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory(prefix="leantune-gguf-tokenizer-") as folder:
        tokenizer.save_pretrained(folder)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_rows)
    if not special.merges:
        raise MethodError("the run's tokenizer is byte-level BPE without merges; llama.cpp and transformers' "
                          "GGUF loader need the merge list, so this tokenizer cannot go into a GGUF file")
    special.chat_template = chat_template
    add_bos, add_eos = adds_special(tokenizer)
    special.add_special_token["bos"] = add_bos
    if add_eos:
        special.add_special_token["eos"] = True
    else:
        special.add_special_token.pop("eos", None)
    writer.add_add_space_prefix(bool(byte_level.get("add_prefix_space")))
    special.add_to_gguf(writer, quiet=True)
    return notes
