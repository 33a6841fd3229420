"""Every failure is a sentence (crash.py), numbers are checked to their real domain before
anything loads, recipe errors point at file:line:column, and progress is readable in a log."""
from __future__ import annotations

import errno
import io
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from leantune.cli import user_errors
from leantune.crash import describe
from leantune.errors import RecipeError
from leantune.recipe import load_recipe

runner = CliRunner()


def test_an_internal_error_is_one_sentence_with_the_traceback_saved(tmp_path, monkeypatch):
    monkeypatch.setenv("LEANTUNE_HOME", str(tmp_path))
    app = typer.Typer()

    @app.command()
    @user_errors
    def boom():
        {}["missing"]

    result = runner.invoke(app, [])
    assert result.exit_code == 1
    assert "internal error: KeyError" in result.output and "Traceback" not in result.output
    saved = list((tmp_path / "crashes").glob("crash-*.txt"))
    assert len(saved) == 1 and str(saved[0]) in result.output.replace("\n", "")
    assert "Traceback" in saved[0].read_text() and "boom" in saved[0].read_text()


def test_what_the_machine_refuses_is_a_user_error():
    message, code = describe(OSError(errno.ENOSPC, "No space left on device", "/data/out"))
    assert code == 2 and message.startswith("/data/out: No space left on device") and "disk is full" in message
    message, code = describe(type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory"))
    assert code == 2 and "batch_size" in message
    message, code = describe(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                                          "8589934592 bytes. Error code 12 (Cannot allocate memory)"))
    assert code == 2 and message.startswith("out of memory (DefaultCPUAllocator") and "train.cpu_heap" in message
    assert describe(KeyboardInterrupt()) == ("interrupted", 130)


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("override, fragment", [
    ("train.seed=-1", "train.seed"), ("train.seed=4294967296", "train.seed"),
    ("train.lr=.inf", "train.lr"), ("train.lr=.nan", "train.lr"), ("train.epochs=.inf", "train.epochs"),
    ("train.max_steps=10000000000000", "train.max_steps"), ("model.name=", "model.name"),
])
def test_numbers_are_checked_to_their_real_domain(override, fragment):
    with pytest.raises(RecipeError, match=fragment.replace(".", r"\.")):
        load_recipe(raw={"model": "x", "train": {"max_steps": None}}, overrides=[override])


def test_recipe_errors_give_file_line_and_column(tmp_path):
    path = write(tmp_path / "r.yaml", "model: x\ntrain:\n  epochs: 2\n  lr: -1\n")
    with pytest.raises(RecipeError, match=rf"^{path}:4:3: train\.lr: "):
        load_recipe(path)
    path = write(tmp_path / "u.yaml", "model: x\ndata:\n  tarin: a.jsonl\n")
    with pytest.raises(RecipeError, match=rf"^{path}:3:3: unknown key 'data\.tarin'\. Did you mean 'train'\?"):
        load_recipe(path)


def test_a_duplicate_key_is_an_error_not_a_silent_replacement(tmp_path):
    path = write(tmp_path / "dup.yaml", "model: x\ntrain:\n  lr: 1.0e-4\n  batch_size: 4\neval: {}\ntrain:\n  epochs: 2\n")
    with pytest.raises(RecipeError, match=rf"^{path}:6:1: .*duplicate key 'train' \(first at line 2\)"):
        load_recipe(path)


def test_a_recipe_that_is_not_utf8_names_the_line(tmp_path):
    path = write(tmp_path / "latin1.yaml", "model: x\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(RecipeError, match=rf"^{path}:2: not UTF-8"):
        load_recipe(path)


def test_recipe_validation_does_not_import_torch(tmp_path):
    """The recipe and its data are checked before torch loads: errors come in a second."""
    import subprocess

    good = write(tmp_path / "good.yaml", "model: x\nmethod: [prefix_tuning, {name: adapter, kind: parallel}]\n"
                                         "stage: {name: dpo, beta: 0.2}\n")
    bad = write(tmp_path / "bad.yaml", "model: x\nstage: sft\nmethod: {name: lora, r: 0}\n")
    code = (f"import sys\nfrom leantune.recipe import load_recipe\nfrom leantune.errors import RecipeError\n"
            f"print(load_recipe({str(good)!r}).stage['beta'])\n"
            f"try:\n    load_recipe({str(bad)!r})\nexcept RecipeError as e:\n    print(e)\n"
            f"assert 'torch' not in sys.modules, 'torch was imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("0.2\n") and f"{bad}:3:22: method lora: r: Input should be greater than 0" in out.stdout


def test_progress_in_a_log_is_plain_lines(monkeypatch):
    from leantune.training.progress import TrainProgress

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with TrainProgress(total=40, start=0, enabled=True) as bar:
        assert bar.mode == "lines"
        for step in range(1, 41):
            bar.update(step, 1.0 / step, 100.0)
    lines = err.getvalue().splitlines()
    assert 20 <= len(lines) <= 41 and lines[-1].startswith("train step 40/40 (100%)  loss 0.0250")
    assert "\x1b" not in err.getvalue()  # no terminal control codes in a log


def test_aliases_that_expand_without_end_are_refused(tmp_path):
    """A list that holds itself, and a "billion laughs" file (9 levels of 9 aliases), are
    refused at once instead of hanging validation."""
    laughs = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        laughs.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    for text in ("model: m\nstage: &a [*a]\n", "\n".join(laughs) + "\nmodel: x\n"):
        path = write(tmp_path / "r.yaml", text)
        with pytest.raises(RecipeError, match="expands to more than"):
            load_recipe(path)
    with pytest.raises(RecipeError, match="expands to more than"):
        load_recipe(raw={"model": "x"}, overrides=["stage=&a [*a]"])


def test_an_error_in_an_override_names_the_override_not_the_file(tmp_path):
    path = write(tmp_path / "r.yaml", "model: x\ntrain:\n  seed: 1\n  lr: 1.0e-4\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(path, overrides=["train.seed=-1", "method.r=0"])
    lines = str(exc.value).splitlines()
    assert lines[0].startswith("override train.seed=-1: train.seed: ")
    with pytest.raises(RecipeError, match=r"^override method\.r=0: method lora: r: "):
        load_recipe(path, overrides=["method.r=0"])
