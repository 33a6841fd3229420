"""Chat tab: one run, or several side by side with the base model, each in the chat template
it was trained with; greedy or sampled decoding."""
from __future__ import annotations

import gradio as gr

from ..errors import LeantuneError
from ..evaluation.generate import ANSWER_SETTINGS
from ..serving.generation import Sampling
from .board import Board

COLUMNS = 3  # answers side by side


def sampling(max_tokens: int, temperature: float, top_p: float, repetition_penalty: float) -> Sampling:
    return Sampling(max_tokens=int(max_tokens), temperature=float(temperature), top_p=float(top_p),
                    repetition_penalty=float(repetition_penalty), seed=0)


def send(board: Board, runs: list[str], with_base: bool, message: str, histories: list[list[dict]],
         settings: Sampling) -> tuple[list[str], list[list[dict]]]:
    """Each model's answer to ``message`` after its own conversation so far: (names, new histories)."""
    if not (message or "").strip():
        raise LeantuneError("chat: write a message first")
    run_dirs = [board.workspace.path(r, must_exist=True, what="run") for r in runs or []]
    names = board.chat.load(run_dirs, with_base)[:COLUMNS]
    out = []
    for i, name in enumerate(names):
        history = [*(histories[i] if i < len(histories) else []), {"role": "user", "content": message}]
        answer = board.chat.answer(name, history, settings)
        out.append([*history, {"role": "assistant", "content": answer}])
    return names, out


def build(board: Board) -> gr.CheckboxGroup:
    with gr.Row():
        runs = gr.CheckboxGroup(board.run_choices(), label=f"Runs (up to {COLUMNS} answers side by side)",
                                elem_id="chat-runs")
        with_base = gr.Checkbox(False, label="Base model too", elem_id="chat-base")
    with gr.Row():
        max_tokens = gr.Slider(8, 1024, value=128, step=8, label="Max new tokens", elem_id="chat-max-tokens")
        temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0: greedy)")
        top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p")
        penalty = gr.Slider(1, 2, value=ANSWER_SETTINGS.get("repetition_penalty", 1.0), step=0.05,
                            label="Repetition penalty")
    with gr.Row():
        boxes = [gr.Chatbot(label=f"model {i + 1}", visible=i == 0, elem_id=f"chat-answers-{i}")
                 for i in range(COLUMNS)]
    message = gr.Textbox(label="Message", placeholder="Ask something and press Enter", elem_id="chat-message")
    with gr.Row():
        go = gr.Button("Send", variant="primary", elem_id="chat-send")
        clear = gr.Button("Clear", elem_id="chat-clear")
    error = gr.Markdown(elem_id="chat-error")
    histories = gr.State([])

    def on_send(chosen, base, text, past, n, t, p, r):
        try:
            names, new = send(board, chosen, base, text, past, sampling(n, t, p, r))
        except LeantuneError as exc:
            return [gr.update()] * COLUMNS + [past, gr.update(), f"**error:** {exc}"]
        shown = [gr.update(value=h, label=name, visible=True) for name, h in zip(names, new)]
        hidden = [gr.update(visible=False)] * (COLUMNS - len(shown))
        return shown + hidden + [new, "", ""]

    inputs = [runs, with_base, message, histories, max_tokens, temperature, top_p, penalty]
    outputs = [*boxes, histories, message, error]
    go.click(on_send, inputs, outputs)
    message.submit(on_send, inputs, outputs)
    clear.click(lambda: [gr.update(value=[])] * COLUMNS + [[]], None, [*boxes, histories])
    runs.change(lambda: [gr.update(value=[])] * COLUMNS + [[]], None, [*boxes, histories])
    return runs
