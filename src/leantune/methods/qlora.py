"""QLoRA: LoRA on a base model quantized to 4-bit NormalFloat with double quantization.

Dettmers et al. 2023, QLoRA: Efficient Finetuning of Quantized LLMs (arXiv:2305.14314).
The frozen base is stored in NF4 (bitsandbytes); LoRA weights and computation stay
in the compute dtype. Paged/8-bit optimizers are chosen with ``train.optimizer``.
The adapter folder records the quantization it was trained under (``quantization_config.json``,
transformers' ``BitsAndBytesConfig`` as a dict: bits, quant type, double quantization, compute
dtype — ``auto`` resolved on the training machine); a run loaded later quantizes its base the same.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from transformers import BitsAndBytesConfig

from ..recipe.method_settings import QLoraSettings
from .lora import LoRA
from .registry import register

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
QUANTIZATION_FILE = "quantization_config.json"


def default_compute_dtype() -> str:
    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


@register
class QLoRA(LoRA):
    name = "qlora"
    Config = QLoraSettings

    def load_kwargs(self) -> dict[str, Any]:
        cfg = self.config
        dtype = default_compute_dtype() if cfg.compute_dtype == "auto" else cfg.compute_dtype
        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=cfg.quant_type,
                bnb_4bit_use_double_quant=cfg.double_quant,
                bnb_4bit_compute_dtype=DTYPES[dtype],
                # keep task heads (classifier/score) in full precision: they train
                llm_int8_skip_modules=["classifier", "score", "lm_head"],
            )
        }

    def save(self, model: nn.Module, path: Path) -> None:
        super().save(model, path)
        recorded = self.load_kwargs()["quantization_config"].to_dict()
        (Path(path) / QUANTIZATION_FILE).write_text(json.dumps(recorded, indent=2) + "\n")

    def merge(self, model: nn.Module) -> nn.Module:
        warnings.warn(
            "qlora: merging into de-quantized weights; the merged model is full precision and "
            "differs from the 4-bit model by the quantization error of the base.",
            stacklevel=2,
        )
        config = model.peft_config["default"]
        state = get_peft_model_state_dict(model)
        base = model.unload()
        dequantize_base(base)
        fresh = get_peft_model(base, config)
        set_peft_model_state_dict(fresh, state)
        return fresh.merge_and_unload()


def recorded_quantization(adapter: Path) -> dict[str, Any]:
    """The loading arguments of the quantization a QLoRA adapter (alone or in a composite) was
    trained under; empty for other methods and for runs saved before it was recorded."""
    file = next(Path(adapter).rglob(QUANTIZATION_FILE), None)
    if file is None:
        return {}
    return {"quantization_config": BitsAndBytesConfig.from_dict(json.loads(file.read_text()))}


def dequantize_base(model: nn.Module) -> None:
    """Replace every bitsandbytes 4-bit base layer by an nn.Linear with de-quantized weights."""
    import bitsandbytes as bnb  # lazy: heavy (loads its CUDA/CPU binaries), only a QLoRA merge needs it
    from bitsandbytes.functional import dequantize_4bit  # lazy: heavy, only a QLoRA merge needs it

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, bnb.nn.Linear4bit):
                weight = dequantize_4bit(child.weight.data, child.weight.quant_state).float()
                linear = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                linear.weight.data.copy_(weight)
                if child.bias is not None:
                    linear.bias.data.copy_(child.bias.data.float())
                setattr(parent, child_name, linear)
    if hasattr(model, "config"):
        for cfg in {id(c): c for c in _configs(model)}.values():
            if hasattr(cfg, "quantization_config"):
                del cfg.quantization_config
    for m in model.modules():
        for attr in ("is_loaded_in_4bit", "is_quantized"):
            if getattr(m, attr, False):
                setattr(m, attr, False)
        if hasattr(m, "hf_quantizer"):
            m.hf_quantizer = None


def _configs(model: nn.Module):
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "to_dict"):
            yield cfg
