"""Where a recipe's data files are: ``builtin:NAME`` (shipped with leantune), a path, or a path
relative to the recipe's folder."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def resolve_data_path(spec: str, base_dir: Path | None = None) -> Path:
    """A data file: ``builtin:NAME`` (shipped with leantune), a path, or a path beside the recipe."""
    if spec.startswith("builtin:"):
        path = Path(str(resources.files("leantune") / "resources" / spec.removeprefix("builtin:")))
    else:
        path = Path(spec).expanduser()
        if not path.exists() and base_dir is not None and (base_dir / spec).exists():
            path = base_dir / spec
    return path


def check_data_files(train: str | None, eval: str | None, fmt: str | None, skip_invalid: bool,
                     base_dir: Path | None = None) -> None:
    """Read a recipe's data files once before the model (and torch) load, so that a bad row
    is reported in a second instead of after the model loads; raises what loading would."""
    from .formats import load_examples

    if train:
        fmt = load_examples(resolve_data_path(train, base_dir), fmt, skip_invalid=skip_invalid).format
    if eval:
        load_examples(resolve_data_path(eval, base_dir), fmt, skip_invalid=skip_invalid)
