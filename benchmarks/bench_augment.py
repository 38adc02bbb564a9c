"""Cached augmented views vs CoOp's fresh crops every epoch, in the offline world.

    PYTHONPATH=$PWD python benchmarks/bench_augment.py --threads 1 [--views 10] [--epochs 50]
    PYTHONPATH=$PWD python benchmarks/bench_augment.py --dataset shapes-easy \
        --model tiny-shapes-easy

CoOp's loader draws a fresh random resized crop (0.08–1) + flip of every image every epoch, so
its image encoder runs in the loop. `nlp` caches features once: `--augment views` draws each
epoch one of K views cached by `nlp embed --views K`, `--augment online` does what CoOp does
(encoding every training image every epoch), `--augment none` uses the center crop only. This
runs the three on the same label sets (clean, and sym 80 %) with the DSPT protocol and reports
the mean test accuracy of the last five epochs and the wall time of each, side by side.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from nlp_cli import stages
from nlp_cli.embed import EmbedOptions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--loss", default="dsoftmax")
    ap.add_argument("--dataset", default="shapes", help="a generated world")
    ap.add_argument("--model", default="tiny-shapes")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    stages.download(args.dataset)
    plain = stages.embed(args.dataset, args.model, EmbedOptions()).path
    viewed = stages.embed(args.dataset, args.model, EmbedOptions(views=args.views)).path
    rows = []
    for noise in (None, 0.8):
        for augment, feats in (("none", plain), ("views", viewed), ("online", plain)):
            kind = "none" if noise is None else "sym"
            labels = stages.make_labelset(feats, stages.CorruptOptions(kind, noise, seed=1)).path
            opts = stages.TrainOptions(
                losses=[args.loss],
                protocol="dspt",
                settings={"epochs": args.epochs, "augment": augment},
            )
            t0 = time.perf_counter()
            (res,) = stages.train_prompts([labels], opts)
            seconds = time.perf_counter() - t0
            rows.append(
                {
                    "noise": kind if noise is None else f"sym {noise:g}",
                    "augment": augment,
                    "last5_acc": res.summary["last5_mean_acc"],
                    "seconds": seconds,
                    "cached": res.cache_hit,
                }
            )
    print(json.dumps(rows, indent=1))
    print("\n| labels | augment | last-5 acc (%) | train time (s) |\n|---|---|---:|---:|")
    for r in rows:
        print(
            f"| {r['noise']} | {r['augment']} | {100 * r['last5_acc']:.2f} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
