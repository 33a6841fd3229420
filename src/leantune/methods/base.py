"""The interface every delta-tuning method implements.

A method turns a loaded base model into one whose trainable parameters are the
method's, saves and reloads just those, and (where the math allows) folds them
back into plain weights. ``registry.py`` records the methods by name.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from ..errors import MethodError, NotMergeable
from ..recipe.method_settings import ALL_ARCHITECTURES, Family, MethodConfig


class Method:
    """One delta-tuning method. Subclasses set ``name`` and ``Config`` (its settings class in
    ``settings/``); ``registry.register`` gives them the rest of the class attributes."""

    name: ClassVar[str]
    family: ClassVar[Family]
    mergeable: ClassVar[bool] = False
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    architectures: ClassVar[str] = ALL_ARCHITECTURES
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    # True: ``apply`` returns a PEFT wrapper around the model; None: not declared (guessed, see wraps_model())
    wraps_model: ClassVar[bool | None] = None

    def __init__(self, config: MethodConfig):
        self.config = config

    # ---- before loading
    def set_total_steps(self, n: int) -> None:
        """Told the number of optimizer steps before ``apply``, for methods whose schedule
        depends on it (AdaLoRA's rank budget). Methods that need nothing ignore it."""

    def load_kwargs(self) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments the method needs (e.g. quantization)."""
        return {}

    # ---- the method itself
    def apply(self, model: nn.Module, head: str) -> nn.Module:
        """Inject the method into ``model`` and freeze everything it does not train."""
        raise NotImplementedError

    def save(self, model: nn.Module, path: Path) -> None:
        raise NotImplementedError

    def load(self, model: nn.Module, path: Path, head: str) -> nn.Module:
        """Apply the method to a fresh base ``model`` and load its saved weights."""
        raise NotImplementedError

    def merge(self, model: nn.Module) -> nn.Module:
        raise NotMergeable(f"method '{self.name}' cannot be merged into the base weights")

    # ---- training hooks
    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Called once per optimizer step, after ``optimizer.step()`` and before ``zero_grad``:
        the step's gradients are still in ``.grad`` (AdaLoRA reads them)."""

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict] | None:
        """Optimizer parameter groups, or None for the engine's default (one lr for all);
        ``llrd`` returns layer-wise decayed learning rates."""
        return None


def wraps_model(method: Method) -> bool:
    """Whether ``apply`` wraps the model in a PeftModel: declared, or guessed from the
    method's module importing PEFT's model-wrapping API."""
    declared = type(method).wraps_model
    if declared is not None:
        return declared
    return imports_peft_wrapper(type(method))


def imports_peft_wrapper(cls: type[Method]) -> bool:
    """Whether the module of ``cls`` or of a base class imports PEFT's model-wrapping API."""
    for base in cls.__mro__:
        module = sys.modules.get(base.__module__)
        if module is not None and any(getattr(v, "__module__", "").startswith("peft")
                                      and getattr(v, "__name__", "") in ("get_peft_model", "PeftModel")
                                      for v in vars(module).values()):
            return True
    return False


def ensure_not_empty(model: nn.Module, method: str) -> None:
    """A method that leaves nothing trainable is a configuration error."""
    if not any(p.requires_grad for p in model.parameters()):
        raise MethodError(f"method '{method}' left no trainable parameters with these settings")
