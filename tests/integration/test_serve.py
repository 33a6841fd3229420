"""`leantune serve` through the official `openai` client: two LoRA runs over one tiny llama.

The server runs in this process (uvicorn in a thread, 127.0.0.1, a free port). Each answer
is checked against generation computed directly on the run loaded on its own
(``load_run`` + ``generate_answer``, or plain ``generate``), not against the server's code.
"""
from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
import torch
import uvicorn
from typer.testing import CliRunner

from leantune.cli import app as cli_app
from leantune.evaluation.generate import ANSWER_SETTINGS, _stop_ids, generate_answer
from leantune.export.run_loading import load_run
from leantune.pipeline import train
from leantune.recipe import load_recipe
from leantune.serving.app import Limits, create_app
from leantune.serving.generation import Sampling, complete_text
from leantune.serving.models import load_served
from leantune.serving.specs import read_specs

pytestmark = pytest.mark.usefixtures("torch_single_thread")

KEY = "test-key"
LIMITS = Limits(max_body_bytes=20_000, max_tokens=64, default_max_tokens=16)
QUESTION = [{"role": "user", "content": "Say hello."}]
N_TOKENS = 12


def _run(model_dir: Path, folder: Path, name: str, answer: str, method: str = "lora") -> Path:
    rows = [{"instruction": q, "output": f"{answer} {q}"} for q in ("Say hello.", "Name a colour.", "Count to 3.")]
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 4), encoding="utf-8")
    recipe = load_recipe(raw={
        "model": str(model_dir), "method": method, "stage": "sft",
        "data": {"train": str(data), "format": "alpaca", "eval_split": 0.0, "template": "chatml"},
        "train": {"max_steps": 6, "batch_size": 4, "lr": 2e-2, "precision": "fp32", "max_length": 48, "seed": 0},
        "eval": {"before": False},
        "output": {"dir": str(folder / "runs"), "name": name},
    })
    return Path(train(recipe, progress=False, say=lambda m: None).run_dir)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("serve")
    model_dir = tiny_model_dir("llama")
    return {"alpha": _run(model_dir, folder, "alpha", "Yes!"), "beta": _run(model_dir, folder, "beta", "No...")}


