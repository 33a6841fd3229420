"""The life of a run directory: checked before anything loads, created, resumed or replaced,
and never lost.

- A new run refuses an existing folder unless ``output.overwrite``; even then it replaces
  only a leantune run (one with ``run.json``), and never ``/``, home, the current folder or
  a parent of them (atomic.check_output).
- The run it replaces is moved to a hidden sibling (``.NAME.previous-…``) and deleted only
  when the new run has finished; a failed or interrupted new run leaves it there.
- A new run that fails before its first checkpoint removes the folder it created (there is
  nothing to resume); one with checkpoints keeps it for ``--resume``.
- ``--resume`` needs an unfinished run of the same recipe: a missing run, a finished one or
  a different recipe (the differing fields named) is an error.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .atomic import check_output
from .errors import OutputExists, RunStateError, UnsafeOutput
from .recipe import Recipe

RUN_META = "run.json"
FINISHED_MARK = "summary.json"  # written last by a run that finished
RESUME_FREE = {"train": {"max_steps", "epochs", "device", "report_to"}}  # may change between a run and its --resume


def run_path(recipe: Recipe) -> Path:
    return Path(recipe.output.dir) / recipe.run_name


def _differences(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in list(a) + [k for k in b if k not in a]:
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix[:-1]} ({a!r} then, {b!r} now)"]


def has_checkpoints(run_dir: Path) -> bool:
    """A ``checkpoints/step-N`` (the engine's) or a complete ``checkpoints/checkpoint-N`` (TRL's,
    holding ``trainer_state.json``)."""
    root = run_dir / "checkpoints"
    return root.is_dir() and any(p.name.startswith("step-") or (p.name.startswith("checkpoint-")
                                                                and (p / "trainer_state.json").is_file())
                                 for p in root.iterdir())


def check_run_dir(recipe: Recipe, resume: bool) -> Path:
    """Refuse what must not happen to the run directory; creates nothing."""
    run_dir = run_path(recipe)
    if resume:
        if not run_dir.exists():
            raise RunStateError(f"--resume: there is no run {run_dir} to continue; start it without --resume")
        meta_file = run_dir / RUN_META
        if not meta_file.is_file():
            raise RunStateError(f"--resume: {run_dir} is not a leantune run (no {RUN_META}); start a new run "
                                f"with another output.name")
        if (run_dir / FINISHED_MARK).is_file():
            raise RunStateError(f"--resume: the run {run_dir} has finished; there is nothing to continue. Train "
                                f"longer in a new run (output.name=…), or replace it with output.overwrite=true")
        try:
            saved = Recipe.model_validate(json.loads(meta_file.read_text(encoding="utf-8"))["recipe"])
        except (ValueError, KeyError, TypeError):
            raise RunStateError(f"--resume: {meta_file} is damaged (not the JSON a run writes); the run cannot be "
                                f"continued: start a new run with another output.name") from None
        diff = _differences(saved.model_dump(mode="json", exclude=RESUME_FREE),
                            recipe.model_dump(mode="json", exclude=RESUME_FREE))
        if diff:
            raise RunStateError(f"--resume: the recipe differs from the one {run_dir} was started with: "
                                f"{'; '.join(diff)}. Resume with the same recipe, or start a new run")
        return run_dir
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        if not recipe.output.overwrite:
            raise OutputExists(f"run directory {run_dir} already exists; continue it with --resume, "
                               f"replace it with output.overwrite=true, or choose output.name=…")
        check_output(run_dir, force=True, what="run")
        if not (run_dir / RUN_META).is_file():
            raise UnsafeOutput(f"{run_dir}: output.overwrite replaces only a leantune run, and this folder is not "
                               f"one (no {RUN_META}); choose another output.name or output.dir")
    else:
        check_output(run_dir, what="run")
    return run_dir


@contextmanager
def open_run_dir(run_dir: Path, resume: bool, say=lambda m: None):
    """Create (or reopen) the run directory for the block; see the module's rules."""
    run_dir = Path(run_dir)
    previous = None
    if run_dir.exists() and not resume and (not run_dir.is_dir() or any(run_dir.iterdir())):
        previous = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.previous-", dir=run_dir.parent))
        previous.rmdir()
        os.replace(run_dir, previous)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield run_dir
    except BaseException:
        if created and not has_checkpoints(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
            if previous is not None:
                os.replace(previous, run_dir)
        elif previous is not None:
            say(f"[yellow]the run this one was replacing is kept in {previous}")
        raise
    if previous is not None:
        shutil.rmtree(previous)


def safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file cannot be read (truncated, not one), or None: checks the
    header and that the file is long enough for every tensor it lists, without loading them."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or 8 + n > size:
                return "cut short or not a safetensors file (its header is incomplete)"
            header = json.loads(fh.read(n).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"unreadable ({exc})"
    if not isinstance(header, dict):
        return "not a safetensors file (its header is not a JSON object)"
    ends = [t.get("data_offsets", [0, 0])[1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    if ends and 8 + n + max(ends) > size:
        return f"cut short: {size} bytes where the tensors it lists need {8 + n + max(ends)}"
    return None


def read_run_files(run_dir: Path) -> dict:
    """The ``run.json`` of a finished run, after checking that what loading needs is there and
    whole; every problem is a ``RunStateError`` saying what to do."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunStateError(f"{run_dir}: no such run directory")
    meta_file = run_dir / RUN_META
    if not meta_file.is_file():
        raise RunStateError(f"{run_dir}: not a leantune run directory (no {RUN_META})")
    damaged = RunStateError(f"{meta_file}: damaged (cut short or edited: not the JSON a run writes); the run "
                            f"cannot be loaded. Train it again (output.overwrite=true)")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        raise damaged from None
    if not isinstance(meta, dict) or not isinstance(meta.get("recipe"), dict):
        raise damaged
    adapter = run_dir / "adapter"
    if not adapter.is_dir():
        stage = meta["recipe"].get("stage")
        if (stage.get("name") if isinstance(stage, dict) else stage) == "icl":
            raise RunStateError(
                f"{run_dir}: an in-context-learning run (stage icl) trains nothing, so there is no model to "
                f"load; evaluate again by running its recipe with new data: "
                f"leantune train {run_dir / 'recipe.yaml'} data.eval=FILE")
        hint = ("continue it with `leantune train RECIPE --resume`" if has_checkpoints(run_dir)
                else "it has no checkpoint either: train it again")
        raise RunStateError(f"{run_dir}: the run has no adapter/ (training did not finish); {hint}")
    try:
        Recipe.model_validate(meta["recipe"])
        meta["head"], meta["model_path"]  # noqa: B018 - both are required
    except (ValueError, KeyError):
        raise damaged from None
    for file in sorted(adapter.glob("*.safetensors")):
        if problem := safetensors_problem(file):
            raise RunStateError(f"{file}: {problem}; the run's trained weights are damaged. Train it again, or "
                                f"copy the run directory again if it was moved")
    return meta
