"""`leantune data synth` end to end: an OpenAI-compatible endpoint (a fake one on 127.0.0.1) and a
local tiny model as teachers; the key stays out of every file; a resumed run only appends."""
from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from leantune.cli import app
from leantune.data.formats import load_examples
from leantune.data.selfinstruct import Task, build_prompt, load_tasks, sample_prompt_tasks
from leantune.models.loading import load_model, load_tokenizer

pytestmark = pytest.mark.usefixtures("torch_single_thread")
SEEDS = Path(__file__).resolve().parents[2] / "src" / "leantune" / "resources" / "demo" / "shell_help_train.jsonl"
SECRET = "sk-test-5e8f1c0d9a7b"
ANSWERS = [
    # an answer continuing the prompt's last "N. Instruction:"
    " Explain what the tail command prints by default.\n5. Input:\n<noinput>\n5. Output:\nThe last ten lines.\n"
    "###\n6. Instruction: Describe the picture of a terminal.\n6. Input:\n<noinput>\n6. Output:\nA black window.\n"
    "###\n7. Instruction: How can I see how full my disks are?\n7. Input:\n<noinput>\n7. Output:\n`df -h`\n"
    "###\n8. Instruction: Count the words in the sentence below.\n8. Input:\nto be or not to be\n8. Output:\n6\n"
    "###\n9. Instruction: Name",
    # a chat model's answer
    "Here you go:\n5. Instruction: Which command shows the current date and time?\n5. Input:\n<noinput>\n"
    "5. Output:\n`date`\n###\n6. Instruction: Sort the lines of a list alphabetically in the shell.\n6. Input:\n"
    "<noinput>\n6. Output:\n`sort`\n###\n7. Instruction: Tell me which command prints the working directory.\n"
    "7. Output:\n`pwd`",
]


class FakeEndpoint(BaseHTTPRequestHandler):
    calls: list[dict] = []

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's name
        self.calls.append({"path": self.path, "headers": dict(self.headers)})
        self._send({"object": "list", "data": [{"id": "fake-teacher", "object": "model"}]})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
        answer = ANSWERS[(len([c for c in self.calls if "body" in c]) - 1) % len(ANSWERS)]
        self._send({"id": "x", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                 "finish_reason": "stop"}]})

    def log_message(self, *args):
        pass


@pytest.fixture()
def endpoint():
    FakeEndpoint.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", FakeEndpoint.calls
    server.shutdown()
    server.server_close()


def _synth(*args: str, env: dict | None = None):
    return CliRunner().invoke(app, ["data", "synth", str(SEEDS), *args], env=env)


def test_endpoint_teacher_key_only_in_header_and_resume_appends(endpoint, tmp_path):
    url, calls = endpoint
    out = tmp_path / "synth.jsonl"
    result = _synth("--teacher", url, "-n", "2", "--out", str(out), "--api-key-env", "SYNTH_TEST_KEY",
                    env={"SYNTH_TEST_KEY": SECRET})
    assert result.exit_code == 0, result.output
    assert [c["path"] for c in calls] == ["/v1/models", "/v1/chat/completions"]
    assert all(c["headers"]["Authorization"] == f"Bearer {SECRET}" for c in calls)
    body = calls[1]["body"]
    assert body["model"] == "fake-teacher" and SECRET not in json.dumps(body)
    assert body["messages"][0]["content"].endswith("Instruction:")
    first = out.read_bytes()
    rows = [json.loads(line) for line in first.decode().splitlines()]
    assert rows == [
        {"instruction": "Explain what the tail command prints by default.", "input": "",
         "output": "The last ten lines."},
        {"instruction": "Count the words in the sentence below.", "input": "to be or not to be", "output": "6"}]
    report = json.loads((tmp_path / "synth.jsonl.report.json").read_text())
    assert report["kept"] == 2 and report["dropped"] == {"keyword": 1, "similar (ROUGE-L)": 1, "missing output": 1}
    assert report["dropped_examples"]["similar (ROUGE-L)"][0]["instruction"] == "How can I see how full my disks are?"

    # resume to 4: the first bytes stay, rows are appended, the first answer's tasks are now too similar
    result = _synth("--teacher", url, "-n", "4", "--out", str(out), "--api-key-env", "SYNTH_TEST_KEY",
                    "--max-prompts", "3", env={"SYNTH_TEST_KEY": SECRET})
    assert result.exit_code == 0, result.output
    assert "continuing 2" in result.output
    both = out.read_bytes()
    assert both.startswith(first) and len(both) > len(first)
    added = [json.loads(line)["instruction"] for line in both[len(first):].decode().splitlines()]
    assert added == ["Which command shows the current date and time?",
                     "Sort the lines of a list alphabetically in the shell."]
    report = json.loads((tmp_path / "synth.jsonl.report.json").read_text())
    assert (report["resumed_from"], report["kept"], report["total"], report["prompts"]) == (2, 2, 4, 1)
    assert len(load_examples(out, None).examples) == 4
    for path in tmp_path.iterdir():
        assert SECRET not in path.read_text(encoding="utf-8", errors="replace")


