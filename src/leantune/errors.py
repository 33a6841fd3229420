"""User-facing errors: one paragraph, the file/line/field at fault, exit code 2."""
from __future__ import annotations

from dataclasses import dataclass


class LeantuneError(Exception):
    """An error caused by the user's input (recipe, data, model path).

    The CLI prints the message as one paragraph and exits with ``exit_code``
    instead of a traceback.
    """

    exit_code = 2


class RecipeError(LeantuneError):
    """A recipe that does not validate."""


class ModelSourceError(LeantuneError):
    """A model name or path that cannot be resolved or loaded."""


class MethodError(LeantuneError):
    """A method that cannot be applied to this model with these settings."""


class NotMergeable(MethodError):
    """The method's update cannot be folded into the base weights."""


class OutputExists(LeantuneError):
    """The output path is taken; ``--force`` (or ``output.overwrite``) replaces it."""


class UnsafeOutput(LeantuneError):
    """An output path that no flag may replace: ``/``, home, the current folder, the input."""


class RunStateError(LeantuneError):
    """A run directory that is missing, finished, broken or partial for what was asked."""


class UnsafeModelError(ModelSourceError):
    """Model files that would run code: pickle weights, or remote code not allowed."""


@dataclass(frozen=True)
class Problem:
    """One invalid field of one data row."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class DataValidationError(LeantuneError):
    """Rows of a data file that do not fit the declared format."""

    def __init__(self, problems: list[Problem], hint: str = ""):
        self.problems = problems
        shown = "\n  ".join(str(p) for p in problems[:50])
        more = f"\n  … and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(
            f"{len(problems)} invalid row(s):\n  {shown}{more}"
            + (f"\n{hint}" if hint else "")
        )
