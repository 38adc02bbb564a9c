"""The committed completion scripts must match what the app generates now."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("regen", ROOT / "completions" / "regenerate.py")
regen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(regen)


@pytest.mark.parametrize("shell", sorted(regen.FILES))
def test_completion_script_is_current(shell):
    committed = (ROOT / "completions" / regen.FILES[shell]).read_text()
    assert committed == regen.script(shell), (
        f"completions/{regen.FILES[shell]} is stale: run python completions/regenerate.py"
    )
    assert "nlp" in committed
