"""`nlp --help`, each command's `--help`, `nlp download --list` and TAB start without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from nlp_cli import losses, purify, train
from nlp_cli.cli import names
from nlp_cli.datasets import cifar

# Runs every command's --help and `download --list` in one process; prints what imported torch.
HELP = """
import json, sys
import typer
from nlp_cli.cli import app, run

commands = sorted(typer.main.get_command(app).commands)
torch = []
for argv in [["--help"], *([c, "--help"] for c in commands), ["download", "--list"]]:
    code = run(argv)
    if code != 0 or "torch" in sys.modules:
        torch.append([argv, code])
print(json.dumps({"commands": commands, "bad": torch}))
"""

COMPLETE = """
import sys
from nlp_cli.cli import main
try:
    main()
except SystemExit:
    pass
print("torch" in sys.modules)
"""


def test_names_are_the_registries():
    hint = "copy the registry's names, in order, into nlp_cli/cli/names.py"
    assert names.LOSSES == tuple(losses.list_losses()), hint
    assert names.PURIFIERS == tuple(purify.list_purifiers()), hint
    assert names.HUMAN_LABELS == tuple(cifar.human_sets()), hint
    assert names.COMPILE == train.COMPILE, hint


def test_help_and_list_import_no_torch(tmp_path):
    env = {**os.environ, "NLP_HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", HELP], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"train", "purify", "download", "analyze-grad"} <= set(result["commands"])
    assert result["bad"] == [], "these imported torch (or failed)"


def test_completion_imports_no_torch(tmp_path):
    for words, expected in [
        ("nlp train --loss ", list(names.LOSSES)),
        ("nlp download ", None),
        ("nlp ", None),
    ]:
        env = {
            **os.environ,
            "NLP_HOME": str(tmp_path),
            "_NLP_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split())),
        }
        r = subprocess.run(
            [sys.executable, "-c", COMPLETE], capture_output=True, text=True, env=env
        )
        *offered, torch = r.stdout.strip().splitlines()
        assert torch == "False", words
        assert offered, words
        if expected is not None:
            assert offered == expected
