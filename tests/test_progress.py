"""Progress on stderr: a Rich bar on a terminal, plain lines with count, rate and ETA elsewhere,
fed by the library's callbacks (embed batches, training steps, Sinkhorn iterations, sweep cells)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder, make_sym_labelset
from rich.console import Console

from nlp_cli import purify, train
from nlp_cli.cli import PROGRESS, progress
from nlp_cli.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
# `training 12/26 steps (44.5/s, eta 3s) epoch 1/2`
STEP_LINE = re.compile(r"^training (\d+)/(\d+) steps \((\d+\.\d)/(s|min|h)(, eta \d+[hms]\S*)?\) "
                       r"epoch (\d+)/(\d+)$")  # fmt: skip


@pytest.fixture(autouse=True)
def _default_progress():
    yield
    progress.configure()


def _terminal(**environ: str) -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=120, _environ=environ)


def test_modes_follow_the_terminal_and_the_option():
    assert PROGRESS == progress.MODES  # --help's choices, kept without importing the module
    assert progress.mode(_terminal()) == "bar"
    assert progress.mode(_terminal(TERM="dumb")) == "line"
    assert progress.mode(Console(file=io.StringIO())) == "line"  # a log file, a pipe
    progress.configure("none")
    assert progress.mode(_terminal()) == "none"
    progress.configure("bar")
    assert progress.mode(Console(file=io.StringIO())) == "bar"
    with pytest.raises(UsageError, match="--progress must be one of"):
        progress.configure("fancy")
    with pytest.raises(UsageError, match="--progress-interval must be positive"):
        progress.configure("line", 0)


def test_bad_progress_option_is_one_line(cli):
    r = cli("--progress", "fancy", "download", "--list")
    assert r.code == 2 and r.stderr.strip() == "error: --progress must be one of auto, bar, " + (
        "line, none, got 'fancy'"
    )


def test_bar_on_a_terminal_shows_count_total_rate_and_eta(monkeypatch):
    clock = iter([0.0, 2.0, 2.0, 3.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    console = _terminal()
    with progress.Meter("embedding", "images", console=console) as m:
        assert m.mode == "bar"
        m.update(0, 10)
        m.update(4, 10)
        with progress.Steps(console=console) as steps:
            steps(0, 1, 5, 2)
            steps(0, 3, 5, 2)
            m.board.progress.refresh()
    out = console.file.getvalue()
    assert "\x1b[" in out and "━" in out  # drawn with terminal codes, a bar
    assert "embedding" in out and "4/10 images (2.0/s, eta 3s)" in out
    assert "3/10 steps (2.0/s, eta 4s) epoch 1/2" in out


def test_log_lines_come_at_most_once_per_interval(capsys, monkeypatch):
    clock = iter([0.0, 1.0, 2.5, 3.0, 6.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    progress.configure("line", 2.0)
    with progress.Meter("Sinkhorn", "iterations", bound=True) as m:
        for it in (1, 11, 21, 31, 41):
            m.update(it, 1000, f"error {1 / it:.1e}")
    err = capsys.readouterr().err.splitlines()
    # 2.5 s after the first: a line; 3.0 s: too soon; 6.0 s: a line. The ETA is a bound.
    assert err == [
        "Sinkhorn 21/1000 iterations (8.0/s, eta ≤ 2m02s) error 4.8e-02",
        "Sinkhorn 41/1000 iterations (6.7/s, eta ≤ 2m24s) error 2.4e-02",
    ]
    assert progress.rate_text(0.05) == "3.0/min" and progress.rate_text(1 / 7200) == "0.5/h"


def test_no_progress_prints_nothing(capsys):
    progress.configure("none")
    with progress.Steps() as steps:
        for s in range(1, 4):
            steps(0, s, 3, 1)
    assert capsys.readouterr().err == ""


def test_train_reports_every_step_without_changing_the_run(features):
    cfg = dict(epochs=2, batch_size=8, n_ctx=4, device="cpu")
    heard: list[tuple[int, int, int]] = []
    plain = train.train_prompt(features, train.make_config(**cfg))
    (heard_run,) = train.train_many(
        [features], [train.make_config(**cfg)], on_step=lambda *a: heard.append(a)
    )
    steps = -(-100 // 8)  # 5 classes × 20 training samples, batch 8
    assert heard == [(e, s, steps) for e in range(2) for s in range(1, steps + 1)]
    assert torch.equal(plain.ctx, heard_run.ctx) and plain.history == heard_run.history


def _into(calls: list):
    return lambda *a: calls.append(a)


def test_sinkhorn_reports_at_its_error_checks_without_changing_the_plan():
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(60, 16, generator=g), torch.randn(5, 16, generator=g)
    y = torch.randint(0, 5, (60,), generator=g)
    for reg in (0.1, 0.001):  # the scaling form, the log domain
        heard: list[tuple[int, int, float]] = []
        quiet = purify.purify("ot", x, t, y, 100.0, reg=reg)
        loud = purify.purify("ot", x, t, y, 100.0, reg=reg, on_progress=_into(heard))
        assert torch.equal(quiet.scores, loud.scores) and torch.equal(quiet.clean, loud.clean)
        its = [h[0] for h in heard]
        assert its == list(range(1, 10 * len(its), 10)) and all(h[1] == 1000 for h in heard)
        # the last check's error is the one the solver reports
        assert heard[-1][2] == loud.info["marginal_error"]
    assert purify.get("ot").reports and not purify.get("zeroshot").reports
    assert purify.purify("zeroshot", x, t, y, 100.0, on_progress=heard.append).clean.shape == (60,)


def test_train_log_lines_carry_steps_rate_and_eta(cli, features):
    r = cli("--progress", "line", "--progress-interval", "1e-6", "train", features,
            "--epochs", "2", "--batch-size", "8", "--n-ctx", "4")  # fmt: skip
    assert r.code == 0, r.stderr
    lines = [m for m in map(STEP_LINE.match, r.stderr.splitlines()) if m]
    assert len(lines) == 2 * 13 - 1  # every step but the first, which starts the clock
    assert [int(m[1]) for m in lines] == list(range(2, 27))
    assert {int(m[2]) for m in lines} == {26} and lines[-1].group(6, 7) == ("2", "2")
    assert all(m[5] for m in lines[:-1])  # an ETA while steps are left
    assert r.stderr.index("epoch 1/2  lr") < r.stderr.index("training 14/26")


def test_purify_log_lines_carry_iterations_rate_and_bound(cli, features, tmp_path):
    labels = make_sym_labelset(features, tmp_path / "l.safetensors")
    r = cli("--progress", "line", "--progress-interval", "1e-6", "purify", labels,
            "--reg", "0.001", "--device", "cpu")  # fmt: skip
    assert r.code == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if re.match(r"Sinkhorn \d", ln)]
    assert len(lines) == 99  # checks at 1, 11, …, 991; the first starts the clock
    assert re.fullmatch(r"Sinkhorn 11/1000 iterations \(\d+\.\d/(s|min), eta ≤ \S+\) error \S+",
                        lines[0])  # fmt: skip
    assert lines[-1].startswith("Sinkhorn 991/1000 ")
    assert "Sinkhorn stopped after 1000 iterations" in r.stderr  # the stage's note, after


def test_embed_log_lines_carry_images_rate_and_eta(cli, tiny_clip, tmp_path):
    data = make_image_folder(tmp_path / "photos", train=4, test=2)
    r = cli("--progress", "line", "--progress-interval", "1e-6", "embed", data, "--model",
            tiny_clip, "--batch-size", "3", "--device", "cpu")  # fmt: skip
    assert r.code == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("embedding ")]
    counts = [int(re.match(r"embedding (\d+)/18 images \(\d", ln)[1]) for ln in lines]
    assert counts == list(range(3, 19, 3)) and "eta" in lines[0] and "eta" not in lines[-1]


def test_sweep_lines_name_the_cell_as_it_starts_and_stream_to_a_pipe(features, tmp_path):
    """In a real process writing to a pipe, the first cell's start line is read while that cell
    trains (its metrics not yet written), before its training lines and its result."""
    grid = tmp_path / "g.yaml"
    grid.write_text(
        f"datasets: [{features}]\nmodel: unused\nnoise: [{{sym: 0.4}}]\nmethods: [ce]\n"
        "seeds: [1]\nzero_shot: false\nuntrained: false\n"
        "train: {epochs: 2, batch_size: 16, n_ctx: 4}\n"
    )
    cmd = [sys.executable, "-m", "nlp_cli", "--threads", "1", "--progress", "line",
           "--progress-interval", "0.05", "sweep", str(grid), "--out", str(tmp_path / "sw"),
           "--no-plot"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "NLP_TEST_PAUSE": "0.5"}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    metrics = tmp_path / "sw" / "metrics" / "feats" / "sym40" / "ce" / "seed1.json"
    heard: list[tuple[str, bool, bool]] = []  # line, process running, cell's metrics written

    def read() -> None:
        for line in proc.stderr:
            heard.append((line.rstrip("\n"), proc.poll() is None, metrics.exists()))

    reader = threading.Thread(target=read)
    reader.start()
    stdout = proc.stdout.read()
    reader.join(120)
    assert proc.wait(60) == 0, heard
    lines = [h[0] for h in heard]
    start = lines.index("── running 1/1: feats/sym40/ce/seed1")
    assert heard[start][1:] == (True, False)  # read while running, before the cell's result
    done = next(i for i, ln in enumerate(lines) if ln.startswith("── done 1/1: feats/sym40/ce"))
    assert re.search(r"acc \d+\.\d\d%  \(\d+\.\d/(s|min)\)$", lines[done])
    trained = [STEP_LINE.match(ln) for ln in lines[start + 1 : done]]
    assert trained and all(trained)  # the training's steps, streamed as they happen
    assert stdout.strip().endswith("table.md")
