"""Convert a GGUF checkpoint once into a plain safetensors folder in the cache.

Loading a GGUF file dequantizes every tensor (~17 s for SmolLM2-135M); the cached
folder reloads in well under 2 s. ``save_pretrained`` refuses a model that still
carries its GGUF quantization config, so the model is rebuilt from a clean config.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from ..atomic import replace_path

READY_MARK = ".leantune-ready"


def is_converted(folder: Path) -> bool:
    return (folder / READY_MARK).is_file()


def convert_gguf(gguf_file: Path, target: Path) -> Path:
    """Write ``target`` atomically (temp folder, then rename) and return it."""
    from transformers import (  # lazy: `leantune models` lists the cache without importing transformers
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
    )
    if is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        kw = {"gguf_file": gguf_file.name}
        src = gguf_file.parent
        loaded = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **kw)
        tokenizer = AutoTokenizer.from_pretrained(src, **kw)
        config = AutoConfig.from_pretrained(src, **kw)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = "float32"
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        clean.load_state_dict(loaded.state_dict(), strict=True)
        clean.tie_weights()
        clean.generation_config = loaded.generation_config
        clean.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / READY_MARK).write_text(gguf_file.name + "\n")
        replace_path(tmp, target)  # a stale, unfinished conversion in our cache is moved aside, then removed
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
