#!/usr/bin/env bash
# One prepared command for a GPU machine: step time vs the plain path (C = 10/100/1000), a whole
# DSPT-protocol Caltech101-sized run, embedding images/s, a 50-run batched sweep vs one by one,
# peak GPU memory of each; prints one JSON (and writes it with --out FILE).
#   bash benchmarks/gpu_suite.sh [--quick] [--out gpu.json]
# --quick uses a tiny CLIP and small sizes so that the suite runs anywhere, CPU included.
# PYTHON=/path/to/python picks the interpreter (default: python on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
exec env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python}" benchmarks/gpu_suite.py "$@"
