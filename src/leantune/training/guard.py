"""The NaN guard every training loop shares: a loss that is not finite stops the run
before the optimizer applies it, naming the step and the last good checkpoint."""
from __future__ import annotations

import math
from pathlib import Path

from ..errors import LeantuneError
from .checkpoint import list_checkpoints


class TrainingDiverged(LeantuneError):
    """The loss became NaN or infinite."""


def check_finite(loss: float, step: int, ckpt_root: Path, lr: float, what: str = "the loss") -> None:
    """Raise :class:`TrainingDiverged` when ``loss`` is NaN or infinite."""
    if math.isfinite(loss):
        return
    ckpts = list_checkpoints(Path(ckpt_root)) + _trainer_checkpoints(Path(ckpt_root))
    kept = f"the last good checkpoint is {ckpts[-1]}" if ckpts else "no checkpoint had been written yet"
    raise TrainingDiverged(
        f"training stopped: {what} became {loss} at step {step}; {kept}. "
        f"Lower train.lr (now {lr}), set train.max_grad_norm, or check the data for empty targets."
    )


def _trainer_checkpoints(root: Path) -> list[Path]:
    """Complete ``checkpoint-N`` folders of the Hugging Face Trainer (TRL stages), oldest first."""
    found = [p for p in root.glob("checkpoint-*") if p.name[11:].isdigit() and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[11:]))
