"""Built-in shapes of the open models people fine-tune: config numbers only, no weights, so that
``leantune estimate meta-llama/Llama-3.1-8B`` answers offline.

The numbers are those of each model's public ``config.json`` on the Hugging Face hub; ``published`` is the
size its model card states (Gemma: the technical reports' embedding + non-embedding counts, i.e. the text
model without the 0.4B vision encoder of Gemma 3 4B–27B). Variants that share a shape (base and instruct,
4k and 128k context, the DeepSeek-R1 distills and their bases) share the numbers.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """One model family member: where it lives on the hub, what people call it, its config numbers."""

    hub_ids: tuple[str, ...]
    aliases: tuple[str, ...]          # lower case; the first one names the entry
    published: str                    # parameter count as its model card states it, e.g. "8.03B"
    config: dict[str, Any]            # transformers ``model_type`` + the numbers its config class needs

    @property
    def name(self) -> str:
        return self.aliases[0]


def decoder(model_type: str, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int,
            tied: bool, max_positions: int, **extra: Any) -> dict[str, Any]:
    """The config numbers of a decoder, in transformers' names (``extra``: head_dim, attention_bias, …)."""
    return {"model_type": model_type, "hidden_size": hidden, "intermediate_size": intermediate,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "vocab_size": vocab, "tie_word_embeddings": tied, "max_position_embeddings": max_positions, **extra}


LLAMA_3_1_8B = decoder("llama", 4096, 14336, 32, 32, 8, 128256, False, 131072)
LLAMA_3_1_70B = decoder("llama", 8192, 28672, 80, 64, 8, 128256, False, 131072)
QWEN2_5_7B = decoder("qwen2", 3584, 18944, 28, 28, 4, 152064, False, 131072)
QWEN2_5_14B = decoder("qwen2", 5120, 13824, 48, 40, 8, 152064, False, 131072)
QWEN2_5_32B = decoder("qwen2", 5120, 27648, 64, 40, 8, 152064, False, 131072)
# GLM-4-9B's transformers port (`glm`): SwiGLU MLP, RMSNorm, bias on Q/K/V only, 2 KV groups, half-rotary heads.
GLM_4_9B = decoder("glm", 4096, 13696, 40, 32, 2, 151552, False, 131072, head_dim=128, attention_bias=True)


def _llama(size: str, *extra_ids: str) -> tuple[str, ...]:
    return (f"meta-llama/Llama-{size}", f"meta-llama/Llama-{size}-Instruct", *extra_ids)


def _pair(org: str, name: str, *suffixes: str) -> tuple[str, ...]:
    """``org/name`` and its tuned variants ``org/name<suffix>``."""
    return (f"{org}/{name}", *(f"{org}/{name}{s}" for s in suffixes))


