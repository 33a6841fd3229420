"""The one injection mechanism behind leantune's own methods.

Every method of ours that is not delegated to PEFT is built from these pieces:

* target selection by module-name pattern (:func:`select_linear`, reusing
  :func:`targets.resolve_targets`, so a pattern that matches nothing is a
  ``MethodError`` listing the model's candidates) and per-architecture placement
  of "attention output", "MLP output", "MLP" and "self-attention" modules
  (:data:`PLACEMENT`, :func:`find_modules`);
* wrapping a module in place (:func:`replace_module`: parent lookup + ``setattr``) or,
  the default, attaching a child module that acts through forward hooks
  (:func:`attach`, :func:`add_after`, :func:`add_parallel`), which keeps every base
  parameter's name — so PEFT adapters and other methods compose with ours;
* a Linear/Conv1D-agnostic view of weights, always ``out × in``
  (:func:`in_out`, :func:`weight_view`) — GPT-2 stores ``Conv1D`` weights ``in × out``;
* freezing (:func:`freeze`), and
* a delta of only the method's *own* parameters (:class:`InjectedMethod` records
  their names at ``apply`` and saves them with :func:`delta.save_delta`), so that
  several methods compose on one model, each saving and reloading its own part.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Iterable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..errors import MethodError
from .base import Method, ensure_not_empty
from .delta import load_delta, save_delta
from .targets import resolve_targets

LINEAR_TYPES = (nn.Linear, Conv1D)

# Where the blocks' sub-layers sit, as full-name regexes (matched against the whole
# module name with a leading ``.*\.``). "attn_out": the attention output projection
# (Houlsby's first adapter goes after it); "mlp_out": the MLP's output projection
# (Houlsby's second / Pfeiffer's adapter); "mlp_in": the module whose *input* is the
# MLP input; "mlp": the module whose *output* the parallel adapter is added to;
# "attn": the self-attention modules that call the attention interface (prefixes).
PLACEMENT: dict[str, dict[str, str]] = {
    "llama": {"attn_out": r"self_attn\.o_proj", "mlp_out": r"mlp\.down_proj", "mlp_in": r"mlp", "mlp": r"mlp",
              "attn": r"self_attn"},
    "gpt2": {"attn_out": r"attn\.c_proj", "mlp_out": r"mlp\.c_proj", "mlp_in": r"mlp", "mlp": r"mlp",
             "attn": r"h\.\d+\.attn"},
    # BERT's FFN is split: `intermediate` (dense + act) takes the input, `output.dense` gives the output
    "bert": {"attn_out": r"attention\.output\.dense", "mlp_out": r"layer\.\d+\.output\.dense",
             "mlp_in": r"layer\.\d+\.intermediate", "mlp": r"layer\.\d+\.output\.dense", "attn": r"attention\.self"},
    # T5: encoder and decoder blocks; decoder cross-attention is left alone
    "t5": {"attn_out": r"SelfAttention\.o", "mlp_out": r"DenseReluDense\.wo", "mlp_in": r"DenseReluDense",
           "mlp": r"DenseReluDense", "attn": r"SelfAttention"},
}
for _alias in ("mistral", "qwen2", "qwen3", "gemma"):
    PLACEMENT[_alias] = PLACEMENT["llama"]
PLACEMENT["roberta"] = PLACEMENT["bert"]


# --------------------------------------------------------------------------- modules

def model_type(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", "") or ""


def hidden_size(model: nn.Module) -> int:
    cfg = model.config
    for key in ("hidden_size", "d_model", "n_embd"):
        if isinstance(getattr(cfg, key, None), int):
            return getattr(cfg, key)
    raise MethodError(f"cannot tell the hidden size of {type(model).__name__}")


def get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where ``name`` is (parent lookup + ``setattr``); returns the old module."""
    parent, child = get_parent(model, name)
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def placement(model: nn.Module, method: str) -> dict[str, str]:
    kind = model_type(model)
    if kind not in PLACEMENT:
        raise MethodError(f"method '{method}' does not know where the sub-layers of '{kind}' models are; "
                          f"supported architectures: {', '.join(sorted(PLACEMENT))}")
    return PLACEMENT[kind]


def find_modules(model: nn.Module, role: str, method: str) -> list[str]:
    """Names of the modules playing ``role`` (see :data:`PLACEMENT`) in every block, in order."""
    pattern = re.compile(r"(?:.*\.)?" + placement(model, method)[role])
    names = [n for n, _ in model.named_modules() if pattern.fullmatch(n)]
    if not names:
        raise MethodError(f"method '{method}': found no '{role}' modules in this {model_type(model)} model")
    return names


def select_linear(model: nn.Module, targets: str | list[str], method: str) -> list[str]:
    """Linear/Conv1D layers by pattern (``auto``, ``all-linear`` or patterns; heads excluded)."""
    return resolve_targets(model, targets, method)


def base_linear(module: nn.Module) -> nn.Module:
    """The Linear/Conv1D inside wrappers (ours: ``.base``; PEFT's: ``.base_layer``)."""
    while not isinstance(module, LINEAR_TYPES):
        inner = getattr(module, "base", None) or getattr(module, "base_layer", None)
        if inner is None:
            raise MethodError(f"{type(module).__name__} is not a linear layer")
        module = inner
    return module


