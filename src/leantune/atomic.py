"""Writes that cannot destroy: a reader sees the old version or the new, never half, and no
command replaces what the user did not ask it to.

Every output folder is written into a new hidden sibling and renamed into place at the
end. An existing target is replaced only with ``force``, and never when it is (or holds)
something the user could not mean: ``/``, the home folder, the current folder or a parent
of it, or a folder that contains the command's own input (``merge runs/x runs/x``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputExists, UnsafeOutput


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def _contains(folder: Path, other: Path) -> bool:
    """``folder`` is ``other`` or one of its parents."""
    return folder == other or folder in other.parents


def check_output(target: Path, *, force: bool = False, sources: tuple[Path, ...] = (),
                 what: str = "output", flag: str = "--force") -> None:
    """Refuse a target that must not be replaced; raises ``OutputExists`` or ``UnsafeOutput``.

    A missing target or an empty folder is always fine. Anything else needs ``force``,
    and even then never ``/``, ``$HOME``, the current folder, a parent of these, or a
    folder holding one of ``sources`` (the command's input).
    """
    target = Path(target)
    real = _resolved(target)
    for src in sources:
        src_real = _resolved(src)
        if _contains(real, src_real) or _contains(src_real, real):
            raise UnsafeOutput(f"{target}: the {what} would overwrite its own input {src}; choose another folder")
    guarded = {Path("/"): "the root folder", _resolved(Path.home()): "your home folder",
               _resolved(Path.cwd()): "the current folder"}
    for place, name in guarded.items():
        if _contains(real, place):
            raise UnsafeOutput(f"{target}: refusing to write the {what} over {name} ({place}) or a folder "
                               f"that contains it; choose a new folder")
    if not target.exists() and not target.is_symlink():
        return
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        return
    if not force:
        kind = "folder" if target.is_dir() else "file"
        raise OutputExists(f"{target}: a {kind} already exists there and is not empty; choose a new path, or "
                           f"pass {flag} to replace it")


def replace_path(new: Path, target: Path) -> None:
    """Move ``new`` onto ``target``; an existing target is renamed aside first and removed
    only once ``new`` is in place (a crash in between leaves a hidden ``.NAME.old-…``)."""
    target = Path(target)
    old = None
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        old.rmdir()
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


@contextmanager
def atomic_dir(path: Path, *, force: bool = False, sources: tuple[Path, ...] = (), what: str = "output",
               flag: str = "--force"):
    """Yield a new hidden sibling folder that takes ``path``'s place only if the block succeeds.

    The target is checked first (:func:`check_output`); the temporary folder is ours and is
    removed on failure, the target is untouched then.
    """
    path = Path(path)
    check_output(path, force=force, sources=sources, what=what, flag=flag)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        replace_path(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path: Path, *, force: bool = False, what: str = "output", flag: str = "--force"):
    """Yield a temporary file path beside ``path`` that replaces it if the block succeeds."""
    path = Path(path)
    check_output(path, force=force, what=what, flag=flag)
    if path.is_dir():
        raise UnsafeOutput(f"{path}: is a folder; give a file name for the {what}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
