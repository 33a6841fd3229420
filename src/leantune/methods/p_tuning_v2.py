"""P-tuning v2 ("deep prompt tuning") through PEFT: trainable prompts in every layer, no
reparameterisation, typically with a classification head on top.

Liu et al. 2022, P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning Universally
Across Scales and Tasks (arXiv:2110.07602). Implemented as PEFT prefix tuning with
``prefix_projection=False``: each layer attends to n free key/value vectors
(n·2·L·d parameters in one embedding table), and for NLU the task head ([CLS] linear
classifier) trains alongside.

PEFT draws the prompts from N(0, 1), far from any real key or value: on generation the
model starts much worse than without them (a first loss of ~10 against ~3 on SmolLM2).
``init: text`` starts them instead at the keys and values the frozen model computes for
``init_text`` (PEFT's ``initialize_kv_prefix_from_text``, as in Eyuboglu et al. 2025,
Cartridges, arXiv:2506.06266), so the model starts as if that text preceded every input.
"""
from __future__ import annotations

import torch
from peft import PeftConfig, PrefixTuningConfig, initialize_kv_prefix_from_text
from torch import nn

from ..errors import MethodError
from ..recipe.method_settings import PTuningV2Settings
from .peft_backed import TASK_TYPES
from .prefix_tuning import check_prefix_support
from .prompt_tuning import PromptLearning, model_tokenizer
from .registry import register


@register
class PTuningV2(PromptLearning):
    name = "p_tuning_v2"
    Config = PTuningV2Settings

    def peft_config(self, model: nn.Module, head: str) -> PeftConfig:
        check_prefix_support(model, self.name)
        return PrefixTuningConfig(task_type=TASK_TYPES[head], num_virtual_tokens=self.config.num_virtual_tokens,
                                  prefix_projection=False)

    def apply(self, model: nn.Module, head: str) -> nn.Module:
        if self.config.init == "text" and head != "causal_lm":
            raise MethodError(f"method '{self.name}': init: text is defined for causal LMs (the prompts start "
                              f"at the model's own key/value cache of the text), not a {head} head; "
                              f"use init: random")
        _, tokenizer = model_tokenizer(model, self.name) if self.config.init == "text" else (None, None)
        model = super().apply(model, head)
        if tokenizer is not None:
            self._init_from_text(model, tokenizer)
        return model

    def _init_from_text(self, model: nn.Module, tokenizer) -> None:
        n, text = self.config.num_virtual_tokens, self.config.init_text
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise MethodError(f"method '{self.name}': init_text {text!r} has no tokens")
        repeated = " ".join([text] * -(-n // len(ids)))  # at least n tokens
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                initialize_kv_prefix_from_text(model, tokenizer, text=repeated, num_virtual_tokens=n,
                                               use_chat_template=False)
        finally:
            model.train(was_training)
