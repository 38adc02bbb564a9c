"""Regenerate the shell completion scripts from the installed `nlp` app."""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
FILES = {"bash": "nlp.bash", "zsh": "_nlp", "fish": "nlp.fish"}


def script(shell: str) -> str:
    """The completion script Typer generates for `shell`."""
    env = {**os.environ, "_NLP_COMPLETE": f"source_{shell}"}
    cmd = [sys.executable, "-c", "from nlp_cli.cli import main; main()"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return out


if __name__ == "__main__":
    for shell, name in FILES.items():
        (HERE / name).write_text(script(shell))
        print(HERE / name)
