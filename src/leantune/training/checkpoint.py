"""Atomic, resumable checkpoints.

A checkpoint is written into a temporary folder, flushed to disk, then renamed to
``step-N``: a run killed at any moment leaves either a whole checkpoint or none.
Trainable weights go to safetensors; optimizer and scheduler state are tensors and
plain containers, reloaded with ``torch.load(weights_only=True)`` (no arbitrary
unpickling); random-number states go to JSON.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

STEP_DIR = re.compile(r"^step-(\d+)$")


def _fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    v, inner, gauss = state["python"]
    random.setstate((v, tuple(inner), gauss))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def begin_checkpoint(root: Path, step: int) -> Path:
    """The empty temporary folder checkpoint ``step`` is written into."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step-{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def write_trainable(model: nn.Module, folder: Path) -> None:
    trainable = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, folder / "trainable.safetensors")


def finish_checkpoint(root: Path, step: int, tmp: Path, info: dict, keep: int) -> Path:
    """State and random numbers, flushed to disk, then the atomic rename to ``step-N``; only
    the newest ``keep`` checkpoints stay."""
    final = root / f"step-{step}"
    (tmp / "state.json").write_text(json.dumps({"step": step, "rng": rng_state(), **info}))
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(root: Path, step: int, model: nn.Module, optimizer, scheduler, info: dict, keep: int) -> Path:
    tmp = begin_checkpoint(root, step)
    write_trainable(model, tmp)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    return finish_checkpoint(root, step, tmp, info, keep)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first; half-written temporary folders are ignored."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, rank: int = 0) -> dict:
    """Weights, optimizer and scheduler state into the given objects; the random state of
    process ``rank`` (a run of several processes saves one per process in ``rng_ranks``)."""
    weights = load_file(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    for name, value in weights.items():
        params[name].data.copy_(value)
    states = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    state = json.loads((path / "state.json").read_text())
    set_rng_state(state["rng_ranks"][rank] if "rng_ranks" in state else state["rng"])
    return state


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the trainable parameters in memory (to return to: Reptile, reset between rounds)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a :func:`trainable_state` back into the model."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])
