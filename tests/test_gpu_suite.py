"""benchmarks/gpu_suite.sh --quick runs on this CPU and prints its JSON, so that the suite works
the first time it meets a GPU."""

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_suite_quick_runs_on_cpu(tmp_path):
    out = tmp_path / "suite.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "benchmarks" / "gpu_suite.sh"),
            "--quick",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report == json.loads(out.read_text())
    assert report["device"] == "cpu" and report["quick"] is True
    assert [s["classes"] for s in report["step"]] == [10, 100]
    for s in report["step"]:
        assert s["ours_s"] > 0 and s["plain_s"] > 0 and math.isfinite(s["speedup"])
    assert report["full_run"]["epochs"] == 2 and report["full_run"]["seconds"] > 0
    assert report["batched"]["runs"] == 3 and report["batched"]["speedup"] > 0
    assert report["embed"]["images_per_s"] > 0
    (c,) = report["compile"]
    assert c["classes"] == 10 and c["eager_s"] > 0 and c["compiled_s"] > 0
    assert c["ran"] == "compiled" and c["grad_rel_diff"] < 1e-4
