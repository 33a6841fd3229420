"""LeanBoard's guards: no page on the network without a password, a password that is asked,
and no path outside the workspace read or written by any tab."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import pytest
import yaml

from leantune.webui import tab_data, tab_export, tab_train
from leantune.webui.board import Board
from leantune.webui.jobs import Jobs
from leantune.webui.workspace import OutsideWorkspace, Workspace

LEANTUNE = Path(sys.executable).parent / "leantune"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def webui(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(LEANTUNE), "webui", *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV)


def test_an_open_address_without_a_password_does_not_start(tmp_path):
    started = time.monotonic()
    proc = webui("--host", "0.0.0.0", "--workspace", str(tmp_path))
    assert proc.returncode == 2
    message = " ".join((proc.stdout + proc.stderr).split())
    assert "--host 0.0.0.0" in message and "--auth USER:PASSWORD" in message and "Traceback" not in message
    assert time.monotonic() - started < 10  # refused before the page (gradio, torch) loads
    proc = webui("--auth", "nopassword", "--workspace", str(tmp_path))
    assert proc.returncode == 2 and "USER:PASSWORD" in proc.stdout + proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_asks_for_the_password(tmp_path):
    port = free_port()
    server = subprocess.Popen([str(LEANTUNE), "webui", "--workspace", str(tmp_path), "--port", str(port),
                               "--auth", "ada:s3cret"], env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/", timeout=2)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the page did not start"
                time.sleep(0.5)
        with pytest.raises(urllib.error.HTTPError) as refused:  # the page's config needs a login
            urllib.request.urlopen(base + "/config", timeout=5)
        assert refused.value.code == 401
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        wrong = urllib.parse.urlencode({"username": "ada", "password": "guess"}).encode()
        with pytest.raises(urllib.error.HTTPError):
            opener.open(base + "/login", data=wrong, timeout=5)
        right = urllib.parse.urlencode({"username": "ada", "password": "s3cret"}).encode()
        opener.open(base + "/login", data=right, timeout=5)
        config = json.load(opener.open(base + "/config", timeout=5))
        assert "components" in config  # logged in, the page is served
    finally:
        server.terminate()
        server.wait(30)


@pytest.fixture
def board(tmp_path):
    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    (ws / "data" / "train.jsonl").write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    (tmp_path / "secret.jsonl").write_text(json.dumps({"instruction": "secret", "output": "x"}) + "\n")
    (ws / "data" / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    workspace = Workspace(ws)
    return Board(workspace, Jobs(workspace))


def test_no_tab_reads_outside_the_workspace(board, tmp_path):
    for name in ("../secret.jsonl", str(tmp_path / "secret.jsonl"), "data/link.jsonl", "data/../../secret.jsonl"):
        with pytest.raises(OutsideWorkspace):
            tab_data.check(board, name, "detect", None)
    verdict, *_ = tab_data.check(board, "data/train.jsonl", "detect", None)  # inside: read
    assert "1 valid examples" in verdict


@pytest.mark.parametrize("key,value", [("data.train", "../secret.jsonl"), ("output.dir", "../runs"),
                                       ("output.dir", "/tmp"), ("model", "../models/tiny")])
def test_no_recipe_reaches_outside_the_workspace(board, tmp_path, key, value):
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "models" / "tiny" / "config.json").write_text("{}")
    raw = {"model": "smollm2-135m", "data": {"train": "data/train.jsonl"}, "output": {"name": "r"}}
    section, _, field = key.partition(".")
    if field:
        raw[section][field] = value
    else:
        raw[section] = value
    with pytest.raises(OutsideWorkspace):
        tab_train.start(board, yaml.safe_dump(raw), 1)
    assert not board.jobs.all() and not (tmp_path / "runs").exists()


def test_no_export_writes_outside_the_workspace(board, tmp_path):
    (board.workspace.root / "runs" / "r").mkdir(parents=True)
    for target in ("../out", str(tmp_path / "out"), "/tmp/leantune-escape"):
        with pytest.raises(OutsideWorkspace):
            tab_export.export(board, "runs/r", "adapter", target)
    with pytest.raises(OutsideWorkspace):
        tab_export.export(board, "../", "adapter", "exports/x")
    assert not (tmp_path / "out").exists() and not Path("/tmp/leantune-escape").exists()
