"""`leantune judge` end to end: two short LoRA runs on the tiny llama answer six prompts; a scripted
OpenAI-compatible judge on 127.0.0.1 decides by a rule, so every outcome is known from the answers
files: order swapping, ties from a position-biased judge, an unreadable verdict counted apart,
resume after a failing endpoint, and the refusal of a folder that compares something else."""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

import leantune.workflows.judge as workflow
from leantune.cli import app
from leantune.export.run_loading import load_run
from leantune.pipeline import train
from leantune.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("torch_single_thread")
SECRET = "sk-judge-test-2f9a"
QUESTIONS = ["Say hello.", "Name a colour.", "Count to 3.", "Spell cat.", "Name a fruit.", "Say bye."]
GARBAGE = "Name a fruit."  # the judge answers this one without a verdict
ANSWER = re.compile(r"\[The Start of Assistant ([AB])'s Answer\]\n(.*?)\n\[The End of Assistant \1's Answer\]", re.S)


class FakeJudge(BaseHTTPRequestHandler):
    """Rules: ``alphabetical`` prefers the answer that sorts first (an unbiased judge), ``first``
    always prefers the first-shown one; ``fail_after`` posts answer HTTP 500 after that many."""
    calls: list[dict] = []
    rule = "alphabetical"
    fail_after: int | None = None

    def _send(self, body: dict, code: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's name
        self.calls.append({"path": self.path, "headers": dict(self.headers)})
        self._send({"object": "list", "data": [{"id": "fake-judge", "object": "model"}]})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        posts = [c for c in self.calls if "body" in c]
        if self.fail_after is not None and len(posts) >= self.fail_after:
            self._send({"error": {"message": "overloaded"}}, 500)
            return
        self.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
        prompt = body["messages"][0]["content"]
        shown = dict(ANSWER.findall(prompt))
        if f"[User Question]\n{GARBAGE}\n" in prompt:
            reply = "Both answers are interesting."
        elif self.rule == "first" or shown["A"] < shown["B"]:
            reply = "Assistant A is clearer. [[A]]"
        else:
            reply = "Assistant B is clearer. [[B]]" if shown["B"] < shown["A"] else "Same. [[C]]"
        self._send({"id": "x", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                 "finish_reason": "stop"}]})

    def log_message(self, *args):
        pass


@pytest.fixture()
def endpoint():
    FakeJudge.calls, FakeJudge.rule, FakeJudge.fail_after = [], "alphabetical", None
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _run(model_dir: Path, folder: Path, name: str, answer: str) -> Path:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"instruction": q, "output": f"{answer} {q}"}) + "\n"
                            for q in QUESTIONS * 2), encoding="utf-8")
    recipe = load_recipe(raw={
        "model": str(model_dir), "method": "lora", "stage": "sft",
        "data": {"train": str(data), "format": "alpaca", "eval_split": 0.0, "template": "chatml"},
        "train": {"max_steps": 4, "batch_size": 4, "lr": 2e-2, "precision": "fp32", "max_length": 48, "seed": 0},
        "eval": {"before": False},
        "output": {"dir": str(folder / "runs"), "name": name},
    })
    return Path(train(recipe, progress=False, say=lambda m: None).run_dir)


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("judge")
    model_dir = tiny_model_dir("llama")
    data = folder / "prompts.jsonl"
    data.write_text("".join(json.dumps({"instruction": q, "output": "ok"}) + "\n" for q in QUESTIONS),
                    encoding="utf-8")
    return {"a": _run(model_dir, folder, "alpha", "Yes!"), "b": _run(model_dir, folder, "beta", "No..."),
            "data": data, "judge": model_dir}


def _judge(setup, url, out: Path, *extra: str, env: dict | None = None):
    return CliRunner().invoke(app, ["judge", str(setup["a"]), str(setup["b"]), "--data", str(setup["data"]),
                                    "--judge", url, "--out", str(out), "--max-new-tokens", "12", *extra], env=env)


def _answers(out: Path, side: str) -> dict[str, str]:
    rows = [json.loads(line) for line in (out / f"answers_{side}.jsonl").read_text().splitlines()]
    return {r["prompt"][-1]["content"]: r["answer"] for r in rows}


