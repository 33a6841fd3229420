"""The one-GPU benchmark's model, tokenizer and data (``gpu_bench.py``), and its FLOPs per token.

A Llama-3.2-1B-shaped model (hidden 2048, 16 layers, 32 heads, 8 KV heads, intermediate 8192,
vocab 128256, tied embeddings; random bf16 weights) or a tiny one for a dry run, a byte-level
tokenizer built here (260 tokens, every id below the vocabulary), and the built-in shell-help
training set as chat messages: nothing is downloaded.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from mfu import model_shapes, step_flops

LLAMA_1B = {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
            "intermediate_size": 8192, "vocab_size": 128256, "head_dim": 64}
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "vocab_size": 512, "head_dim": 16}
SEED = 42
SPECIAL_TOKENS = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer():
    """Byte-level BPE, 256-byte alphabet, no merges (one token per byte), ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from leantune.data.templates import CHATML

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                  eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHATML
    return tok


def build_model(folder: Path, shape: dict, device: str) -> dict:
    """A randomly initialised Llama of ``shape`` in bf16 with the tokenizer, saved to ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    assert len(tok) <= shape["vocab_size"]
    config = LlamaConfig(**shape, tie_word_embeddings=True, rope_theta=500000.0, max_position_embeddings=8192,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"))
    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"params": params, "tokenizer_tokens": len(tok), "build_s": round(time.perf_counter() - t0, 1), **shape}


def write_messages(path: Path) -> int:
    """The built-in shell-help training set (alpaca) as chat messages, converted by leantune's reader."""
    from leantune.data.formats import load_examples
    from leantune.data.paths import resolve_data_path

    examples = load_examples(resolve_data_path("builtin:demo/shell_help_train.jsonl", None), "alpaca").examples
    path.write_text("".join(json.dumps({"messages": e["messages"]}) + "\n" for e in examples))
    return len(examples)


def flops_per_token(work: Path, max_length: int, rank: int) -> dict[str, float]:
    """Model FLOPs per real token of one training pass over the data (``mfu.step_flops``: the
    LM head at response positions only, recomputation not counted), for full fine-tuning and
    for LoRA/QLoRA of ``rank``, from leantune's tokenization of ``work/data.jsonl`` cut at
    ``max_length``. Both sides of a pair train on the same examples, so one figure serves both."""
    from transformers import AutoTokenizer

    from leantune.recipe import Recipe
    from leantune.stages.registry import build_stage

    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    examples = [json.loads(line) for line in (work / "data.jsonl").read_text().splitlines()]
    recipe = Recipe.model_validate({"model": str(work / "model"), "data": {"format": "messages"},
                                    "train": {"max_length": max_length}})
    stage = build_stage(recipe.stage)
    stage.head_name = "causal_lm"
    features = stage.prepare(recipe, tokenizer, examples, []).train
    lengths = [len(f["input_ids"]) for f in features]
    step = {"real_tokens": sum(lengths), "attention_keys": sum(n * (n + 1) // 2 for n in lengths),
            "response_tokens": sum(sum(t != -100 for t in f["labels"][1:]) for f in features)}
    shapes = model_shapes(work / "model" / "config.json", rank)
    return {method: step_flops(step, method, shapes) / step["real_tokens"] for method in ("full", "lora")}
