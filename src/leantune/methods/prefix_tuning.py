"""Prefix tuning through PEFT: trainable key/value prefixes in every attention layer,
produced by a reparameterisation MLP during training.

Li & Liang 2021, Prefix-Tuning: Optimizing Continuous Prompts for Generation (arXiv:2101.00190).
Each layer attends to n extra key/value vectors P = MLP(E) (E ∈ R^{n×d}, MLP: d → h → 2·L·d,
tanh); the sequence itself keeps its length. The MLP only stabilises training: PEFT's
saved adapter holds the MLP weights, and generation runs through the same cache path.
"""
from __future__ import annotations

from peft import PeftConfig, PrefixTuningConfig
from torch import nn

from ..errors import MethodError
from ..recipe.method_settings import PrefixTuningSettings
from .peft_backed import TASK_TYPES
from .prompt_tuning import PromptLearning, backbone_takes_cache
from .registry import register


def check_prefix_support(model: nn.Module, method: str) -> None:
    """Prefixes travel as ``past_key_values``: a model that takes no cache cannot receive them."""
    if not backbone_takes_cache(model):
        raise MethodError(
            f"method '{method}': {type(model).__name__} accepts no past_key_values, where PEFT places the "
            f"prefix keys/values; use prompt_tuning or p_tuning (input-level prompts) instead"
        )


@register
class PrefixTuning(PromptLearning):
    name = "prefix_tuning"
    Config = PrefixTuningSettings

    def peft_config(self, model: nn.Module, head: str) -> PeftConfig:
        check_prefix_support(model, self.name)
        return PrefixTuningConfig(task_type=TASK_TYPES[head], num_virtual_tokens=self.config.num_virtual_tokens,
                                  prefix_projection=True, encoder_hidden_size=self.config.encoder_hidden_size)
