"""Adversarial training on input embeddings: a hook of the training loop, configured by
``train.adversarial`` (``recipe.AdversarialSection``) for any stage trained by the engine.

- FGM (Miyato et al. 2017, arXiv:1605.07725): one step r = ε·g/‖g‖₂ along the gradient g of
  the loss with respect to the input embeddings, normalised per example.
- PGD (Madry et al. 2018, arXiv:1706.06083): ``steps`` ascent steps of size α on the normalised
  gradient, each projected back onto the ε-ball (per example); the first step reuses the clean
  gradient, so ``pgd`` with ``steps: 1, alpha: ε`` is FGM.

The perturbation is added to the *output* of the model's input-embedding layer by a forward
hook, so it works whatever the method trains (full, LoRA, bitfit …: the embedding weights may be
frozen) and the weights are never modified: "restoring" is removing the hook. The engine calls
:meth:`Adversary.watch` around the clean forward pass (to capture the embedding gradient) and
:meth:`Adversary.attack` after the clean backward: one (FGM) or ``steps`` (PGD) extra forward
passes and one extra backward, whose gradients add to the clean ones.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

from ..recipe import AdversarialSection


def _step_size(cfg: AdversarialSection) -> float:
    return cfg.alpha if cfg.alpha is not None else min(cfg.epsilon, 1.5 * cfg.epsilon / cfg.steps)


def embedding_layer(model: nn.Module) -> nn.Module:
    """The model's input-embedding module (through PEFT wrappers)."""
    getter = getattr(model, "get_input_embeddings", None)
    layer = getter() if getter else None
    if layer is None:
        raise ValueError("train.adversarial: the model has no input embeddings to perturb")
    return layer


def per_example_normalize(g: torch.Tensor) -> torch.Tensor:
    """g / ‖g‖₂ with the norm over all but the batch dimension."""
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    return g / norm.view(-1, *([1] * (g.dim() - 1)))


def project(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Scale the examples of ``delta`` whose L2 norm exceeds ε back onto the ε-sphere."""
    norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    scale = (epsilon / norm).clamp(max=1.0)
    return delta * scale.view(-1, *([1] * (delta.dim() - 1)))


def fgm_perturbation(grad: torch.Tensor, epsilon: float) -> torch.Tensor:
    """FGM: r = ε·g/‖g‖₂ per example (its norm is exactly ε where g ≠ 0)."""
    return epsilon * per_example_normalize(grad)


class Adversary:
    def __init__(self, config: AdversarialSection):
        self.config = config
        self._captured: list[torch.Tensor] = []

    @contextmanager
    def watch(self, model: nn.Module):
        """Around the clean forward pass: keep the embedding outputs so their gradient is kept."""
        self._captured = []

        def hook(module, args, output):
            if not output.requires_grad:
                output = output.detach().requires_grad_(True)
            else:
                output.retain_grad()
            self._captured.append(output)
            return output

        handle = embedding_layer(model).register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    @contextmanager
    def perturbed(self, model: nn.Module, deltas: list[torch.Tensor]):
        """Forward passes inside add ``deltas[i]`` to the i-th call of the embedding layer."""
        calls = iter(range(len(deltas)))

        def hook(module, args, output):
            i = next(calls, None)
            if i is None or deltas[i].shape != output.shape:
                return output
            return output + deltas[i].to(output.dtype)

        handle = embedding_layer(model).register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def attack(self, model: nn.Module, compute_loss: Callable[[], torch.Tensor], scale: float) -> float | None:
        """After the clean backward: adversarial forward(s) and one backward of
        ``weight · loss_adv · scale``. Returns the adversarial loss (None if nothing was captured)."""
        cfg = self.config
        grads = [c.grad for c in self._captured]
        self._captured = []
        if not grads or any(g is None for g in grads):
            return None
        if cfg.kind == "fgm":
            deltas = [fgm_perturbation(g.float(), cfg.epsilon) for g in grads]
        else:
            deltas = [project(_step_size(cfg) * per_example_normalize(g.float()), cfg.epsilon) for g in grads]
            for _ in range(cfg.steps - 1):
                deltas = [d.detach().requires_grad_(True) for d in deltas]
                with self.perturbed(model, deltas):
                    loss = compute_loss()
                steps = torch.autograd.grad(loss, deltas, allow_unused=True)
                deltas = [project(d.detach() + _step_size(cfg) * per_example_normalize(s.float()), cfg.epsilon)
                          if s is not None else d.detach() for d, s in zip(deltas, steps)]
        deltas = [d.detach() for d in deltas]
        with self.perturbed(model, deltas):
            loss = compute_loss()
        (cfg.weight * loss * scale).backward()
        self.last_deltas = deltas
        return float(loss.detach())
