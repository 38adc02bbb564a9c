"""What training's per-step progress costs: train_many without `on_step`, with the plain-line
meter and with the Rich bar, side by side in one run.

Run from the repository root, e.g.:

    PYTHONPATH=$PWD python benchmarks/bench_progress.py --repeat 5 --threads 1

A tiny random CLIP (the cheapest step there is, so the callback's share is at its largest) on
synthetic features; the three variants run interleaved, `--repeat` times each, and the line
printed gives the median wall time of each and its ratio to the run without progress. The
meters write to an in-memory console (the bar one forced to be a terminal), with the line
interval of `nlp --progress-interval` (default 10 s) and a 0.001 s one (a line every step).
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_protocol import synthetic_features
from rich.console import Console

from nlp_cli import clip_model
from nlp_cli import train as lib
from nlp_cli.cli import progress


def run(feats: Path, epochs: int, meter: progress.Steps | None) -> float:
    config = lib.make_config(epochs=epochs, batch_size=8, n_ctx=4, device="cpu")
    t0 = time.perf_counter()
    if meter is None:
        lib.train_many([feats], [config])
    else:
        with meter:
            lib.train_many([feats], [config], on_step=lambda e, s, n: meter(e, s, n, epochs))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--n-train", type=int, default=800)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "tiny.pt"
        clip_model.save_checkpoint(clip_model.build_tiny(seed=0), ckpt)
        feats = synthetic_features(Path(tmp) / "f.safetensors", ckpt, 10, args.n_train, 100)
        variants = {
            "none": lambda: None,
            "line (10 s)": lambda: _meter("line", 10.0),
            "line (every step)": lambda: _meter("line", 0.001),
            "bar": lambda: _meter("bar", 10.0),
        }
        run(feats, 1, None)  # warm-up
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeat):
            for name, make in variants.items():
                times[name].append(run(feats, args.epochs, make()))
    steps = args.epochs * -(-args.n_train // 8)
    base = statistics.median(times["none"])
    print(f"{steps} steps, median of {args.repeat}:")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"  {name:<18} {t:7.3f} s  {1e3 * t / steps:6.2f} ms/step  ×{t / base:.3f}")


def _meter(mode: str, interval: float) -> progress.Steps:
    progress.configure(mode, interval)
    console = Console(file=io.StringIO(), force_terminal=mode == "bar", width=120)
    return progress.Steps(console=console)


if __name__ == "__main__":
    main()