def test_unbiased_judge_wins_follow_the_rule_in_both_orders(setup, endpoint, tmp_path):
    out = tmp_path / "j"
    result = _judge(setup, endpoint, out, "--yes", "--api-key-env", "JUDGE_KEY", env={"JUDGE_KEY": SECRET})
    assert result.exit_code == 0, result.output
    assert "judge calls: 12 (two per question)" in result.output
    a, b = _answers(out, "a"), _answers(out, "b")
    assert set(a) == set(QUESTIONS) and a != b
    posts = [c for c in FakeJudge.calls if "body" in c]
    assert len(posts) == 2 * len(QUESTIONS)
    assert all(c["headers"]["Authorization"] == f"Bearer {SECRET}" for c in FakeJudge.calls)
    for q in QUESTIONS:  # each question shown twice, each run's answer first once
        shown = [dict(ANSWER.findall(c["body"]["messages"][0]["content"])) for c in posts
                 if f"[User Question]\n{q}\n" in c["body"]["messages"][0]["content"]]
        assert shown == [{"A": a[q], "B": b[q]}, {"A": b[q], "B": a[q]}]
        assert all(c["body"]["temperature"] == 0.0 for c in posts)
    expected = {"A": 0, "B": 0, "tie": 0}
    for q in QUESTIONS:
        if q != GARBAGE:
            expected["A" if a[q] < b[q] else "B" if b[q] < a[q] else "tie"] += 1
    assert expected["A"] and expected["B"]  # the two runs' answers give both kinds of win
    s = json.loads((out / "summary.json").read_text())
    assert (s["wins_a"], s["wins_b"], s["ties"], s["unparseable"]) == (expected["A"], expected["B"], expected["tie"], 1)
    garbage_line = QUESTIONS.index(GARBAGE) + 1
    assert s["unparseable_lines"] == [garbage_line] and s["call_unparseable"] == 2
    assert s["win_rate_a"] == pytest.approx((expected["A"] + expected["tie"] / 2) / 5)
    low, high = s["interval_95"]
    assert 0 <= low <= s["win_rate_a"] <= high <= 1
    assert s["consistent_questions"] == 5 and s["first_shown_share"] == pytest.approx(0.5)
    rows = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == list(range(1, 7))
    assert rows[garbage_line - 1]["orders"][0] == {"first": "A", "reply": "Both answers are interesting.",
                                                   "verdict": None, "reason": "Both answers are interesting."}
    assert "Unparseable verdicts at data lines: 5" in (out / "summary.md").read_text()
    assert all(SECRET not in p.read_text() for p in out.iterdir())


def test_position_biased_judge_turns_into_ties(setup, endpoint, tmp_path):
    FakeJudge.rule = "first"
    out = tmp_path / "j"
    assert _judge(setup, endpoint, out, "--yes").exit_code == 0
    s = json.loads((out / "summary.json").read_text())
    assert (s["wins_a"], s["wins_b"], s["ties"], s["unparseable"]) == (0, 0, 5, 1)
    assert s["win_rate_a"] == 0.5 and s["interval_95"] == [0.5, 0.5]
    assert s["first_shown_share"] == 1.0 and s["consistent_questions"] == 0 and s["position_bias_p"] < 0.01


def test_resume_judges_only_the_rest_and_a_changed_comparison_is_refused(setup, endpoint, tmp_path, monkeypatch):
    out = tmp_path / "j"
    FakeJudge.fail_after = 4  # two questions, then the endpoint fails
    result = _judge(setup, endpoint, out, "--yes")
    assert result.exit_code == 2 and "HTTP 500" in result.output and "Traceback" not in result.output
    assert len((out / "judgments.jsonl").read_text().splitlines()) == 2
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    monkeypatch.setattr(workflow, "load_run", lambda *a, **k: pytest.fail("cached answers were generated again"))
    FakeJudge.calls, FakeJudge.fail_after = [], None
    result = _judge(setup, endpoint, out, "--yes")
    assert result.exit_code == 0, result.output
    assert "continuing" in result.output
    assert len([c for c in FakeJudge.calls if "body" in c]) == 2 * (len(QUESTIONS) - 2)
    after = (out / "judgments.jsonl").read_bytes()
    assert after.startswith(before["judgments.jsonl"]) and len(after.splitlines()) == len(QUESTIONS)
    assert (out / "answers_a.jsonl").read_bytes() == before["answers_a.jsonl"]
    assert json.loads((out / "summary.json").read_text())["questions"] == len(QUESTIONS)

    FakeJudge.calls = []  # complete: a third call judges nothing
    assert _judge(setup, endpoint, out, "--yes").exit_code == 0 and FakeJudge.calls == []

    other = tmp_path / "other.jsonl"
    other.write_text(setup["data"].read_text().replace("Say bye.", "Say goodbye."), encoding="utf-8")
    kept = {p.name: p.read_bytes() for p in out.iterdir()}
    for args in (["--data", str(other)], ["--reference"]):
        result = CliRunner().invoke(app, ["judge", str(setup["a"]), str(setup["b"]), "--data", str(setup["data"]),
                                          "--judge", endpoint, "--out", str(out), "--max-new-tokens", "12", "--yes",
                                          *args])
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and "judges another comparison" in text, result.output
        assert ("data_sha256: was" in text) == (args[0] == "--data") and "Traceback" not in text
    assert {p.name: p.read_bytes() for p in out.iterdir()} == kept and FakeJudge.calls == []


