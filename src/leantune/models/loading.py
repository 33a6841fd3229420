"""Load a model (a folder :func:`~leantune.models.reference.resolve_model_path` found, or a run
directory with its method merged) with the head a stage needs."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from ..errors import ModelSourceError
from ..methods.delta import BASE_NAME
from ..methods.registry import build_method
from ..recipe import Recipe
from .reference import (
    ecosystem_name,
    is_run_dir,
    resolve_base,
    resolve_model_path,  # noqa: F401 - callers import it from here
)
from .safety import check_model_folder

HEAD_CLASSES = {
    "causal_lm": AutoModelForCausalLM,
    "masked_lm": AutoModelForMaskedLM,
    "seq_cls": AutoModelForSequenceClassification,
    "seq2seq": AutoModelForSeq2SeqLM,
    "encoder": AutoModel,
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- run directories as models

def _run_meta(path: Path) -> dict:
    return json.loads((Path(path) / "run.json").read_text())


def load_config(path: Path, trust_remote_code: bool = False):
    """The model config of a Hugging Face folder, or of a run directory's base model."""
    if is_run_dir(path):
        return load_config(resolve_base(_run_meta(path), path), trust_remote_code)
    check_model_folder(path, trust_remote_code)
    return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)


def _load_run_merged(path: Path, head: str, dtype: str, trust_remote_code: bool, extra: dict[str, Any] | None,
                     labels: list[str] | None, pad_token_id: int | None) -> torch.nn.Module:
    """Base model with the run's trained method merged in, in memory, under the requested head.

    The base is loaded with ``head`` (e.g. a causal-LM SFT run becomes the backbone of a
    sequence-classification reward model); the run's own head layers are not carried over.
    """
    if extra and extra.get("quantization_config") is not None:
        raise ModelSourceError(f"{path}: a run directory cannot be loaded quantized as a model; "
                               f"write it out with `leantune merge` and use that folder")
    meta = _run_meta(path)
    recipe = Recipe.model_validate(meta["recipe"])
    method = build_method(recipe.method)
    if not method.mergeable:
        raise ModelSourceError(f"{path}: method '{method.name}' cannot be merged into the base weights, "
                               f"so the run cannot be used as a model")
    base_path, run_head = resolve_base(meta, path), meta["head"]
    if head == run_head:
        base = load_model(base_path, head, dtype, trust_remote_code, extra, labels, pad_token_id)
        model = method.merge(method.load(base, path / "adapter", run_head))
    else:  # merge under the run's own head, then move the shared backbone weights to the new head
        src = load_model(base_path, run_head, dtype, trust_remote_code, extra, meta.get("labels"), pad_token_id)
        merged = method.merge(method.load(src, path / "adapter", run_head)).state_dict()
        model = load_model(base_path, head, dtype, trust_remote_code, extra, labels, pad_token_id)
        target, prefix = model.state_dict(), model.base_model_prefix

        def key(k: str) -> str:
            """The backbone's keys carry ``<prefix>.`` under a head and none in a bare encoder
            (head ``encoder``, e.g. a contrastive run): map between the two."""
            if k not in target and f"{prefix}.{k}" in target:
                return f"{prefix}.{k}"
            if k not in target and k.startswith(f"{prefix}.") and k[len(prefix) + 1:] in target:
                return k[len(prefix) + 1:]
            return k

        shared = {key(k): v for k, v in merged.items()}
        lost = [k for k in shared if k.endswith(".bias") and k not in target and f"{k[:-5]}.weight" in target]
        if lost:  # e.g. BitFit's added biases: the new head's model, built from the base config, has no slot
            raise ModelSourceError(f"{path}: the run trained biases the base has no place for under a {head} head "
                                   f"({lost[0]}, …); write it out with `leantune merge` and use that folder")
        shared = {k: v for k, v in shared.items() if k in target and target[k].shape == v.shape}
        backbone = [k for k in target if k.startswith(f"{prefix}.")] or list(target)
        if not any(k in shared for k in backbone):
            raise ModelSourceError(f"{path}: the run's {run_head} weights do not fit a {head} model")
        model.load_state_dict(shared, strict=False)
        del src, merged
    model.requires_grad_(True)
    setattr(model, BASE_NAME, str(Path(path).resolve()))  # a run as base: no other tool resolves it
    return model


def load_tokenizer(path: Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    if is_run_dir(path):
        path = Path(path) / "adapter"  # the run saves its tokenizer beside the adapter
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # CPU: keep fp32 master weights; bf16 autocast speeds up matmuls
    return DTYPES[dtype]


def load_model(
    path: Path,
    head: str,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    extra: dict[str, Any] | None = None,
    labels: list[str] | None = None,
    pad_token_id: int | None = None,
) -> torch.nn.Module:
    """Load ``path`` with the head class for ``head`` (``causal_lm``, ``seq_cls``, …)."""
    if head not in HEAD_CLASSES:
        raise ModelSourceError(f"unknown head {head!r}; one of {', '.join(HEAD_CLASSES)}")
    if is_run_dir(path):
        return _load_run_merged(Path(path), head, dtype, trust_remote_code, extra, labels, pad_token_id)
    check_model_folder(path, trust_remote_code)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code}
    kwargs.update(extra or {})
    if labels is not None:
        kwargs["num_labels"] = len(labels)
        kwargs["id2label"] = dict(enumerate(labels))
        kwargs["label2id"] = {label: i for i, label in enumerate(labels)}
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if head == "seq2seq" and not config.is_encoder_decoder:
        raise ModelSourceError(f"{path}: {config.model_type} is not an encoder-decoder model; seq2seq needs one (e.g. T5)")
    if head == "causal_lm" and config.is_encoder_decoder:
        raise ModelSourceError(f"{path}: {config.model_type} is an encoder-decoder model; use a seq2seq stage")
    try:
        model = HEAD_CLASSES[head].from_pretrained(path, **kwargs)
    except ValueError as exc:
        raise ModelSourceError(f"{path}: cannot load as {head}: {exc}") from None
    if pad_token_id is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_token_id
    setattr(model, BASE_NAME, ecosystem_name(path))
    return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights counted at their logical size."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total
