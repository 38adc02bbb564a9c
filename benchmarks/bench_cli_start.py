"""Start-up time of the `nlp` command: help, the catalog and TAB, beside `import torch`.

Run from the repository root, e.g.:

    PYTHONPATH=$PWD python benchmarks/bench_cli_start.py --repeat 11

Times each command as a fresh process (`python -m nlp_cli …`, output discarded), the runs of
all commands interleaved so that a change in the machine's load hits them alike, and prints the
median wall time of each with its ratio to `python -c "import torch"` measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

PY = sys.executable
CASES = {
    "python -c pass": [PY, "-c", "pass"],
    "nlp --help": [PY, "-m", "nlp_cli", "--help"],
    "nlp train --help": [PY, "-m", "nlp_cli", "train", "--help"],
    "nlp download --list": [PY, "-m", "nlp_cli", "download", "--list"],
    "TAB: nlp train --loss ": [PY, "-m", "nlp_cli"],
    'python -c "import torch"': [PY, "-c", "import torch"],
}
TAB = {"_NLP_COMPLETE": "complete_bash", "COMP_WORDS": "nlp train --loss ", "COMP_CWORD": "3"}


def wall(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=11, help="runs per command (median reported)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "NLP_HOME": home}
        times: dict[str, list[float]] = {name: [] for name in CASES}
        for name, cmd in CASES.items():  # one warm-up run each: the file cache, .pyc files
            wall(cmd, {**env, **TAB} if name.startswith("TAB") else env)
        for _ in range(args.repeat):
            for name, cmd in CASES.items():
                times[name].append(wall(cmd, {**env, **TAB} if name.startswith("TAB") else env))

    torch = statistics.median(times['python -c "import torch"'])
    print(f"median of {args.repeat} runs; load average {os.getloadavg()[0]:.1f}")
    print(f"{'command':<28} {'wall':>8} {'÷ import torch':>15}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<28} {med * 1000:>6.0f} ms {med / torch:>14.2f}")


if __name__ == "__main__":
    main()
