"""The README's first command runs examples/quickstart.sh: it must work as a newcomer meets it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_quickstart_runs_end_to_end_and_prints_its_table(tmp_path):
    """The quickstart in the easy world with two epochs (the stages, the baselines beside
    purify, the two trainings side by side, one eval of the four prompts and the table), `nlp`
    being this interpreter's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nlp").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m nlp_cli "$@"\n')
    (bin_dir / "nlp").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "NLP_HOME": str(tmp_path / "home"),
        "DATASET": "shapes-easy",
        "MODEL": "tiny-shapes-easy",
        "TRAIN": "--epochs 2",
    }
    proc = subprocess.run(
        ["bash", str(REPO / "examples" / "quickstart.sh")],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert names == [
        "Untrained context", "Zero-shot CLIP", "CoOp, clean labels", "CoOp (ce)",
        "DSPT (dsoftmax)", "NLPrompt",
    ]  # fmt: skip
    for row in rows[1:]:
        final = float(row.split("|")[2])
        assert 0 <= final <= 100