def test_a_run_against_itself_answers_once_and_ties(setup, endpoint, tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(workflow, "load_run", lambda *a, **k: loads.append(a) or load_run(*a, **k))
    out = tmp_path / "j"
    result = CliRunner().invoke(app, ["judge", str(setup["a"]), str(setup["a"]), "--data", str(setup["data"]),
                                      "--judge", endpoint, "--out", str(out), "--max", "2", "--yes",
                                      "--max-new-tokens", "12"])
    assert result.exit_code == 0, result.output
    assert len(loads) == 1 and not (out / "answers_b.jsonl").exists()
    s = json.loads((out / "summary.json").read_text())
    assert (s["wins_a"], s["wins_b"], s["ties"], s["call_ties"]) == (0, 0, 2, 4)


def test_endpoint_without_terminal_needs_yes(setup, endpoint, tmp_path):
    result = _judge(setup, endpoint, tmp_path / "j", "--max", "2")
    assert result.exit_code == 2 and "pass --yes" in " ".join(result.output.split())
    assert not [c for c in FakeJudge.calls if "body" in c]


def test_local_judge_replies_are_read_and_unreadable_ones_reported(setup, tmp_path):
    """The untrained tiny llama as a local judge: its replies carry no verdict, so every question
    is unparseable, reported as such, and no win rate is claimed."""
    out = tmp_path / "j"
    result = _judge(setup, str(setup["judge"]), out, "--max", "2", "--judge-max-tokens", "8")
    assert result.exit_code == 0, result.output
    assert re.search(r"judge calls: 4 \(two per question\), [\d,]+ prompt tokens, at most 32", result.output)
    s = json.loads((out / "summary.json").read_text())
    assert (s["questions"], s["unparseable"], s["win_rate_a"], s["interval_95"]) == (2, 2, None, None)
    rows = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert all(o["reply"] is not None and o["verdict"] is None for r in rows for o in r["orders"])


def test_forced_choice_reads_the_local_judges_likeliest_verdict(setup, tmp_path):
    """The same unreadable local judge with --forced-choice: every verdict is taken from its
    probabilities after the reply, and equals the argmax of an independent log-likelihood sum."""
    import torch

    from leantune.models.loading import load_model, load_tokenizer

    out = tmp_path / "j"
    result = _judge(setup, str(setup["judge"]), out, "--max", "2", "--judge-max-tokens", "8", "--forced-choice")
    assert result.exit_code == 0, result.output
    assert "4 verdict(s) forced" in result.output
    s = json.loads((out / "summary.json").read_text())
    assert (s["questions"], s["unparseable"], s["forced_verdicts"]) == (2, 0, 4) and s["win_rate_a"] is not None
    assert "read from its probabilities" in (out / "summary.md").read_text()
    tokenizer = load_tokenizer(setup["judge"])
    model = load_model(setup["judge"], "causal_lm", "float32").eval()
    rows = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    for row in rows:
        for order, shown_first in zip(row["orders"], ("A", "B")):
            assert order["forced"] and order["first"] == shown_first
            first, second = (row["answer_a"], row["answer_b"]) if shown_first == "A" else (row["answer_b"],
                                                                                           row["answer_a"])
            from leantune.data.templates import render, resolve_template
            from leantune.evaluation.pairwise import judge_prompt
            text = render(tokenizer, [{"role": "user", "content": judge_prompt(row["question"], first, second)}],
                          resolve_template(tokenizer), add_generation_prompt=True)
            context = tokenizer.encode(text + order["reply"] + workflow.FORCED_SUFFIX)
            scores = []
            for option in workflow.FORCED_OPTIONS:
                ids = tokenizer.encode(text + order["reply"] + workflow.FORCED_SUFFIX + option)
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
                scores.append(sum(logp[i - 1, ids[i]].item() for i in range(len(context), len(ids))))
            assert order["verdict"] == "ABC"[max(range(3), key=scores.__getitem__)]
    again = _judge(setup, str(setup["judge"]), out, "--max", "2", "--judge-max-tokens", "8")
    assert again.exit_code == 2 and "forced_choice" in again.output  # a folder judged otherwise is not mixed


def test_forced_choice_needs_a_local_judge(setup, tmp_path):
    result = _judge(setup, "http://127.0.0.1:9", tmp_path / "j", "--forced-choice")
    assert result.exit_code == 2 and "only a local judge" in " ".join(result.output.split())
    assert not (tmp_path / "j").exists()
