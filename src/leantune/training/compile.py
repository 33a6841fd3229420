"""Regional compilation: each repeated block of the model (a decoder layer) compiled in place.

``torch.compile`` of a whole model traces every layer and the loss, and on a CPU took 242 s
before the first step of SmolLM2-135M; the layers of a transformer share one class and one
code path, so compiling the blocks one by one compiles that code once and reuses it
(PyTorch's regional compilation recipe; accelerate's ``compile_regions``). In place
(``module.compile()``), so hooks, gradient checkpointing and the tiled loss, which calls the
backbone and the head itself, see the same modules. Shapes are dynamic from the start:
length-grouped batches change the sequence length at every step. Only training runs
compiled: evaluation (no gradients, generation with a key/value cache) would compile again.
"""
from __future__ import annotations

import sysconfig
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..errors import RecipeError


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The members of every outermost ``ModuleList`` whose entries share one class (the layers;
    not lists inside them, such as a mixture's experts, which compile with their layer)."""
    blocks: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            blocks.extend(module)
            inside.update(id(m) for m in module.modules())
    return blocks


def check_compiler(device: torch.device) -> None:
    """Inductor builds C++ kernels on a CPU, as Python extensions: say what is missing before
    training starts."""
    if device.type != "cpu":
        return
    from torch._inductor.cpp_builder import get_cpp_compiler  # lazy: inductor loads only for train.compile

    try:
        get_cpp_compiler()
    except Exception as exc:  # inductor's own error for a missing compiler names no setting
        raise RecipeError(f"train.compile: true needs a C++ compiler on a CPU (torch.compile builds its kernels "
                          f"with it; {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). Install "
                          f"g++ or set train.compile: false") from None
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.is_file():
        raise RecipeError(f"train.compile: true needs Python's C headers on a CPU ({headers} is missing; on "
                          f"Debian or Ubuntu: apt install python3-dev). Install them or set train.compile: false")


class CompiledBlocks:
    """The repeated blocks of ``model`` compiled in place for the training loop; :meth:`paused`
    runs them eagerly for an evaluation inside it, :meth:`release` for good."""

    def __init__(self, model: nn.Module, device: torch.device):
        check_compiler(device)
        self.blocks = repeated_blocks(model)
        for block in self.blocks:
            block.compile(dynamic=True)
        # what nn.Module.compile installs, and the eager model has None in its place
        self._compiled = [block._compiled_call_impl for block in self.blocks]

    def _install(self, calls: list) -> None:
        for block, call in zip(self.blocks, calls):
            block._compiled_call_impl = call

    @contextmanager
    def paused(self):
        self._install([None] * len(self.blocks))
        try:
            yield
        finally:
            self._install(self._compiled)

    def release(self) -> None:
        self._install([None] * len(self.blocks))