def in_out(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear or a GPT-2 Conv1D (weight stored in × out)."""
    module = base_linear(module)
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    return module.in_features, module.out_features


def weight_view(module: nn.Module) -> torch.Tensor:
    """The weight as ``out × in`` (a view: writing into it writes the layer)."""
    module = base_linear(module)
    return module.weight.t() if isinstance(module, Conv1D) else module.weight


def freeze(model: nn.Module) -> None:
    model.requires_grad_(False)


def activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}[name]()


def first_tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def replace_first(output: Any, tensor: torch.Tensor) -> Any:
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


# --------------------------------------------------------------------------- attaching

# Our modules become *children* of the module they act on, and act through forward
# hooks: the base model's own parameter names never change (``mlp.down_proj.weight``
# stays that), so PEFT adapters, ``save_pretrained`` and name patterns keep working
# when methods are composed. ``detach`` removes a method's child and hooks again.
ADAPTER_CHILD = "leantune_adapter"


def attach(module: nn.Module, child: str, delta: nn.Module, *hooks) -> nn.Module:
    """Add ``delta`` as ``module.<child>`` and remember the hook handles on it."""
    if child in module._modules:
        raise MethodError(f"{type(module).__name__} already has a '{child}' (the same method composed twice?)")
    module.add_module(child, delta)
    delta.leantune_hooks = list(hooks)
    return delta


def detach(module: nn.Module, child: str) -> None:
    delta = module._modules.pop(child)
    for h in getattr(delta, "leantune_hooks", []):
        h.remove()


class InputTap:
    """Remembers the last input of a module (a forward pre-hook) for a parallel branch."""

    def __init__(self):
        self.value: torch.Tensor | None = None

    def __call__(self, module, args, kwargs):
        self.value = args[0] if args else next(iter(kwargs.values()))


def add_after(module: nn.Module, delta: nn.Module) -> nn.Module:
    """Serial adapter: ``y = module(x)`` becomes ``y + delta(y)``."""
    def hook(mod, args, out):
        y = first_tensor(out)
        return replace_first(out, y + delta(y).to(y.dtype))

    return attach(module, ADAPTER_CHILD, delta, module.register_forward_hook(hook))


def add_parallel(sink: nn.Module, delta: nn.Module, source: nn.Module | None = None) -> nn.Module:
    """Parallel branch: ``sink(x)`` becomes ``sink(x) + delta(x_in)``, ``x_in`` the input of
    ``source`` (default: of ``sink`` itself; BERT's FFN starts at another module)."""
    tap = InputTap()
    pre = (source or sink).register_forward_pre_hook(tap, with_kwargs=True)

    def hook(mod, args, out):
        y = first_tensor(out)
        return replace_first(out, y + delta(tap.value).to(y.dtype))

    return attach(sink, ADAPTER_CHILD, delta, pre, sink.register_forward_hook(hook))


def wrap_parallel(model: nn.Module, method: str, make: "callable") -> list[nn.Module]:
    """Put ``make()`` beside the MLP of every block; returns the new branch modules."""
    sinks, sources = find_modules(model, "mlp", method), find_modules(model, "mlp_in", method)
    if len(sinks) != len(sources):
        raise MethodError(f"method '{method}': {len(sources)} MLP inputs but {len(sinks)} MLP outputs")
    return [add_parallel(model.get_submodule(sink), make(),
                         None if sink == source else model.get_submodule(source))
            for sink, source in zip(sinks, sources)]


def wrap_after(model: nn.Module, names: Iterable[str], make: "callable") -> list[nn.Module]:
    return [add_after(model.get_submodule(name), make()) for name in names]


def adapter_sites(model: nn.Module, kind: str, method: str) -> list[str]:
    """Houlsby: after attention output and after the MLP; Pfeiffer: after the MLP only."""
    if kind == "houlsby":
        attn, mlp = find_modules(model, "attn_out", method), find_modules(model, "mlp_out", method)
        return [n for pair in zip(attn, mlp) for n in pair]
    return find_modules(model, "mlp_out", method)


# --------------------------------------------------------------------------- the base class

class InjectedMethod(Method):
    """A method built on this module: records its own parameters, saves only those.

    Subclasses implement :meth:`inject`, which adds/unfreezes what the method trains
    and returns the parameters it owns. ``apply`` freezes the model first.
    """

    wraps_model: ClassVar[bool] = False
    # the model computes exactly what the base did right after ``apply``
    starts_as_identity: ClassVar[bool] = True

    def __init__(self, config):
        super().__init__(config)
        self.param_names: list[str] = []
        # train the (new, randomly initialised) task head of seq_cls models too, as PEFT does;
        # a Composite turns this off for all but one member
        self.claim_head = True

    def inject(self, model: nn.Module, head: str) -> list[nn.Parameter]:
        raise NotImplementedError

    def apply(self, model: nn.Module, head: str) -> nn.Module:
        freeze(model)
        own = list(self.inject(model, head))
        if head == "seq_cls" and self.claim_head:
            own += [p for p in task_head_parameters(model) if all(p is not q for q in own)]
        for p in own:
            p.requires_grad_(True)
        ids = {id(p) for p in own}
        self.param_names = [n for n, p in model.named_parameters() if id(p) in ids]
        ensure_not_empty(model, self.name)
        return model

    def own_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        named = dict(model.named_parameters())
        return {n: named[n] for n in self.param_names}

    def save(self, model: nn.Module, path: Path) -> None:
        save_delta(model, path, {"name": self.name, **self.config.model_dump(mode="json")},
                   names=self.param_names)

    def load(self, model: nn.Module, path: Path, head: str) -> nn.Module:
        model = self.apply(model, head)
        load_delta(model, path, expected=self.param_names)
        return model


def task_head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classification head (``classifier`` / ``score``) of a sequence-classification model."""
    return [p for n, p in model.named_parameters() if n.split(".")[0] in ("classifier", "score")]


def detach_all(model: nn.Module, child: str) -> nn.Module:
    """Remove every ``child`` module we attached (and its hooks)."""
    for module in list(model.modules()):
        if child in module._modules:
            detach(module, child)
    return model
