"""Multi-run training: R prompts trained together (train_many) vs the same R runs one by one.

Run from the repository root, e.g.:

    PYTHONPATH=$PWD python benchmarks/bench_multi.py --runs 4 --classes 10 --n-train 256

A ViT-B/16-sized random CLIP and synthetic features (as in bench_protocol.py); the R runs use
seeds 1..R and cycle through ce, dsoftmax, gce, mae. Reports the median wall time of repeats
for both ways, the ratio, and the largest |ctx| difference between them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_protocol import synthetic_features
from bench_step import vit_b16

from nlp_cli import clip_model
from nlp_cli import train as lib

LOSSES = ("ce", "dsoftmax", "gce", "mae")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = clip_model.save_checkpoint(vit_b16(), Path(tmp) / "vit.pt", fp16=False)
        feats = synthetic_features(
            Path(tmp) / "f.safetensors", ckpt, args.classes, args.n_train, 64
        )
        loaded = clip_model.load(str(ckpt), args.device)
        data = lib.load_data(feats)
        configs = [
            lib.make_config(
                "dspt",
                loss=LOSSES[r % len(LOSSES)],
                seed=r + 1,
                epochs=args.epochs,
                device=args.device,
            )
            for r in range(args.runs)
        ]
        together, alone = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            many = lib.train_many([data] * args.runs, configs, loaded=loaded)
            together.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            single = [lib.train_prompt(data, c, loaded=loaded) for c in configs]
            alone.append(time.perf_counter() - t0)
        diff = max((m.ctx - s.ctx).abs().max().item() for m, s in zip(many, single, strict=True))
    a, b = statistics.median(together), statistics.median(alone)
    steps = -(-args.n_train // 32) * args.epochs
    print(
        f"multi-run: {args.runs} runs × {steps} steps, {args.classes} classes, {args.device}, "
        f"{torch.get_num_threads()} threads: together {a:.2f} s, one by one {b:.2f} s, "
        f"{b / a:.2f}x; max |ctx diff| {diff:.1e}"
    )


if __name__ == "__main__":
    main()
