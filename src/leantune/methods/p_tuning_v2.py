"""P-tuning v2 ("deep prompt tuning") through PEFT: trainable prompts in every layer, no
reparameterisation, typically with a classification head on top.

Liu et al. 2022, P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning Universally
Across Scales and Tasks (arXiv:2110.07602). Implemented as PEFT prefix tuning with
``prefix_projection=False``: each layer attends to n free key/value vectors
(n·2·L·d parameters in one embedding table), and for NLU the task head ([CLS] linear
classifier) trains alongside.
"""
from __future__ import annotations

from peft import PeftConfig, PrefixTuningConfig
from torch import nn

from .lora import TASK_TYPES
from .prefix_tuning import check_prefix_support
from .prompt_tuning import PromptCount, PromptLearning
from .registry import register


@register
class PTuningV2(PromptLearning):
    name = "p_tuning_v2"
    architectures = "causal LM, seq2seq, classification; not masked LM"
    paper = ("Liu et al. 2022, P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning Universally "
             "Across Scales and Tasks (arXiv:2110.07602)")
    summary = ("Deep prompts in every layer without an MLP; the prompt method for NLU "
               "(classification with a task head), close to fine-tuning even on small models.")

    class Config(PromptCount):
        pass

    def peft_config(self, model: nn.Module, head: str) -> PeftConfig:
        check_prefix_support(model, self.name)
        return PrefixTuningConfig(task_type=TASK_TYPES[head], num_virtual_tokens=self.config.num_virtual_tokens,
                                  prefix_projection=False)
