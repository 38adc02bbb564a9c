"""PromptOT's time and peak memory against N: the previous implementation and ours, one run.

Run from the repository root (a git checkout: the previous code is read with `git show`):

    PYTHONPATH=$PWD python benchmarks/bench_purify_memory.py --n 4096 50000 1000000
    PYTHONPATH=$PWD python benchmarks/bench_purify_memory.py --n 4096 50000 --reg 0.001

Every measurement is a subprocess of its own, so that its peak resident memory (ru_maxrss) is
PromptOT's: it draws the features chunk by chunk (float32 [N, D], `clip`-like: about 0.2
cosine to every class prompt, 0.09 more to the right one; a third of the labels flipped),
notes its resident memory, runs `promptot` (torch solver, its defaults: 1000 iterations, stop
1e-6; --threads, default 1) and reports wall time, peak memory, and peak above what the
features already held. `old` is nlp_cli/purify.py at --old-rev (fb1f085: the cost from N × D
float64 copies of the features, the plan stored in the log domain), imported as a module;
`new` is this checkout's. The two runs' pseudo-labels, verdicts and scores are compared; up to
--plan-n samples one more run of each keeps the plan, and the plans are compared too. Prints
a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def make(n: int, c: int, d: int, seed: int = 0, chunk: int = 4096):
    """`clip`-like raw features [N, D] float32, their labels with a third flipped, and text."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    own = torch.nn.functional.normalize(torch.randn(c, d, generator=g), dim=1)
    y = torch.randint(0, c, (n,), generator=g)
    image = torch.empty(n, d)
    for s in range(0, n, chunk):
        noise = torch.randn(min(chunk, n - s), d, generator=g)
        noise = torch.nn.functional.normalize(noise, dim=1)
        image[s : s + chunk] = 0.33 * shared + 0.11 * own[y[s : s + chunk]] + 0.94 * noise
    labels = y.clone()
    labels[::3] = (labels[::3] + 1) % c
    return image, 0.6 * shared + 0.8 * own, labels


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(a: argparse.Namespace) -> None:
    torch.set_num_threads(a.threads)
    if a.module == "new":
        from nlp_cli import purify
    else:
        purify = load_module(Path(a.module), "previous_purify")
    image, text, labels = make(a.n[0], a.classes, a.dim)
    base = rss_mb()
    start = time.perf_counter()
    res = purify.promptot(image, text, labels, 100.0, reg=a.reg, keep_coupling=a.keep)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"pseudo": res.pseudo_labels, "clean": res.clean, "scores": res.scores}
    if a.keep:
        out["plan"] = res.coupling.contiguous()
    torch.save(out, a.save)
    info = {k: res.info[k] for k in ("iterations", "log_domain", "converged")}
    print(json.dumps({"seconds": seconds, "peak": peak, "base": base, **info}))


def run(a: argparse.Namespace, module: str, n: int, save: Path, keep: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", module, "--n", str(n), "--save", str(save)]
    cmd += ["--reg", str(a.reg), "--classes", str(a.classes), "--dim", str(a.dim)]
    cmd += ["--threads", str(a.threads)] + (["--keep"] if keep else [])
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[4096, 50_000])
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--reg", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--old-rev", default="fb1f085")
    p.add_argument("--plan-n", type=int, default=4096, help="Compare plans up to this N.")
    p.add_argument(
        "--old-max-n", type=int, help="Run the old code only up to this N (it needs ~11 GB at 1 M)."
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    p.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        a.module = a.child
        child(a)
        return
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old_src = subprocess.run(
            ["git", "-C", str(root), "show", f"{a.old_rev}:nlp_cli/purify.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        old_path = tmp / "previous_purify.py"
        old_path.write_text(old_src)
        print(
            f"PromptOT, C = {a.classes}, D = {a.dim}, reg = {a.reg:g}, {a.threads} thread(s); "
            f"old = {a.old_rev}, new = this checkout\n"
        )
        print(
            "| N | N × C float64 | old: time | old: peak RSS (above features) | new: time "
            "| new: peak RSS (above features) | peak ratio (above features) | agreement |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---|")
        for n in a.n:
            with_old = a.old_max_n is None or n <= a.old_max_n
            new = run(a, "new", n, tmp / "new.pt")
            rn = torch.load(tmp / "new.pt")
            if with_old:
                old = run(a, str(old_path), n, tmp / "old.pt")
                ro = torch.load(tmp / "old.pt")
                differ = int((ro["pseudo"] != rn["pseudo"]).sum())
                verdicts = int((ro["clean"] != rn["clean"]).sum())
                scores = float((ro["scores"] - rn["scores"]).abs().max())
                agree = f"pseudo-labels differ on {differ}, verdicts on {verdicts}; "
                agree += f"scores to {scores:.1e}"
            else:
                old = {"seconds": math.nan, "peak": math.nan, "base": math.nan}
                agree = "old not run"
            if with_old and n <= a.plan_n:
                run(a, str(old_path), n, tmp / "old.pt", keep=True)
                run(a, "new", n, tmp / "new.pt", keep=True)
                po, pn = torch.load(tmp / "old.pt")["plan"], torch.load(tmp / "new.pt")["plan"]
                rel = float((po - pn).norm() / po.norm())
                agree += f"; plans to {rel:.1e} (relative L2)"
            mode = "log domain" if new["log_domain"] else "scaling form"
            agree += f" ({new['iterations']} it, {mode})"
            nc = n * a.classes * 8 / 2**20
            print(
                f"| {n:,} | {nc:,.0f} MB | {old['seconds']:.1f} s | {old['peak']:,.0f} MB "
                f"(+{old['peak'] - old['base']:,.0f}) | {new['seconds']:.1f} s "
                f"| {new['peak']:,.0f} MB (+{new['peak'] - new['base']:,.0f}) "
                f"| {old['peak'] / new['peak']:.1f}× "
                f"({(old['peak'] - old['base']) / (new['peak'] - new['base']):.1f}×) | {agree} |",
                flush=True,
            )
    print("\ncommand: " + " ".join(["python", *sys.argv]), file=sys.stderr)


if __name__ == "__main__":
    main()
