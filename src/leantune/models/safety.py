"""Model folders that would run code are refused before anything loads them: pickle weights
(``pytorch_model.bin``, ``*.pt``: unpickling can execute anything) and ``auto_map`` configs
(the folder's own Python) unless the recipe sets ``model.trust_remote_code: true``."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelSourceError, UnsafeModelError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def read_config(folder: Path) -> dict:
    """``config.json`` of a model folder as a dict; a clear error when it is broken."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelSourceError(f"{folder}: no config.json; it is not a Hugging Face model folder") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSourceError(f"{path}: not valid JSON ({exc}); the model folder is damaged") from None
    if not isinstance(config, dict):
        raise ModelSourceError(f"{path}: not a model config (a JSON object is expected)")
    return config


def check_model_folder(folder: Path, trust_remote_code: bool = False) -> None:
    """Raise ``UnsafeModelError`` for a folder whose loading could run code we were not allowed to."""
    folder = Path(folder)
    config = read_config(folder)
    if config.get("auto_map") and not trust_remote_code:
        names = ", ".join(sorted(config["auto_map"])) if isinstance(config["auto_map"], dict) else "auto_map"
        raise UnsafeModelError(
            f"{folder / 'config.json'}: the model asks to run Python code shipped in its folder (auto_map: {names}); "
            f"leantune does not run a model's own code unless the recipe sets model.trust_remote_code: true. "
            f"Set it only for a folder whose code you have read and trust")
    files = [p for p in folder.iterdir() if p.is_file()]
    if any(p.suffix == ".safetensors" for p in files) or any(p.suffix == ".gguf" for p in files):
        return
    pickles = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeModelError(
            f"{folder}: the weights are pickle files ({', '.join(pickles[:3])}), and loading a pickle can run "
            f"arbitrary code, so leantune loads only safetensors. Convert them once where you trust the file "
            f"(e.g. `model.save_pretrained(folder, safe_serialization=True)` in transformers), then use that folder")
