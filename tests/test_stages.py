"""The stage functions called from Python, as README's "From Python" section shows them."""

import re
from pathlib import Path

from nlp_cli import artifacts, stages


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"## From Python.*?```python\n(.*?)```", readme, re.S).group(1)
    code = code.replace('settings={"epochs": 5}', 'settings={"epochs": 1, "n_ctx": 4}')
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.split()
    assert 0.0 <= float(printed[0]) <= 1.0 and float(printed[1]) >= 0.0


def test_stage_results_say_cache_hits_and_never_print(features, tmp_path, capsys):
    opts = stages.CorruptOptions(kind="pair", rate=0.2, seed=3)
    first = stages.make_labelset(features, opts, tmp_path / "l.safetensors")
    again = stages.make_labelset(features, opts, tmp_path / "l.safetensors")
    assert (first.cache_hit, again.cache_hit) == (False, True)
    assert first.summary["n_noisy"] == again.summary["n_noisy"] > 0
    assert any("pair noise" in n for n in first.notes)
    assert capsys.readouterr() == ("", "")
    assert artifacts.load(first.path, "labelset").meta["noise"]["type"] == "pair"