ARCHITECTURES: tuple[Architecture, ...] = (
    # Llama 3.x (meta-llama/*/config.json)
    Architecture(_llama("3.2-1B"), ("llama-3.2-1b", "llama3.2-1b"), "1.23B",
                 decoder("llama", 2048, 8192, 16, 32, 8, 128256, True, 131072)),
    Architecture(_llama("3.2-3B"), ("llama-3.2-3b", "llama3.2-3b"), "3.21B",
                 decoder("llama", 3072, 8192, 28, 24, 8, 128256, True, 131072)),
    Architecture(_llama("3.1-8B", *_pair("meta-llama", "Meta-Llama-3.1-8B", "-Instruct"),
                        *_pair("meta-llama", "Meta-Llama-3-8B", "-Instruct")),
                 ("llama-3.1-8b", "llama3.1-8b", "llama-3-8b", "llama3-8b"), "8.03B", LLAMA_3_1_8B),
    Architecture(_llama("3.1-70B", "meta-llama/Llama-3.3-70B-Instruct",
                        *_pair("meta-llama", "Meta-Llama-3.1-70B", "-Instruct"),
                        *_pair("meta-llama", "Meta-Llama-3-70B", "-Instruct")),
                 ("llama-3.1-70b", "llama3.1-70b", "llama-3.3-70b", "llama3.3-70b", "llama-3-70b"), "70.6B",
                 LLAMA_3_1_70B),
    # Qwen2.5 (Qwen/*/config.json; bias on Q/K/V is part of the qwen2 class)
    Architecture(_pair("Qwen", "Qwen2.5-0.5B", "-Instruct"), ("qwen2.5-0.5b",), "0.49B",
                 decoder("qwen2", 896, 4864, 24, 14, 2, 151936, True, 32768)),
    Architecture(_pair("Qwen", "Qwen2.5-1.5B", "-Instruct"), ("qwen2.5-1.5b",), "1.54B",
                 decoder("qwen2", 1536, 8960, 28, 12, 2, 151936, True, 32768)),
    Architecture(_pair("Qwen", "Qwen2.5-3B", "-Instruct"), ("qwen2.5-3b",), "3.09B",
                 decoder("qwen2", 2048, 11008, 36, 16, 2, 151936, True, 32768)),
    Architecture(_pair("Qwen", "Qwen2.5-7B", "-Instruct"), ("qwen2.5-7b",), "7.61B", QWEN2_5_7B),
    Architecture(_pair("Qwen", "Qwen2.5-14B", "-Instruct"), ("qwen2.5-14b",), "14.7B", QWEN2_5_14B),
    Architecture(_pair("Qwen", "Qwen2.5-32B", "-Instruct"), ("qwen2.5-32b",), "32.5B", QWEN2_5_32B),
    Architecture(_pair("Qwen", "Qwen2.5-72B", "-Instruct"), ("qwen2.5-72b",), "72.7B",
                 decoder("qwen2", 8192, 29568, 80, 64, 8, 152064, False, 131072)),
    # Qwen3 dense (Qwen/*/config.json; head_dim 128 throughout, Q/K RMSNorm in the qwen3 class)
    Architecture(_pair("Qwen", "Qwen3-0.6B", "-Base"), ("qwen3-0.6b",), "0.6B",
                 decoder("qwen3", 1024, 3072, 28, 16, 8, 151936, True, 40960, head_dim=128)),
    Architecture(_pair("Qwen", "Qwen3-1.7B", "-Base"), ("qwen3-1.7b",), "1.7B",
                 decoder("qwen3", 2048, 6144, 28, 16, 8, 151936, True, 40960, head_dim=128)),
    Architecture(_pair("Qwen", "Qwen3-4B", "-Base"), ("qwen3-4b",), "4.0B",
                 decoder("qwen3", 2560, 9728, 36, 32, 8, 151936, True, 40960, head_dim=128)),
    Architecture(_pair("Qwen", "Qwen3-8B", "-Base"), ("qwen3-8b",), "8.2B",
                 decoder("qwen3", 4096, 12288, 36, 32, 8, 151936, False, 40960, head_dim=128)),
    Architecture(_pair("Qwen", "Qwen3-14B", "-Base"), ("qwen3-14b",), "14.8B",
                 decoder("qwen3", 5120, 17408, 40, 40, 8, 151936, False, 40960, head_dim=128)),
    Architecture(_pair("Qwen", "Qwen3-32B"), ("qwen3-32b",), "32.8B",
                 decoder("qwen3", 5120, 25600, 64, 64, 8, 151936, False, 40960, head_dim=128)),
    # Mistral (mistralai/*/config.json)
    Architecture(("mistralai/Mistral-7B-v0.3", "mistralai/Mistral-7B-Instruct-v0.3"),
                 ("mistral-7b-v0.3", "mistral-7b"), "7.25B",
                 decoder("mistral", 4096, 14336, 32, 32, 8, 32768, False, 32768)),
    Architecture(("mistralai/Mistral-Nemo-Base-2407", "mistralai/Mistral-Nemo-Instruct-2407"),
                 ("mistral-nemo-12b", "mistral-nemo", "nemo-12b"), "12.2B",
                 decoder("mistral", 5120, 14336, 40, 32, 8, 131072, False, 1024000, head_dim=128)),
    # Gemma 2 and Gemma 3 text (google/*/config.json; Gemma 3 4B–27B: the text_config)
    Architecture(_pair("google", "gemma-2-2b", "-it"), ("gemma-2-2b", "gemma2-2b"), "2.61B",
                 decoder("gemma2", 2304, 9216, 26, 8, 4, 256000, True, 8192, head_dim=256)),
    Architecture(_pair("google", "gemma-2-9b", "-it"), ("gemma-2-9b", "gemma2-9b"), "9.24B",
                 decoder("gemma2", 3584, 14336, 42, 16, 8, 256000, True, 8192, head_dim=256)),
    Architecture(_pair("google", "gemma-2-27b", "-it"), ("gemma-2-27b", "gemma2-27b"), "27.2B",
                 decoder("gemma2", 4608, 36864, 46, 32, 16, 256000, True, 8192, head_dim=128)),
    Architecture(("google/gemma-3-1b-pt", "google/gemma-3-1b-it"), ("gemma-3-1b", "gemma3-1b"), "1.00B",
                 decoder("gemma3_text", 1152, 6912, 26, 4, 1, 262144, True, 32768, head_dim=256)),
    Architecture(("google/gemma-3-4b-pt", "google/gemma-3-4b-it"), ("gemma-3-4b", "gemma3-4b"), "3.88B",
                 decoder("gemma3_text", 2560, 10240, 34, 8, 4, 262208, True, 131072, head_dim=256)),
    Architecture(("google/gemma-3-12b-pt", "google/gemma-3-12b-it"), ("gemma-3-12b", "gemma3-12b"), "11.8B",
                 decoder("gemma3_text", 3840, 15360, 48, 16, 8, 262208, True, 131072, head_dim=256)),
    Architecture(("google/gemma-3-27b-pt", "google/gemma-3-27b-it"), ("gemma-3-27b", "gemma3-27b"), "27.0B",
                 decoder("gemma3_text", 5376, 21504, 62, 32, 16, 262208, True, 131072, head_dim=128)),
    # Phi (microsoft/*/config.json; the phi3 class fuses QKV and gate/up; 128k variants differ in RoPE only)
    Architecture(("microsoft/Phi-3-mini-4k-instruct", "microsoft/Phi-3-mini-128k-instruct",
                  "microsoft/Phi-3.5-mini-instruct"), ("phi-3-mini", "phi3-mini", "phi-3.5-mini"), "3.8B",
                 decoder("phi3", 3072, 8192, 32, 32, 32, 32064, False, 4096)),
    Architecture(("microsoft/Phi-3-medium-4k-instruct", "microsoft/Phi-3-medium-128k-instruct"),
                 ("phi-3-medium", "phi3-medium"), "14B",
                 decoder("phi3", 5120, 17920, 40, 40, 10, 32064, False, 4096)),
    Architecture(("microsoft/phi-4",), ("phi-4", "phi4"), "14.7B",
                 decoder("phi3", 5120, 17920, 40, 40, 10, 100352, False, 16384)),
    # GLM (THUDM, now zai-org, */config.json in ChatGLM's names: ffn_hidden_size → intermediate,
    # multi_query_group_num → KV heads, padded_vocab_size → vocab, kv_channels → head_dim, add_qkv_bias)
    Architecture(("THUDM/glm-4-9b", "THUDM/glm-4-9b-chat", "THUDM/glm-4-9b-chat-hf", "zai-org/glm-4-9b",
                  "zai-org/glm-4-9b-chat", "zai-org/glm-4-9b-chat-hf"), ("glm-4-9b", "glm4-9b"), "9.4B", GLM_4_9B),
    # ChatGLM3-6B runs on remote code (`chatglm`, no transformers class). Its block is GLM-4-9B's (SwiGLU,
    # RMSNorm, Q/K/V bias, 2 KV groups, separate output layer), so the `glm` class with its numbers
    # (28 layers, vocab 65024, its pad id 0) has the same parameter count.
    Architecture(("THUDM/chatglm3-6b", "THUDM/chatglm3-6b-base", "zai-org/chatglm3-6b"),
                 ("chatglm3-6b", "chatglm3"), "6.2B",
                 {**GLM_4_9B, "num_hidden_layers": 28, "vocab_size": 65024, "max_position_embeddings": 8192,
                  "pad_token_id": 0}),
    # DeepSeek-R1 distills (deepseek-ai/*/config.json): their bases' shapes; the 1.5B unties its output layer
    Architecture(("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",), ("r1-distill-qwen-1.5b",), "1.78B",
                 decoder("qwen2", 1536, 8960, 28, 12, 2, 151936, False, 131072)),
    Architecture(("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",), ("r1-distill-qwen-7b",), "7.62B", QWEN2_5_7B),
    Architecture(("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",), ("r1-distill-qwen-14b",), "14.8B", QWEN2_5_14B),
    Architecture(("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",), ("r1-distill-qwen-32b",), "32.8B", QWEN2_5_32B),
    Architecture(("deepseek-ai/DeepSeek-R1-Distill-Llama-8B",), ("r1-distill-llama-8b",), "8.03B", LLAMA_3_1_8B),
    Architecture(("deepseek-ai/DeepSeek-R1-Distill-Llama-70B",), ("r1-distill-llama-70b",), "70.6B", LLAMA_3_1_70B),
)


