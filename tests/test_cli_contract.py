"""The stage contract itself: version, help, one-line errors, stdin input, stdout purity."""

import subprocess
import sys
from pathlib import Path

import pytest

from nlp_cli import __version__
from nlp_cli.cli import output
from nlp_cli.errors import UsageError


def test_version(cli):
    r = cli("--version")
    assert r.code == 0 and r.stdout.strip() == f"nlp {__version__}"


def test_help_lists_stages(cli):
    r = cli("--help")
    assert r.code == 0 and "Usage" in r.stdout


def test_unknown_option_is_one_line_usage_error(cli):
    r = cli("--no-such-option")
    assert r.code == 2
    assert r.stdout == ""
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1


def test_input_path_prefers_argument(monkeypatch):
    assert output.input_path(Path("a.safetensors")) == Path("a.safetensors")


def test_input_path_reads_the_one_line_of_stdin(monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("\n/x/labels.safetensors\n\n"))
    assert output.input_path(None) == Path("/x/labels.safetensors")
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n/x/first\n/x/labels.safetensors\n\n"))
    with pytest.raises(UsageError, match="stdin holds 2 lines"):
        output.input_path(None)


def test_input_path_empty_stdin_is_usage_error(monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(UsageError, match="stdin was empty"):
        output.input_path(None)


def test_input_path_terminal_is_usage_error(monkeypatch):
    import io

    tty = io.StringIO("")
    tty.isatty = lambda: True
    monkeypatch.setattr(sys, "stdin", tty)
    with pytest.raises(UsageError, match="no input artifact given"):
        output.input_path(None)


def test_emit_prints_only_the_path_or_json(capsys):
    output.emit("/a/b.safetensors", {"n": 3})
    assert capsys.readouterr().out == "/a/b.safetensors\n"
    output.emit("/a/b.safetensors", {"n": 3}, as_json=True)
    import json

    assert json.loads(capsys.readouterr().out) == {"path": "/a/b.safetensors", "n": 3}


def test_console_writes_to_stderr(capsys):
    output.info("progress")
    output.warn("careful")
    out = capsys.readouterr()
    assert out.out == "" and "progress" in out.err and "warning: careful" in out.err


def test_real_process_error_has_no_traceback():
    r = subprocess.run([sys.executable, "-m", "nlp_cli", "--nope"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_threads_option_reaches_torch_and_is_recorded(cli, features, tmp_path):
    import torch

    from nlp_cli import artifacts

    out = tmp_path / "p.safetensors"
    before = torch.get_num_threads()
    r = cli("--threads", "1", "train", features, "--epochs", "1", "--n-ctx", "4", "--out", out)
    assert r.code == 0, r.stderr
    assert artifacts.read_meta(out)["environment"]["threads"] == 1
    assert cli("--threads", "0", "train", features).code == 2
    torch.set_num_threads(before)


def test_progress_lines_for_logs_carry_rate_and_eta(capsys, monkeypatch):
    from nlp_cli.cli import common, progress

    clock = iter([0.0, 2.0, 2.5, 4.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    ticker = common.Ticker("embedding", "images", interval=1.0)
    ticker.update(0, 10)
    ticker.update(4, 10)
    ticker.update(5, 10)  # within the interval: no line
    ticker.update(10, 10)
    err = capsys.readouterr().err.splitlines()
    assert err == ["embedding 4/10 images (2.0/s, eta 3s)", "embedding 10/10 images (2.5/s)"]
    assert common.duration(3725) == "1h02m" and common.duration(185) == "3m05s"


def test_train_epoch_lines_have_an_eta(cli, features):
    r = cli("train", features, "--epochs", "3", "--n-ctx", "4")
    assert r.code == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3 and "eta" in lines[1] and "eta" not in lines[2]


def test_log_lines_print_brackets_as_they_are(monkeypatch):
    """A cell name like `[ce seed 1]` or a path with brackets is text, not Rich markup."""
    import io

    from rich.console import Console

    buf = io.StringIO()
    monkeypatch.setattr(output, "_console", Console(file=buf, highlight=False, width=200))
    output.info("[ce seed 1] run/[bold]x")
    output.warn("collapse in [dsoftmax seed 2]")
    text = buf.getvalue()
    assert "[ce seed 1] run/[bold]x" in text
    assert "warning: collapse in [dsoftmax seed 2]" in text
