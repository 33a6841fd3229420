"""AdaLoRA through PEFT: LoRA in SVD form, W' = W + P Λ Q, whose rank budget is moved during
training to the weight matrices that matter most.

Zhang et al. 2023, AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning
(arXiv:2303.10512). Every target starts with rank init_r (P ∈ R^{out×r}, Λ = diag(E),
Q ∈ R^{r×in}, E = 0 so the model starts unchanged); importance scores (smoothed |w·∂L/∂w|,
EMA β1 / uncertainty β2) decide which singular values to zero, on a cubic schedule from
the total budget init_r·n down to target_r·n between steps tinit and T − tfinal, every
deltaT steps. An orthogonality penalty keeps P and Q near-orthogonal.

The schedule needs the run's total optimizer steps T (``set_total_steps``, called by the
pipeline before ``apply``) and ``update_and_allocate(step)`` after each optimizer step
while the gradients are still present (``after_optimizer_step``: the engine calls it after
``optimizer.step()`` and before ``zero_grad``).
"""
from __future__ import annotations

from pathlib import Path

from peft import AdaLoraConfig
from torch import nn

from ..errors import MethodError
from ..recipe.method_settings import AdaLoraSettings, MethodConfig
from .peft_backed import TASK_TYPES, PeftMethod, fan_in_fan_out
from .registry import register
from .targets import resolve_targets


@register
class AdaLoRA(PeftMethod):
    name = "adalora"
    Config = AdaLoraSettings

    def __init__(self, config: MethodConfig):
        super().__init__(config)
        self.total_steps: int | None = None

    def set_total_steps(self, n: int) -> None:
        self.total_steps = int(n)

    def peft_config(self, model: nn.Module, head: str) -> AdaLoraConfig:
        cfg = self.config
        total = self.total_steps
        if total is None:
            raise MethodError("method 'adalora' needs the run's total optimizer steps before it is applied "
                              "(Method.set_total_steps; the training pipeline does this)")
        if cfg.tinit + cfg.tfinal >= total:
            raise MethodError(
                f"method 'adalora': tinit ({cfg.tinit}) + tfinal ({cfg.tfinal}) must be less than the run's "
                f"{total} optimizer steps, or no step is left to reallocate the rank budget; lower them or "
                f"train longer (train.max_steps / train.epochs)"
            )
        return AdaLoraConfig(
            init_r=cfg.init_r, target_r=cfg.target_r, tinit=cfg.tinit, tfinal=cfg.tfinal, deltaT=cfg.deltaT,
            beta1=cfg.beta1, beta2=cfg.beta2, orth_reg_weight=cfg.orth_reg_weight, total_step=total,
            lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
            target_modules=resolve_targets(model, cfg.targets, self.name), task_type=TASK_TYPES.get(head),
            fan_in_fan_out=fan_in_fan_out(model),
        )

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        while hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP
            model = model.module
        tuner = model.base_model
        name = tuner.trainable_adapter_name
        cfg, allocator = tuner.peft_config[name], tuner.rankallocator
        final = cfg.total_step - cfg.tfinal
        # After --resume the allocator's state is gone (checkpoints hold the weights only):
        if step == final and not allocator.exp_avg_ipt:  # allocating now needs importance scores
            allocator.update_ipt(tuner.model)
        if step > final and cfg.rank_pattern is None:  # ranks already fixed: the zeroed values say which
            cfg.rank_pattern = {n: (p != 0).view(-1).tolist() for n, p in tuner.model.named_parameters()
                                if f"lora_E.{name}" in n}
        tuner.update_and_allocate(step)

    def load(self, model: nn.Module, path: Path, head: str) -> nn.Module:
        model = super().load(model, path, head)
        # PEFT 0.21 names the trainable adapter only in training mode, yet its forward reads the
        # name to add the orthogonality penalty whenever labels are given: name it here.
        if not hasattr(model.base_model, "trainable_adapter_name"):
            model.base_model.trainable_adapter_name = model.active_adapter
        return model
