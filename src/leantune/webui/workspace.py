"""The web page's workspace: the one folder whose files the page may read and write.

Every path a user types is checked here: relative to the workspace or absolute, it must stay
inside it once ``..`` and symbolic links are resolved. Uploads are copied into ``data/`` under
a name that never replaces an existing file. The page's own state (job records, logs) lives in
the hidden ``.leantune-webui`` folder.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import LeantuneError
from ..run_dir import RUN_META

UPLOAD_LIMIT = 50 * 2**20
STATE_DIR = ".leantune-webui"
DATA_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt"}
RECIPE_SUFFIXES = {".yaml", ".yml"}
MAX_DEPTH = 5  # folders below the root that the listings look into


class OutsideWorkspace(LeantuneError):
    """A path that leaves the workspace (``..``, an absolute path elsewhere, a symlink out)."""


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


class Workspace:
    def __init__(self, root: Path):
        root = Path(root).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()

    @property
    def state_dir(self) -> Path:
        """The page's own folder: job records and logs."""
        return self.root / STATE_DIR

    def path(self, text: str | Path, *, must_exist: bool = False, what: str = "file") -> Path:
        """The resolved absolute path of a user-typed path, refused when it leaves the workspace."""
        shown = str(text).strip()
        if not shown:
            raise LeantuneError(f"give a {what}")
        try:
            given = Path(shown).expanduser()
            resolved = (given if given.is_absolute() else self.root / given).resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte, an unknown ~user
            raise LeantuneError(f"{shown}: not a usable path ({exc})") from None
        if not resolved.is_relative_to(self.root):
            raise OutsideWorkspace(f"{shown}: outside the workspace {self.root}; only paths inside it can be "
                                   f"read or written")
        if must_exist and not resolved.exists():
            raise LeantuneError(f"{shown}: no such {what} in the workspace")
        return resolved

    def rel(self, path: Path) -> str:
        """``path`` as shown to the user: relative to the workspace, with ``/``."""
        resolved = Path(path).resolve()
        if resolved.is_relative_to(self.root):
            return resolved.relative_to(self.root).as_posix()
        return resolved.as_posix()

    def save_upload(self, src: Path, name: str, limit: int = UPLOAD_LIMIT) -> Path:
        """Copy an uploaded file into ``data/`` under ``name``'s last part; an existing file is
        never replaced (``stem-1.ext``, ``stem-2.ext``, … instead)."""
        base = str(name).replace("\\", "/").rsplit("/", 1)[-1].strip()
        if not base or base.startswith("."):
            raise LeantuneError(f"{name!r}: not a usable file name for an upload; rename the file (a name that "
                                f"does not start with a dot) and upload it again")
        size = Path(src).stat().st_size
        if size > limit:
            raise LeantuneError(f"{base}: {_mb(size)} is over the upload limit of {_mb(limit)}; copy the file "
                                f"into the workspace folder {self.root} instead and type its path")
        folder = self.path("data", what="folder")
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", dir=folder)
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            return _link_free_name(Path(tmp), folder / base)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def data_files(self) -> list[str]:
        """Data files of the workspace (relative paths, sorted), outside run folders and hidden ones."""
        found = []
        for folder, files in self._walk():
            found += [folder / f for f in files if Path(f).suffix.lower() in DATA_SUFFIXES and not f.startswith(".")]
        return sorted(self.rel(p) for p in found if self.inside(p))

    def runs(self) -> list[Path]:
        """Run folders (holding ``run.json``) and those of trainings started here that have not
        written it yet, newest first."""
        started: dict[Path, float] = {}
        for folder, _ in self._walk(into_runs=True):
            if (folder / RUN_META).is_file():
                started[folder] = (folder / RUN_META).stat().st_mtime
        for record in sorted((self.state_dir / "jobs").glob("*.json")):
            try:
                job = json.loads(record.read_text(encoding="utf-8"))
                run_dir, args = Path(job["run_dir"]), job.get("args") or []
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if args[:1] == ["train"] and run_dir not in started and run_dir.is_relative_to(self.root):
                started[run_dir] = float(job.get("started", 0))
        return sorted(started, key=lambda p: started[p], reverse=True)

    def recipes(self) -> list[str]:
        """Recipe files (``.yaml``/``.yml``) under ``recipes/``, relative paths, sorted."""
        folder = self.root / "recipes"
        if not folder.is_dir():
            return []
        found = [p for p in folder.rglob("*") if p.suffix.lower() in RECIPE_SUFFIXES and p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
        return sorted(self.rel(p) for p in found if self.inside(p))

    def inside(self, path: Path) -> bool:
        """``path`` (symlinks resolved) is in the workspace."""
        return Path(path).resolve().is_relative_to(self.root)

    def _walk(self, into_runs: bool = False):
        """(folder, file names) of the visible folders up to ``MAX_DEPTH`` below the root. A run
        folder is yielded (with ``into_runs``) but never entered, nor a ``runs`` folder of runs."""
        for top, dirs, files in os.walk(self.root):
            folder = Path(top)
            depth = len(folder.relative_to(self.root).parts)
            if (folder / RUN_META).is_file():
                dirs[:] = []
                if into_runs:
                    yield folder, files
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and depth < MAX_DEPTH)
            if folder.name == "runs" and any((folder / d / RUN_META).is_file() for d in dirs) and not into_runs:
                dirs[:] = []
                continue
            yield folder, files


def _link_free_name(tmp: Path, wanted: Path) -> Path:
    """Give ``tmp`` the first free name of ``wanted``, ``stem-1.ext``, …: a hard link fails
    rather than replace a file created meanwhile."""
    stem, suffix = wanted.stem, wanted.suffix
    for n in range(10_000):
        target = wanted if n == 0 else wanted.with_name(f"{stem}-{n}{suffix}")
        try:
            os.link(tmp, target)
            return target
        except FileExistsError:
            continue
        except OSError:  # a file system without hard links
            if target.exists():
                continue
            os.replace(tmp, target)
            return target
    raise LeantuneError(f"{wanted}: no free name left beside it; remove some of the uploads in {wanted.parent}")
