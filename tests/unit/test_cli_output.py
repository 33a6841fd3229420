"""What the listings print: readable in an 80-column terminal or a pipe (no line wider than
80, every text whole and wrapped only between words); library chatter in the log file, not
on the terminal, unless -v."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from leantune import quiet
from leantune.cli import app
from leantune.data.formats import FORMATS
from leantune.guide.advisor import Situation, advise
from leantune.methods.registry import list_methods
from leantune.models.catalog import PACKAGED
from leantune.stages.registry import list_stages

pytestmark = pytest.mark.usefixtures("torch_single_thread")

WIDTH = 80


@pytest.fixture(autouse=True)
def _undo_quiet():
    yield
    quiet.undo()  # the app's callback installs handlers on the root logger of this process


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": str(WIDTH)}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    wide = [line for line in result.output.splitlines() if len(line) > WIDTH]
    assert not wide, "\n".join(wide)
    return result.output


def words(text: str) -> str:
    return " ".join(text.split())


def column(output: str, k: int) -> str:
    """The text of table column k (1-based), its wrapped lines joined with spaces: a word
    split across two lines would come back as two words."""
    cells = [line.split("│") for line in output.splitlines() if line.startswith("│")]
    return words(" ".join(c[k] for c in cells if len(c) > k))


def names(output: str) -> set[str]:
    return set(column(output, 1).split())


def test_methods_fit_80_columns_and_keep_every_text_whole():
    out = run("methods")
    right = column(out, 2)
    assert {m.name for m in list_methods()} <= names(out)
    for m in list_methods():
        assert words(m.summary) in right, m.name
        assert words(m.paper) in right, m.name


def test_stages_fit_80_columns_and_keep_every_text_whole():
    out = run("stages")
    right = column(out, 2)
    for s in list_stages():
        assert s.name in names(out)
        assert words(s.summary) in right, s.name
        assert ", ".join(n for n, f in FORMATS.items() if f.kind in s.data_kinds) in right, s.name


def test_models_fit_80_columns():
    out = run("models")
    right = column(out, 2)
    for m in PACKAGED.values():
        assert m.name in names(out)
        assert words(m.description) in right


@pytest.mark.parametrize("args, situation", [
    (["--task", "generation", "-n", "200"], dict(task="generation", labelled=200)),
    (["--task", "classification", "-n", "12", "--unlabelled", "--low-resource", "--tasks", "3", "--memory", "1GB"],
     dict(task="classification", labelled=12, unlabelled=True, low_resource=True, tasks=3,
          memory_budget=2**30)),
])
def test_advise_fits_80_columns_and_keeps_every_reason_whole(args, situation):
    out = run("advise", *args)
    right = column(out, 2)
    for a in advise(Situation(**situation)):  # with the model's facts, as the command sees them
        assert a.approach in column(out, 1)
        for why in a.reasons:
            assert words(why) in right, a.approach


def test_estimate_fits_80_columns():
    out = run("estimate", "--layers", "32", "--hidden", "4096", "--heads", "32", "--params", "7B",
              "-m", "lora", "--budget", "8GB", "--gradient-checkpointing")
    assert "total" in out and "verdict against 8GB" in out
    assert "trainable parameters:" in out


# --------------------------------------------------------------------------- library chatter

# a command during which a third-party library logs and warns, and leantune itself warns
CHATTY = textwrap.dedent("""
    import logging, warnings
    import leantune.methods.registry as registry
    from leantune.cli import app

    real = registry.list_methods

    def list_methods():
        logging.getLogger("somelib.module").warning("somelib log line")
        warnings.warn("somelib user warning", UserWarning)
        exec("import warnings; warnings.warn('leantune own warning')", {"__name__": "leantune.fake"})
        return real()

    registry.list_methods = list_methods
    app(prog_name="leantune")
""")


def chatty(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LEANTUNE_LOG": str(tmp_path / "leantune.log"), "COLUMNS": str(WIDTH),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", CHATTY, *args, "methods"], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


def test_library_chatter_goes_to_the_log_file_and_to_the_terminal_with_verbose(tmp_path):
    log = tmp_path / "leantune.log"
    plain = chatty(tmp_path)
    logged = log.read_text()
    assert "somelib log line" in logged and "somelib user warning" in logged
    assert "somelib" not in plain.stderr
    assert "kernels-community" not in plain.stderr  # bitsandbytes, on CPUs with AVX512-BF16
    assert "leantune own warning" in plain.stderr and "leantune own warning" not in logged
    assert "lora" in plain.stdout

    verbose = chatty(tmp_path, "-v")
    assert "somelib log line" in verbose.stderr and "somelib user warning" in verbose.stderr
    assert "leantune own warning" in verbose.stderr
    if "kernels-community" in logged:
        assert "kernels-community" in verbose.stderr


def test_quiet_replaces_its_handlers_and_takes_over_library_stream_handlers(tmp_path, capsys):
    lib = logging.getLogger("somelib_with_handler")
    lib.addHandler(logging.StreamHandler(sys.stderr))
    lib.propagate = False
    try:
        quiet.quiet(tmp_path / "first.log")
        assert quiet.quiet(tmp_path / "second.log") == tmp_path / "second.log"
        quiet.adopt_library_loggers()
        assert not lib.handlers and lib.propagate
        lib.warning("from the library")
        logging.getLogger("leantune.somewhere").warning("from leantune")
        err = capsys.readouterr().err
        assert "from the library" not in err and "from leantune" in err
        assert "from the library" in (tmp_path / "second.log").read_text()
        assert not (tmp_path / "first.log").exists()
    finally:
        lib.handlers.clear()
        lib.propagate = True


def test_default_log_file(monkeypatch, tmp_path):
    monkeypatch.setenv("LEANTUNE_LOG", str(tmp_path / "x.log"))
    assert quiet.default_log_file() == tmp_path / "x.log"
    monkeypatch.delenv("LEANTUNE_LOG")
    monkeypatch.setenv("LEANTUNE_HOME", str(tmp_path))
    assert quiet.default_log_file() == tmp_path / "leantune.log"
