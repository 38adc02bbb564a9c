"""End to end in the offline world: the stages as real shell pipes, as a user types them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def sh(script: str, home: Path) -> str:
    """Run a bash script in which `nlp` is this interpreter's nlp; return its stdout."""
    prelude = f'set -euo pipefail\nnlp() {{ "{sys.executable}" -m nlp_cli "$@"; }}\n'
    env = {**os.environ, "NLP_HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        ["bash", "-c", prelude + script], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_shapes_world_through_pipes_shows_the_papers_finding(tmp_path):
    home = tmp_path / "home"
    feats = sh("nlp download shapes >/dev/null\nnlp embed shapes --model tiny-shapes", home).strip()
    assert Path(feats).exists()
    zero_shot = json.loads(sh(f"nlp eval --zero-shot {feats} --json", home))["acc1"]

    out = sh(
        f"nlp corrupt {feats} --sym 0.8 --seed 1 | nlp purify --json",
        home,
    )
    partition = json.loads(out)
    assert partition["detection"]["f1"] > 0.9  # the text prototypes know these classes

    ce = json.loads(
        sh(f"nlp corrupt {feats} --sym 0.8 --seed 1 | nlp train --loss ce | nlp eval --json", home)
    )
    nlprompt = json.loads(
        sh(
            f"nlp corrupt {feats} --sym 0.8 --seed 1 | nlp purify | nlp train --loss nlprompt "
            "| nlp eval --json",
            home,
        )
    )
    # DSPT Fig. 1 / Table 1 at 80 % symmetric noise: CE falls below zero-shot, NLPrompt does not.
    assert ce["last5_mean_acc"] < zero_shot
    assert nlprompt["last5_mean_acc"] > zero_shot
    assert nlprompt["last5_mean_acc"] - ce["last5_mean_acc"] > 0.3
