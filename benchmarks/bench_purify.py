"""Seconds for a PromptOT partition of a Food101-sized problem: our torch Sinkhorn vs POT's.

Run from the repository root, e.g.:

    PYTHONPATH=$PWD python benchmarks/bench_purify.py
    PYTHONPATH=$PWD python benchmarks/bench_purify.py --n 50000 --classes 101 --reg 0.001

Features are random class prototypes plus noise (512-d, like ViT-B/16), a third of the labels
flipped. Times the whole `promptot` call (cost, Sinkhorn, verdict); median of --repeats.
Prints one result line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from nlp_cli import purify


def make(n: int, c: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(c, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    image = text[y] + 1.5 * torch.randn(n, d, generator=g)
    noisy = y.clone()
    noisy[::3] = (noisy[::3] + 1) % c
    return image, text, noisy


def timed(fn, repeats: int) -> tuple[float, purify.PartitionResult]:
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--classes", type=int, default=101)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--reg", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-pot", action="store_true", help="Skip the POT reference timing.")
    a = p.parse_args()
    image, text, labels = make(a.n, a.classes, a.dim)

    def run(solver: str):
        return purify.promptot(image, text, labels, 100.0, reg=a.reg, solver=solver)

    ours, res = timed(lambda: run("torch"), a.repeats)
    line = (
        f"promptot {a.n}x{a.classes} reg={a.reg:g}: torch {ours:.2f} s "
        f"({res.info['iterations']} it, log_domain={res.info['log_domain']}, "
        f"threads={torch.get_num_threads()})"
    )
    if not a.no_pot:
        theirs, ref = timed(lambda: run("pot"), a.repeats)
        agree = float((ref.clean == res.clean).double().mean())
        line += f"; POT {theirs:.2f} s ({theirs / ours:.1f}x); verdicts agree on {agree:.4%}"
    print(line)
    print("command: " + " ".join(["python", *sys.argv]), file=sys.stderr)


if __name__ == "__main__":
    main()
