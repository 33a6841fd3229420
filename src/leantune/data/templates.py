"""Chat templates: the model's own (Jinja, from its tokenizer) or a named fallback."""
from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from ..errors import RecipeError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

PLAIN = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Question:\n' + message['content'] + '\n\n' }}"
    "{% else %}{{ '### Answer:\n' + message['content'] + eos_token + '\n\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Answer:\n' }}{% endif %}"
)

NAMED = {"chatml": CHATML, "plain": PLAIN}


def resolve_template(tokenizer: PreTrainedTokenizerBase, name: str = "auto") -> str:
    """``auto``: the tokenizer's own chat template, else ChatML; ``model``: the model's, required."""
    if name == "auto":
        return tokenizer.chat_template or CHATML
    if name == "model":
        if not tokenizer.chat_template:
            raise RecipeError("data.template: model — this tokenizer has no chat template; use chatml or plain")
        return tokenizer.chat_template
    if name not in NAMED:
        raise RecipeError(f"data.template: unknown template {name!r}; one of auto, model, {', '.join(NAMED)}")
    return NAMED[name]


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], template: str,
           add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )
