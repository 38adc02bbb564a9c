"""Seconds for a PromptOT partition of a Food101-sized problem: our torch Sinkhorn vs POT's.

Run from the repository root, e.g.:

    PYTHONPATH=$PWD python benchmarks/bench_purify.py
    PYTHONPATH=$PWD python benchmarks/bench_purify.py --reg 0.001 --features clip --repeats 1

Features: `random` (random class prototypes plus noise) or `clip` (CLIP-like cosine
similarities: about 0.2 to every class prompt, 0.09 more to the right one), 512-d, a third of
the labels flipped. Times the whole partition (cost, Sinkhorn, verdict), median of --repeats;
unless --no-memory, one more run of our Sinkhorn alone on the cost measures its peak resident
memory above what the cost already holds (sampled every millisecond). The reference is
`promptot` with `solver="pot"` (POT on NumPy: `sinkhorn_log` where ours runs in the log
domain, else `sinkhorn`), or with `--pot-backend torch` POT's `sinkhorn_log` on torch tensors
(the same iterations, several times faster than on NumPy). Prints one result line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import warnings

import torch

from nlp_cli import purify


def make(n: int, c: int, d: int, kind: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    if kind == "random":
        text = torch.randn(c, d, generator=g)
        image = text[y] + 1.5 * torch.randn(n, d, generator=g)
    else:
        shared = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
        own = torch.nn.functional.normalize(torch.randn(c, d, generator=g), dim=1)
        noise = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
        text = 0.6 * shared + 0.8 * own
        image = 0.33 * shared + 0.11 * own[y] + 0.94 * noise
    noisy = y.clone()
    noisy[::3] = (noisy[::3] + 1) % c
    return image, text, noisy


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def pot_sinkhorn_log_torch(image, text, labels, reg):
    """POT's sinkhorn_log on torch tensors: pseudo-labels, clean mask, plan, iterations."""
    import ot

    M = purify.promptot_cost(image, text, 100.0)
    n, c = M.shape
    a = torch.full((n,), 1 / n, dtype=torch.float64)
    b = torch.full((c,), 1 / c, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan, log = ot.bregman.sinkhorn_log(a, b, M, reg, numItermax=1000, stopThr=1e-6, log=True)
    pseudo = plan.argmax(dim=1)
    return pseudo, pseudo == labels, plan, int(log["niter"]) + 1


def release_freed_memory() -> None:
    """Have glibc hand freed blocks of 1 MiB or more back at once, so that resident memory
    follows the live tensors (by default it keeps up to 32 MiB blocks for reuse)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_extra_mb(fn) -> float:
    """Peak resident memory while `fn()` runs, above what was resident when it started."""
    start, peak, done = rss_mb(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.001)

    watcher = threading.Thread(target=sample)
    watcher.start()
    try:
        fn()
    finally:
        done.set()
        watcher.join()
    return max(peak[0], rss_mb()) - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--classes", type=int, default=101)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--reg", type=float, default=0.01)
    p.add_argument("--features", choices=("random", "clip"), default="random")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-pot", action="store_true", help="Skip the POT reference timing.")
    p.add_argument("--pot-backend", choices=("numpy", "torch"), default="numpy")
    p.add_argument("--no-memory", action="store_true", help="Skip the memory measurement.")
    a = p.parse_args()
    release_freed_memory()
    image, text, labels = make(a.n, a.classes, a.dim, a.features)

    def ours_once():
        return purify.promptot(image, text, labels, 100.0, reg=a.reg, keep_coupling=True)

    ours, res = timed(ours_once, a.repeats)
    line = (
        f"promptot {a.n}x{a.classes} reg={a.reg:g} ({a.features}): torch {ours:.2f} s "
        f"({res.info['iterations']} it, log_domain={res.info['log_domain']}, "
        f"threads={torch.get_num_threads()})"
    )
    if not a.no_memory:
        M = purify.promptot_cost(image, text, 100.0)
        extra = peak_extra_mb(lambda: purify.sinkhorn(M, reg=a.reg))
        line += (
            f"; Sinkhorn peak memory +{extra:.0f} MB (one N x C float64: {M.nbytes / 2**20:.0f} MB)"
        )
        del M
    if not a.no_pot:
        if a.pot_backend == "torch":
            name = "POT sinkhorn_log (torch backend)"
            theirs, (pseudo, clean, plan, iterations) = timed(
                lambda: pot_sinkhorn_log_torch(image, text, labels, a.reg), a.repeats
            )
        else:

            def pot_once():
                return purify.promptot(
                    image, text, labels, 100.0, reg=a.reg, solver="pot", keep_coupling=True
                )

            theirs, ref = timed(pot_once, a.repeats)
            name = f"POT {ref.info['pot_method']} (NumPy)"
            pseudo, clean, plan = ref.pseudo_labels, ref.clean, ref.coupling
            iterations = ref.info["iterations"]
        differ = res.pseudo_labels != pseudo
        top2 = plan.topk(2, dim=1).values
        ties = int((differ & (top2[:, 0] - top2[:, 1] <= 1e-9 * top2[:, 0])).sum())
        rel = float((res.coupling - plan).norm() / plan.norm())
        line += (
            f"; {name} {theirs:.2f} s ({iterations} it, {theirs / ours:.1f}x); "
            f"pseudo-labels agree on {1 - float(differ.double().mean()):.4%} "
            f"({int(differ.sum())} differ, {ties} of them ties), "
            f"verdicts on {float((clean == res.clean).double().mean()):.4%}, "
            f"plan relative L2 difference {rel:.1e}"
        )
    print(line)
    print("command: " + " ".join(["python", *sys.argv]), file=sys.stderr)


if __name__ == "__main__":
    main()
