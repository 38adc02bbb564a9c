"""Cost of the reliability checks: finite/label checks on load, and embed's lock.

Run from the repository root, e.g.:

    PYTHONPATH=$PWD python benchmarks/bench_checks.py --n 50000 --dim 512 --views 2

Writes a features artifact of `--n` training rows (float16, `--dim` wide, `--views` augmented
views) to a temporary folder, then times `artifacts.load` with and without
`artifacts.check_tensors` (best of `--repeat`), and one acquire/release of `artifacts.locked`.
Prints one result line.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from nlp_cli import artifacts


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50000, help="training rows")
    ap.add_argument("--dim", type=int, default=512, help="feature width")
    ap.add_argument("--views", type=int, default=2, help="augmented views per training row")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    g = torch.Generator().manual_seed(0)
    n_test = max(1, args.n // 5)
    tensors = {
        "train.features": torch.randn(args.n, args.dim, generator=g).half(),
        "train.labels": torch.randint(0, args.classes, (args.n,), generator=g),
        "test.features": torch.randn(n_test, args.dim, generator=g).half(),
        "test.labels": torch.randint(0, args.classes, (n_test,), generator=g),
    }
    if args.views:
        tensors["train.views"] = torch.randn(args.views, args.n, args.dim, generator=g).half()
    meta = {"classnames": [f"c{i}" for i in range(args.classes)], "model": {}, "upstream": {}}
    with tempfile.TemporaryDirectory() as tmp:
        path = artifacts.save(Path(tmp) / "f.safetensors", "features", tensors, meta)
        size_mb = path.stat().st_size / 2**20
        with_checks = best(lambda: artifacts.load(path), args.repeat)
        real = artifacts.check_tensors
        artifacts.check_tensors = lambda *a, **k: None
        try:
            without = best(lambda: artifacts.load(path), args.repeat)
        finally:
            artifacts.check_tensors = real

        def lock_once() -> None:
            with artifacts.locked(Path(tmp) / "x.lock"):
                pass

        lock = best(lock_once, args.repeat * 20)
    print(
        f"load {size_mb:.0f} MB features: {without * 1e3:.1f} ms without checks, "
        f"{with_checks * 1e3:.1f} ms with (+{(with_checks - without) * 1e3:.1f} ms); "
        f"lock acquire+release {lock * 1e6:.0f} µs"
    )


if __name__ == "__main__":
    main()
