"""The method registry: every delta-tuning method behind one interface.

A method turns a loaded base model into one whose trainable parameters are the
method's, saves and reloads just those, and (where the math allows) folds them
back into plain weights.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from ..errors import MethodError, NotMergeable, RecipeError

Family = Literal["specification", "addition", "reparameterization", "hybrid"]


class MethodConfig(BaseModel):
    """Settings of one method; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Method:
    """One delta-tuning method. Subclasses set the class attributes and ``Config``."""

    name: ClassVar[str]
    family: ClassVar[Family]
    mergeable: ClassVar[bool] = False
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    architectures: ClassVar[str] = "all (Llama, Qwen2, GPT-2, BERT, T5)"
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
    def after_backward(self, model: nn.Module, step: int) -> None:
        """Called once per optimizer step, after ``optimizer.step()`` and before ``zero_grad``:
        the step's gradients are still in ``.grad`` (AdaLoRA reads them)."""

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict] | None:
        """Optimizer parameter groups, or None for the engine's default (one lr for all);
        ``llrd`` returns layer-wise decayed learning rates."""
        return None


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def _load_builtin_methods() -> None:
    """Import every module of this package once: each registers its classes."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__ := [str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{info.name}")


def get_method_class(name: str) -> type[Method]:
    _load_builtin_methods()
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RecipeError(f"unknown method {name!r}.{hint} Available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def build_method(spec: dict[str, Any] | list[dict[str, Any]], source: str = "recipe") -> Method:
    """``{"name": "lora", "r": 4}`` → a configured ``LoRA`` instance.

    A list of several entries gives a ``Composite`` applying each in turn.
    """
    if isinstance(spec, list):
        if len(spec) == 1:
            return build_method(spec[0], source)
        from .composite import Composite

        return Composite([build_method(s, source) for s in spec], source)
    settings = dict(spec)
    name = settings.pop("name", None)
    if not name:
        raise RecipeError(f"{source}: method entry {spec!r} has no 'name'")
    cls = get_method_class(name)
    try:
        return cls(cls.Config.model_validate(settings))
    except ValidationError as err:
        from ..recipe import format_validation_error

        raise RecipeError(format_validation_error(err, cls.Config, f"{source}: method {name}")) from None


def validate_method_settings(specs: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """Validate every method entry and return them with defaults filled in."""
    out = []
    for spec in specs:
        method = build_method(spec, source)
        out.append({"name": method.name, **method.config.model_dump(mode="json")})
    if len(out) > 1:
        build_method(out, source)  # checks the combination (e.g. at most one PEFT-based method)
    return out


def wraps_model(method: Method) -> bool:
    """Whether ``apply`` wraps the model in a PeftModel: declared, or guessed from the
    method's module importing PEFT's model-wrapping API."""
    declared = type(method).wraps_model
    if declared is not None:
        return declared
    import sys

    for cls in type(method).__mro__:
        module = sys.modules.get(cls.__module__)
        if module is not None and any(getattr(v, "__module__", "").startswith("peft")
                                      and getattr(v, "__name__", "") in ("get_peft_model", "PeftModel")
                                      for v in vars(module).values()):
            return True
    return False


def list_methods() -> list[type[Method]]:
    _load_builtin_methods()
    return [METHODS[k] for k in sorted(METHODS)]


def ensure_not_empty(model: nn.Module, method: str) -> None:
    """A method that leaves nothing trainable is a configuration error."""
    if not any(p.requires_grad for p in model.parameters()):
        raise MethodError(f"method '{method}' left no trainable parameters with these settings")
