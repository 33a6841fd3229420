"""An Ollama ``Modelfile`` for an exported GGUF file: the chat template in Ollama's Go-template
syntax, its stop tokens, and the decoding leantune reports with (``ANSWER_SETTINGS``).

Syntax: https://github.com/ollama/ollama/blob/main/docs/modelfile.md. The Go templates below render
what the Jinja templates of data/templates.py render with ``add_generation_prompt=True``.
"""
from __future__ import annotations

from ..data.templates import CHATML, PLAIN, render
from ..evaluation.generate import ANSWER_SETTINGS

CHATML_GO = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
PLAIN_GO = (
    "{{- range .Messages }}"
    '{{ if eq .Role "system" }}{{ .Content }}\n\n'
    '{{ else if eq .Role "user" }}### Question:\n{{ .Content }}\n\n'
    "{{ else }}### Answer:\n{{ .Content }}EOS_TOKEN\n\n{{ end }}"
    "{{ end }}### Answer:\n"
)
# conversations on which a model's own Jinja template must render exactly as a named one
PROBES = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}],
]


def _renders_like(tokenizer, template: str, reference: str) -> bool:
    if template == reference:
        return True
    try:
        return all(render(tokenizer, p, template, True) == render(tokenizer, p, reference, True) for p in PROBES)
    except Exception:  # noqa: BLE001 - a template that fails on a probe is simply not this one
        return False


def go_template(tokenizer, template: str) -> tuple[str | None, list[str]]:
    """The Go template equivalent to ``template`` and its stop strings; None when the Jinja has no
    known equivalent."""
    eos = tokenizer.eos_token
    if _renders_like(tokenizer, template, CHATML):
        return CHATML_GO, list(dict.fromkeys(t for t in ("<|im_end|>", eos) if t))
    if eos and _renders_like(tokenizer, template, PLAIN):
        return PLAIN_GO.replace("EOS_TOKEN", eos), [eos, "### Question:"]
    stops = [t for t in (eos, "<|im_end|>") if t and t in tokenizer.get_vocab()]
    return None, list(dict.fromkeys(stops))


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile_text(gguf_name: str, tokenizer, template: str, context_length: int) -> tuple[str, list[str]]:
    """The Modelfile's text and notes for the user."""
    go, stops = go_template(tokenizer, template)
    lines = [f"FROM ./{gguf_name}", ""]
    notes = []
    if go is None:
        lines += ["# The run's chat template is Jinja without a Go equivalent here; Ollama derives its",
                  "# template from the file's tokenizer.chat_template. Check it with `ollama show --template`.", ""]
        notes.append("the chat template has no Go-template equivalent in leantune (ChatML and plain do); the "
                     "Modelfile leaves TEMPLATE out, so Ollama derives one from the GGUF's chat template")
    else:
        lines += [f'TEMPLATE """{go}"""', ""]
    lines += [f"PARAMETER stop {_quoted(s)}" for s in stops]
    lines += ["PARAMETER temperature 0",  # greedy, as ANSWER_SETTINGS (do_sample=False)
              f"PARAMETER repeat_penalty {ANSWER_SETTINGS['repetition_penalty']}",
              f"PARAMETER num_ctx {context_length}", ""]
    return "\n".join(lines), notes
