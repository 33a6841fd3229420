"""A finished run as one GGUF file for llama.cpp and Ollama: the merged weights under llama.cpp's
tensor names, the model's hyper-parameters, the tokenizer and the run's chat template.

The layout follows llama.cpp's ``convert_hf_to_gguf.py`` (``LlamaModel``, ``Qwen2Model``): Llama's
q/k projection rows are permuted to llama.cpp's rope layout, one-dimensional tensors (norms,
biases) stay f32, every other tensor takes the chosen type (``gguf.quants.quantize``), falling back
to f16 where a row does not split into Q8_0's 32-value blocks. GGUF format:
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import torch
from torch import nn

from ..atomic import atomic_file, check_output
from ..data.templates import resolve_template
from ..errors import MethodError, NotMergeable
from .gguf_tokenizer import add_tokenizer
from .modelfile import modelfile_text
from .run_loading import load_run

# leantune type → (llama.cpp's file type, the tensor type of two-dimensional weights)
GGUF_TYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}
# transformers model_type → llama.cpp architecture (Mistral is written as llama, as llama.cpp does)
ARCHITECTURES = {"llama": gguf.MODEL_ARCH.LLAMA, "mistral": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}
PERMUTED = {"llama", "mistral"}  # rotary layout differs between transformers and llama.cpp


@dataclass
class GgufExport:
    path: Path
    modelfile: Path
    gguf_type: str
    size_bytes: int
    notes: list[str] = field(default_factory=list)


def permute_for_rope(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """``LlamaModel.permute`` of convert_hf_to_gguf.py: within each head, interleave the two
    rotary halves (transformers rotates halves, llama.cpp adjacent pairs)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def check_supported(config, head: str) -> None:
    if head != "causal_lm":
        raise MethodError(f"GGUF export writes causal language models; this run has a {head!r} head, "
                          f"which llama.cpp cannot run. Use `leantune merge` for a transformers folder")
    if config.model_type not in ARCHITECTURES:
        raise MethodError(f"GGUF export supports the {', '.join(sorted(ARCHITECTURES))} architectures "
                          f"(SmolLM2, Llama 2/3, Mistral and Qwen2 models among them); this run's model is "
                          f"{config.model_type!r}. Use `leantune merge` and llama.cpp's convert_hf_to_gguf.py")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise MethodError(f"GGUF export does not write rope scaling ({rope.get('rope_type')!r} in the model's "
                          f"config); use `leantune merge` and llama.cpp's convert_hf_to_gguf.py")


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def add_hyperparameters(writer: gguf.GGUFWriter, config, file_type: gguf.LlamaFileType, name: str) -> None:
    """``TextModel.set_gguf_parameters`` plus ``LlamaModel``'s vocabulary size and rope dimension."""
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if _head_dim(config) != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(_head_dim(config))
        writer.add_value_length(_head_dim(config))
    if config.model_type in PERMUTED:
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(_head_dim(config))
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def gguf_tensors(model: nn.Module, tensor_type: gguf.GGMLQuantizationType):
    """Yield (llama.cpp name, data, stored type) for every weight of a merged causal LM."""
    config = model.config
    names = gguf.get_tensor_name_map(ARCHITECTURES[config.model_type], config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise MethodError(f"GGUF export cannot name the tensor {hf_name!r} for llama.cpp; this "
                              f"{config.model_type} variant is not supported")
        data = tensor.detach().to(torch.float32)
        if config.model_type in PERMUTED and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute_for_rope(data, config.num_attention_heads)
        elif config.model_type in PERMUTED and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute_for_rope(data, config.num_key_value_heads)
        array = data.numpy()
        kind = gguf.GGMLQuantizationType.F32 if array.ndim <= 1 or not name.endswith(".weight") else tensor_type
        try:
            stored = gguf.quants.quantize(array, kind)
        except gguf.QuantError:  # rows not a multiple of the block size
            kind = gguf.GGMLQuantizationType.F16
            stored = gguf.quants.quantize(array, kind)
        yield name, stored, kind


def write_gguf(model: nn.Module, tokenizer, chat_template: str, path: Path, gguf_type: str, name: str) -> list[str]:
    """Write one GGUF file at ``path``; returns notes for the user."""
    file_type, tensor_type = GGUF_TYPES[gguf_type]
    config = model.config
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[ARCHITECTURES[config.model_type]])
    if config.model_type == "mistral" and "mistral" not in name.lower():
        name = f"mistral {name}"  # transformers' GGUF loader tells Mistral from Llama by the name
    add_hyperparameters(writer, config, file_type, name)
    n_rows = model.get_input_embeddings().weight.shape[0]
    notes = add_tokenizer(writer, tokenizer, n_rows, chat_template)
    for tensor_name, data, kind in gguf_tensors(model, tensor_type):
        raw_dtype = kind if kind not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else None
        writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return notes


def export_gguf(run_dir: str | Path, out: str | Path, gguf_type: str = "f16", force: bool = False,
                base: str | Path | None = None) -> GgufExport:
    """The run's merged model as ``out`` (a new file, or an existing one with ``force``; never inside
    the run), and an Ollama ``Modelfile`` beside it. ``base``: as for ``load_run``."""
    run_dir, out = Path(run_dir), Path(out)
    if gguf_type not in GGUF_TYPES:
        raise MethodError(f"--type {gguf_type}: GGUF export writes {', '.join(GGUF_TYPES)}")
    modelfile = out.parent / "Modelfile"
    for target, what in ((out, "GGUF file"), (modelfile, "Ollama Modelfile")):
        check_output(target, force=force, sources=(run_dir,), what=what)
    run = load_run(run_dir, quantized=False, base=base)
    check_supported(run.model.config, run.head)
    if not run.method.mergeable:
        raise NotMergeable(f"method '{run.method.name}' cannot be merged into the base weights, and a GGUF file "
                           f"holds one set of weights; use the adapter in {run_dir / 'adapter'} with transformers")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged = run.method.merge(run.model)
    notes = [str(w.message) for w in caught if "merg" in str(w.message)]
    template = resolve_template(run.tokenizer, run.recipe.data.template)
    with torch.no_grad(), atomic_file(out, force=force, what="GGUF file") as tmp:
        notes += write_gguf(merged, run.tokenizer, template, tmp, gguf_type, run_dir.name)
    context = min(run.recipe.train.max_length, merged.config.max_position_embeddings)
    text, template_notes = modelfile_text(out.name, run.tokenizer, template, context)
    with atomic_file(modelfile, force=force, what="Ollama Modelfile") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return GgufExport(out, modelfile, gguf_type, out.stat().st_size, notes + template_notes)