def test_missing_key_variable_and_cut_line_are_one_paragraph(endpoint, tmp_path):
    url, calls = endpoint
    out = tmp_path / "synth.jsonl"
    result = _synth("--teacher", url, "-n", "1", "--out", str(out), "--api-key-env", "SYNTH_UNSET_KEY",
                    env={"SYNTH_UNSET_KEY": ""})
    assert result.exit_code == 2 and "SYNTH_UNSET_KEY is not set" in result.output and not calls
    out.write_text('{"instruction": "Explain pipes.", "input": "", "output": "x"}\n{"instr', encoding="utf-8")
    before = out.read_bytes()
    result = _synth("--teacher", url, "-n", "3", "--out", str(out))
    assert result.exit_code == 2 and "synth.jsonl:2: the last line has no newline" in " ".join(result.output.split())
    assert out.read_bytes() == before and "Traceback" not in result.output


def test_local_tiny_model_teacher_writes_a_loadable_file(tiny_model_dir, tmp_path):
    """A tiny llama taught one continuation (a few Adam steps) is a real local teacher: greedy decoding
    writes one task, then the same task again, which the ROUGE-L filter drops. Its context is set to
    96 tokens, so that with --max-new-tokens 64 the teacher sees the prompt's last 32, as in training."""
    path = tiny_model_dir("llama")
    tokenizer, model = load_tokenizer(path), load_model(path, "causal_lm", "float32")
    target = " List two prime numbers.\nOutput: 2 and 3.<|im_end|>"
    answer = tokenizer(target, add_special_tokens=False, return_tensors="pt")["input_ids"]
    model.config.max_position_embeddings = 96
    keep = 96 - 64  # what LocalTeacher keeps of a prompt with --max-new-tokens 64
    seeds, rng = load_tasks(SEEDS), random.Random(0)
    batch = []
    kept = [Task("List two prime numbers.", "", "2 and 3.")]  # in the prompts once it is kept
    for shown in ([], [], [], kept, kept, kept):
        prompt = build_prompt(sample_prompt_tasks(seeds, shown, rng))
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"][:, -keep:]
        batch.append(torch.cat([ids, answer], 1))
    inputs = torch.cat(batch)
    labels = inputs.clone()
    labels[:, :keep] = -100
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(200):
        loss = model(input_ids=inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    teacher_dir = tmp_path / "teacher"
    model.save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)

    out = tmp_path / "local.jsonl"
    result = _synth("--teacher", str(teacher_dir), "-n", "2", "--out", str(out), "--max-prompts", "2",
                    "--temperature", "0", "--max-new-tokens", "64", "--format", "messages")
    assert result.exit_code == 0, result.output
    loaded = load_examples(out, None)
    assert loaded.format == "messages"
    assert [m["content"] for m in loaded.examples[0]["messages"]] == ["List two prime numbers.", "2 and 3."]
    report = json.loads((tmp_path / "local.jsonl.report.json").read_text())
    assert (report["kept"], report["prompts"], report["dropped"]) == (1, 2, {"similar (ROUGE-L)": 1})