def lookup_keys(arch: Architecture) -> set[str]:
    """The lower-case names an entry answers to: hub ids, aliases, and hub names without the org
    (so that mirrors such as ``unsloth/Llama-3.1-8B`` resolve too)."""
    ids = {h.lower() for h in arch.hub_ids}
    return ids | set(arch.aliases) | {h.rsplit("/", 1)[-1] for h in ids}


BY_NAME: dict[str, Architecture] = {key: arch for arch in ARCHITECTURES for key in lookup_keys(arch)}


def find_architecture(name: str) -> Architecture | None:
    """The entry for a hub id or alias (case-insensitive; a mirror's ``org/`` is ignored), else None."""
    key = name.strip().lower()
    return BY_NAME.get(key) or BY_NAME.get(key.rsplit("/", 1)[-1])


def closest_names(name: str, limit: int = 3) -> list[str]:
    """Names in the table closest to ``name`` (did-you-mean), best first, one per model."""
    key = name.strip().lower().rsplit("/", 1)[-1]
    names = sorted(k for k in BY_NAME if "/" not in k)
    close: dict[str, str] = {}  # entry name → its closest name
    for match in difflib.get_close_matches(key, names, n=len(names), cutoff=0.6):
        close.setdefault(BY_NAME[match].name, match)
    return list(close.values())[:limit]
