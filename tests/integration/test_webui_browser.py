"""LeanBoard in a real headless Chromium (Debian's, driven by Playwright), against a real
`leantune webui` process: upload a malformed file and read its line errors, get advice, start a
training, watch it, stop it, resume it, compare two runs, chat, export. Each tab is also
screenshotted (into $LEANTUNE_SCREENSHOTS when set: how docs/img/ is made).

The tests of this module run in order on one server and one workspace."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import sync_playwright  # the test extra installs it

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
LEANTUNE = Path(sys.executable).parent / "leantune"
SLOW_STEPS = Path(__file__).parent / "slow_steps"  # sitecustomize.py: a delay per micro-batch
STEP_DELAY = 0.4
STEPS = 24
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda omicron".split()
CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
               "--disable-background-networking", "--disable-component-update"]

if not CHROMIUM.exists():  # make test installs it wherever it runs as root with apt (CI does)
    pytest.skip("Debian's chromium is not installed and this user cannot install it (make test installs it as "
                "root)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recipe(name: str, steps: int) -> dict:
    return {"model": "models/tiny-llama", "method": {"name": "lora", "r": 4, "alpha": 8}, "stage": "sft",
            "data": {"train": "data/train.jsonl", "format": "alpaca", "eval_split": 0.25},
            "train": {"max_steps": steps, "batch_size": 2, "lr": 5e-3, "max_length": 64, "logging_steps": 1,
                      "save_steps": 2, "eval_steps": 4, "precision": "fp32", "device": "cpu"},
            "eval": {"before": False, "max_new_tokens": 8}, "output": {"dir": "runs", "name": name}}


def wait_for(check, timeout: float, what: str, every: float = 0.25, show=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f"; shown: {show()}" if show else ""))


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    from test_gguf_export import build_bpe_tokenizer, tiny_model  # a tokenizer with merges: GGUF can take it

    ws = tmp_path_factory.mktemp("workspace")
    tokenizer = build_bpe_tokenizer()
    tiny_model("llama", tokenizer).save_pretrained(ws / "models" / "tiny-llama")
    tokenizer.save_pretrained(ws / "models" / "tiny-llama")
    (ws / "data").mkdir()
    rows = [{"instruction": f"Repeat the word {w}.", "output": f"{w} {w}"} for w in WORDS]
    (ws / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    # a finished run to compare with, trained on the command line
    (ws / "recipes").mkdir()
    (ws / "recipes" / "baseline.yaml").write_text(yaml.safe_dump(recipe("baseline", 4), sort_keys=False))
    subprocess.run([str(LEANTUNE), "train", "recipes/baseline.yaml"], cwd=ws, env=env, check=True,
                   capture_output=True, timeout=300)
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(SLOW_STEPS), env.get("PYTHONPATH")])),
               LEANTUNE_TEST_STEP_DELAY=str(STEP_DELAY))  # the page's trainings inherit it
    port = free_port()
    log = open(ws.parent / "webui.log", "w")
    server = subprocess.Popen([str(LEANTUNE), "webui", "--workspace", str(ws), "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"

    def up():
        try:
            return urllib.request.urlopen(url, timeout=2).status == 200
        except OSError:
            assert server.poll() is None, (ws.parent / "webui.log").read_text()
            return False
    wait_for(up, 120, "the page to answer")
    shots = Path(os.environ.get("LEANTUNE_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_selector("#data-check")
        yield {"page": page, "ws": ws, "url": url, "shots": shots, "env": env}
        browser.close()
    server.terminate()
    server.wait(30)
    log.close()
    for job in (ws / ".leantune-webui" / "jobs").glob("*.json"):  # no training outlives the test
        pid = json.loads(job.read_text())["pid"]
        try:
            os.killpg(pid, 9)
        except OSError:
            pass


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def text_of(page, selector: str) -> str:
    el = page.locator(selector)
    if el.locator("textarea").count():
        return el.locator("textarea").first.input_value()
    return el.inner_text()


def choose(page, selector: str, value: str) -> None:
    """Type into a gradio dropdown and take the value."""
    box = page.locator(f"{selector} input").first
    box.click()
    box.fill(value)
    box.press("Enter")


def grid(page, selector: str) -> list[list[str]]:
    """The cells of a gradio table, row by row."""
    rows = page.locator(f"{selector} .virtual-row").all()
    return [[c.strip() for c in r.locator("[role=gridcell]").all_inner_texts()] for r in rows]


def shoot(board, name: str) -> None:
    path = board["shots"] / f"webui-{name}.png"
    board["page"].screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


def test_upload_shows_line_errors(board, tmp_path):
    from leantune.data.inspect import inspect_data

    page = board["page"]
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"instruction": "Say hi.", "output": "hi"}\n{"instruction": 3}\nnot json\n'
                   '{"instruction": "Say bye.", "output": "bye"}\n')
    page.locator("#data-upload input[type=file]").set_input_files(str(bad))
    problems = wait_for(lambda: text_of(page, "#data-problems"), 60, "the problems of the upload")
    saved = board["ws"] / "data" / "broken.jsonl"
    assert saved.read_bytes() == bad.read_bytes()  # uploaded into the workspace, unchanged
    expected = [line.replace(str(saved), "data/broken.jsonl") for line in inspect_data(saved, None).problem_lines()]
    assert problems.splitlines() == expected and len(expected) == 3
    assert "data/broken.jsonl:2" in problems and "data/broken.jsonl:3" in problems
    assert "3 problem(s)" in text_of(page, "#data-verdict")
    # the good file, with token lengths from the workspace's model
    choose(page, "#data-file", "data/train.jsonl")
    page.locator("#data-tokenizer textarea, #data-tokenizer input").first.fill("models/tiny-llama")
    page.locator("#data-check").click()
    wait_for(lambda: "12 valid examples" in text_of(page, "#data-verdict"), 60, "the good file's verdict")
    assert "tokens per example" in text_of(page, "#data-facts")
    shoot(board, "data")


def test_outside_the_workspace_is_refused(board):
    page = board["page"]
    choose(page, "#data-file", "../../etc/passwd")
    page.locator("#data-check").click()
    wait_for(lambda: "outside the workspace" in text_of(page, "#data-verdict"), 30, "the refusal")


def test_advice_matches_the_advisor(board):
    from leantune.guide.consult import consult

    page = board["page"]
    tab(page, "Advise")
    choose(page, "#advise-data", "data/train.jsonl")
    page.locator("#advise-go").click()
    shown = wait_for(lambda: grid(page, "#advise-ranking"), 120, "the ranking")
    rows = consult(board["ws"] / "data" / "train.jsonl", data="data/train.jsonl").rows()
    assert [(cells[1].split(" on ")[0], int(cells[2])) for cells in shown] == [(r["approach"], r["score"])
                                                                                for r in rows]
    assert "12 valid" in text_of(page, "#advise-facts")
    # proof on the workspace's model: the top candidate trains in the background, its row fills in
    page.locator("#advise-model input, #advise-model textarea").first.fill("models/tiny-llama")
    page.locator("#prove-top input").fill("1")
    page.locator("#advise-go").click()
    wait_for(lambda: "models/tiny-llama" in text_of(page, "#advise-facts"), 60, "advice on the workspace model")
    top = grid(page, "#advise-ranking")[0][1].split(" on ")[0]
    page.locator("#prove-go").click()
    rows = wait_for(lambda: grid(page, "#prove-table"), 120, "the proof's table")
    assert rows[0][0] == top
    wait_for(lambda: "measured winner" in text_of(page, "#prove-status"), 300, "the proof to finish",
             show=lambda: text_of(page, "#prove-status"))
    assert grid(page, "#prove-table")[0][0] == top and "finished" in grid(page, "#prove-table")[0]
    winner = json.loads((board["ws"] / "advice" / "train" / "prove.json").read_text())["winner"]
    assert winner["approach"] == top and f"measured winner: {top}" in text_of(page, "#prove-status")
    shoot(board, "advise")


def status(page) -> str:
    return text_of(page, "#train-status")


def shown_step(page) -> int:
    found = re.search(r"step (\d+)", status(page))
    return int(found.group(1)) if found else -1


def test_train_watch_stop_resume(board):
    page, ws = board["page"], board["ws"]
    tab(page, "Train")
    text = yaml.safe_dump(recipe("webui-run", STEPS), sort_keys=False)
    page.locator("#recipe-yaml textarea").fill(text)
    page.locator("#recipe-yaml textarea").press("Tab")  # leaving the YAML updates the form and checks it
    wait_for(lambda: "recipe valid" in text_of(page, "#recipe-problems"), 30, "the recipe to validate")
    assert page.locator("#form-run-name textarea, #form-run-name input").first.input_value() == "webui-run"
    page.locator("#train-start").click()
    wait_for(lambda: status(page).startswith("running") and shown_step(page) >= 3, 180,
             "the training to run and report its steps")
    # the page answers while the training runs: the page itself and its config (what a reload fetches)
    times = []
    for path in ("", "config", "", "config", ""):
        started = time.monotonic()
        with urllib.request.urlopen(board["url"] + path, timeout=5) as r:
            assert r.status == 200
        times.append(time.monotonic() - started)
    print(f"answers during training: {', '.join(f'{t * 1000:.0f} ms' for t in times)}")
    assert max(times) < 1.0, f"the page took {max(times):.2f} s to answer during training"
    assert status(page).startswith("running")  # and the measurement was taken while it ran
    assert page.locator("#train-loss svg, #train-loss canvas").count() > 0  # the curve is drawn
    shoot(board, "train")
    page.locator("#train-stop").click()
    wait_for(lambda: "stopped" in status(page), 90, "the run to stop with a checkpoint")
    run = ws / "runs" / "webui-run"
    assert any((run / "checkpoints").iterdir()) and not (run / "summary.json").exists()
    page.locator("#train-resume").click()
    wait_for(lambda: "finished" in status(page), 240, "the resumed run to finish")
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, STEPS + 1))  # each step once across the stop and the resume
    assert "train loss" in page.locator("#train-loss").inner_html() or page.locator("#train-loss svg").count()


def test_compare_two_runs(board):
    page, ws = board["page"], board["ws"]
    tab(page, "Runs & compare")
    page.locator("#runs-refresh").click()
    wait_for(lambda: "finished" in text_of(page, "#runs-table") and "webui-run" in text_of(page, "#runs-table"),
             30, "the runs table")
    for name in ("runs/baseline", "runs/webui-run"):
        page.locator("#runs-choose").get_by_label(name).check()
    page.locator("#runs-compare").click()
    shown = wait_for(lambda: len(grid(page, "#compare-table")) == 2 and grid(page, "#compare-table"), 60,
                     "the comparison")
    saved = json.loads((ws / "comparisons" / "baseline-vs-webui-run" / "compare.json").read_text())
    assert [cells[0] for cells in shown] == [r["variant"] for r in saved["rows"]] == ["baseline", "webui-run"]
    for cells, ref in zip(shown, saved["rows"]):
        assert abs(float(cells[1]) - ref["metric"]) < 1e-3  # the metric as compare.json has it
    shoot(board, "runs")


def test_chat_with_run_and_base(board):
    import torch

    from leantune.data.templates import render, resolve_template
    from leantune.export.run_loading import load_run

    page, ws = board["page"], board["ws"]
    tab(page, "Chat")
    page.locator("#chat-runs").get_by_label("runs/webui-run").check()
    page.locator("#chat-base input").check()
    page.locator("#chat-message textarea").fill("Repeat the word alpha.")
    page.locator("#chat-send").click()
    wait_for(lambda: page.locator("#chat-answers-1 [data-testid=bot]").count() == 1, 120, "both answers")
    answer = page.locator("#chat-answers-0 [data-testid=bot]").inner_text().strip()
    assert "webui-run" in page.locator("#chat-answers-0").inner_text()  # each column says who answers
    run = load_run(ws / "runs" / "webui-run")
    history = [{"role": "user", "content": "Repeat the word alpha."}]
    text = render(run.tokenizer, history, resolve_template(run.tokenizer, run.recipe.data.template),
                  add_generation_prompt=True)
    ids = run.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]

    def generate(model) -> str:
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=128, do_sample=False, repetition_penalty=1.1,
                                 pad_token_id=run.tokenizer.pad_token_id)
        return run.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    printable = lambda s: "".join(c for c in s if c.isprintable() and not c.isspace())  # noqa: E731 (as HTML shows it)
    trained = generate(run.model)
    assert printable(answer) == printable(trained)  # the page collapses runs of spaces
    with run.model.disable_adapter():  # the base model's column: the same prompt without the adapter
        base = generate(run.model)
    assert base != trained
    assert printable(page.locator("#chat-answers-1 [data-testid=bot]").inner_text()) == printable(base)
    shoot(board, "chat")


def test_export_merged_and_gguf(board):
    from transformers import AutoModelForCausalLM

    page, ws = board["page"], board["ws"]
    tab(page, "Export")
    target = page.locator("#export-target textarea, #export-target input").first
    choose(page, "#export-run", "runs/webui-run")
    wait_for(lambda: target.input_value() == "exports/webui-run-merged", 30, "the default target")
    page.locator("#export-go").click()
    wait_for(lambda: "merged model written to exports/webui-run-merged" in text_of(page, "#export-result"), 120,
             "the merge")
    AutoModelForCausalLM.from_pretrained(ws / "exports" / "webui-run-merged")  # a plain transformers folder
    page.get_by_label("GGUF + Modelfile").check()
    wait_for(lambda: target.input_value().endswith(".gguf"), 30, "the GGUF target")
    target.fill("exports/gguf/run.gguf")
    page.locator("#export-go").click()
    wait_for(lambda: "Modelfile written" in text_of(page, "#export-result"), 120, "the GGUF export",
             show=lambda: text_of(page, "#export-result"))
    assert (ws / "exports" / "gguf" / "run.gguf").stat().st_size > 0
    assert (ws / "exports" / "gguf" / "Modelfile").is_file()
    shoot(board, "export")
    target.fill("../escaped")
    page.locator("#export-go").click()
    wait_for(lambda: "outside the workspace" in text_of(page, "#export-result"), 30, "the refusal")
    assert not (ws.parent / "escaped").exists()