@pytest.fixture(scope="module")
def server(runs):
    """(base URL, served models) of a server for ``alpha=RUN`` and plain ``RUN`` (named beta)."""
    served = load_served(read_specs([f"alpha={runs['alpha']}", str(runs["beta"])]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(create_app(served, KEY, LIMITS), host="127.0.0.1", port=port,
                                       log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1", served
    uv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0], api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def base_name(runs) -> str:
    return load_recipe(runs["alpha"] / "recipe.yaml").model.name


def _chat(client, model: str, **kw):
    return client.chat.completions.create(model=model, messages=QUESTION, max_tokens=N_TOKENS, temperature=0,
                                          extra_body={"repetition_penalty": ANSWER_SETTINGS["repetition_penalty"]},
                                          **kw)


def _post(url: str, body: bytes, key: str = KEY) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_models_lists_every_run_and_the_base(client, base_name):
    assert sorted(m.id for m in client.models.list().data) == sorted(["alpha", "beta", base_name])
    assert {m.id: m.parent for m in client.models.list().data} == {"alpha": base_name, "beta": base_name,
                                                                   base_name: None}
    assert client.models.retrieve("beta").id == "beta"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gamma")


def test_chat_equals_direct_generation_for_each_adapter_and_the_base(client, runs, base_name):
    answers = {}
    for name in ("alpha", "beta", base_name):
        reply = _chat(client, name)
        run = load_run(runs.get(name, runs["alpha"]))  # loaded on its own, with PEFT's from_pretrained
        if name == base_name:
            with run.model.disable_adapter():
                expected = generate_answer(run.model, run.tokenizer, QUESTION, "auto", N_TOKENS)
        else:
            expected = generate_answer(run.model, run.tokenizer, QUESTION, "chatml", N_TOKENS)
        content = reply.choices[0].message.content
        assert content.strip() == expected, (name, content, expected)
        prompt = run.tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
        assert reply.usage.prompt_tokens == len(run.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert 1 <= reply.usage.completion_tokens <= N_TOKENS
        finish = reply.choices[0].finish_reason
        assert finish == "stop" or (finish == "length" and reply.usage.completion_tokens == N_TOKENS), finish
        answers[name] = content
    assert len(set(answers.values())) == 3, f"the adapters do not change the answer: {answers}"


def test_stream_concatenates_to_the_whole_answer(client):
    whole = _chat(client, "beta")
    chunks = list(_chat(client, "beta", stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stop_string_ends_the_answer_before_it(client):
    whole = _chat(client, "alpha").choices[0].message.content
    stop = whole[2:4]  # a stop string of two characters, which spans tokens of the byte-level tokenizer
    assert len(whole) > 4 and stop.strip() == stop, whole
    chunks = list(_chat(client, "alpha", stream=True, stop=[stop]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole[:whole.find(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_completions_equal_plain_greedy_generation(client, runs):
    reply = client.completions.create(model="beta", prompt="Hello", max_tokens=8, temperature=0)
    run = load_run(runs["beta"])
    ids = run.tokenizer("Hello", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = run.model.eval().generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                        max_new_tokens=8, eos_token_id=_stop_ids(run.tokenizer),
                                        pad_token_id=run.tokenizer.pad_token_id)
    assert reply.choices[0].text == run.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert reply.usage.prompt_tokens == ids.shape[1]


def test_seed_makes_sampling_repeatable(client):
    def sample(seed: int) -> str:
        return client.chat.completions.create(model="alpha", messages=QUESTION, max_tokens=N_TOKENS,
                                              temperature=1.0, seed=seed).choices[0].message.content

    assert sample(7) == sample(7)
    assert len({sample(7), sample(8), sample(9)}) > 1, "sampling ignores the seed or the temperature"


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(client, server):
    url = server[0]
    wrong_key = openai.OpenAI(base_url=url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong_key.models.list()
    with pytest.raises(openai.NotFoundError) as err:
        _chat(client, "gamma")
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="alpha", messages=QUESTION, max_tokens=LIMITS.max_tokens + 1)
    assert "max_tokens" in err.value.body["message"]
    cases = {b"{not json": 400,
             json.dumps({"model": "alpha"}).encode(): 400,                                   # no messages
             json.dumps({"model": "alpha", "messages": "hi"}).encode(): 400,                 # wrong type
             json.dumps({"model": "alpha", "messages": QUESTION, "max_tokens": "5"}).encode(): 400,
             json.dumps({"model": "alpha", "messages": QUESTION, "n": 2}).encode(): 400,
             json.dumps({"model": "alpha", "messages": [{"role": "robot", "content": "hi"}]}).encode(): 400,
             json.dumps([QUESTION]).encode(): 400,                                           # not an object
             json.dumps({"model": "alpha", "messages": [{"role": "user", "content": "x" * 30_000}]}).encode(): 413}
    for body, status in cases.items():
        code, answer = _post(f"{url}/chat/completions", body)
        assert code == status, (body[:60], code, answer)
        assert set(answer["error"]) == {"message", "type", "param", "code"}, answer
    code, answer = _post(f"{url}/chat/completions", json.dumps({"model": "alpha", "messages": QUESTION}).encode(),
                         key="wrong")
    assert code == 401 and answer["error"]["code"] == "invalid_api_key"
    assert _chat(client, "alpha").choices[0].message.content


def test_a_failing_generation_is_a_500_and_the_server_keeps_serving(client, server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(server[1].model, "generate", broken)
    with pytest.raises(openai.InternalServerError) as err:
        _chat(client, "alpha")
    assert "out of memory (simulated)" in err.value.body["message"]
    monkeypatch.undo()
    assert _chat(client, "beta").choices[0].message.content


@pytest.fixture(scope="module")
def frozen(tiny_model_dir, tmp_path_factory) -> Path:
    """A run whose method changes the base weights (no PEFT adapter)."""
    return _run(tiny_model_dir("llama"), tmp_path_factory.mktemp("frozen"), "frozen", "Maybe.", method="freeze")


def test_a_lone_non_peft_run_is_served_alone(frozen):
    served = load_served(read_specs([str(frozen)]))
    assert list(served.entries) == ["frozen"]
    run = load_run(frozen)
    ids = run.tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    ids = run.tokenizer(ids, add_special_tokens=False)["input_ids"]
    outcome = complete_text(served, "frozen", ids, Sampling(N_TOKENS, temperature=0, repetition_penalty=1.1))
    assert outcome.text.strip() == generate_answer(run.model, run.tokenizer, QUESTION, "chatml", N_TOKENS)


def test_cli_refuses_bad_runs_in_one_paragraph(runs, frozen, tmp_path):
    cases = [([str(tmp_path / "missing")], "no such run directory"),
             ([f"same={runs['alpha']}", f"same={runs['beta']}"], "two runs are named 'same'"),
             ([str(runs["alpha"]), str(frozen)], "cannot share one base model")]
    for args, said in cases:
        result = CliRunner().invoke(cli_app, ["serve", *args])
        assert result.exit_code == 2, result.output
        assert said in result.output and "Traceback" not in result.output, result.output
