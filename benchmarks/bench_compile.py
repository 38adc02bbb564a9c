"""One training step eager vs compiled (`--compile`), and fp32 vs bf16 on the CPU, side by side.

Run from the repository root, e.g.:

    PYTHONPATH=$PWD python benchmarks/bench_compile.py --classes 10 100 --threads 1

The step of `nlp train` (train.StepEncoder: the exact fast text encoder, forward and backward to
the context; cross-entropy on cached features, batch 32; SGD) on a random ViT-B/16-sized CLIP
(text 12 × 512, 8 heads), shared 16-token context, class token at the end. Rows, all in one run:
fp32 eager; fp32 compiled (torch.compile, its default mode off CUDA, reduce-overhead on CUDA);
and with `--bf16`, bf16 autocast (`--precision amp`) and bf16 weights (`--precision bf16`), eager.
The rows' steps are timed interleaved, one of each per round, after a warm-up (the first
compiled call, which compiles, is timed apart); reports the median, each row's ratio to fp32
eager, and how far each row's ctx gradient is from fp32 eager's (max |Δ| / max |g|).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from bench_step import classnames, vit_b16

from nlp_cli import clip_model
from nlp_cli.prompt import PromptLearner
from nlp_cli.train import StepEncoder


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Case:
    """One row's training step at `n_cls` classes; `first` is its first call's seconds (which
    compiles), `grad` the first step's ctx gradient, `ran` StepEncoder.describe()."""

    def __init__(self, model, precision: str, compiled: bool, n_cls: int, device) -> None:
        names = classnames(n_cls)
        self.learner = PromptLearner(model, names, generator=torch.Generator().manual_seed(0))
        self.learner = self.learner.to(device)
        self.optim = torch.optim.SGD([self.learner.ctx], lr=0.0)  # lr 0: every call the same step
        g = torch.Generator().manual_seed(1)
        x = F.normalize(torch.randn(32, model.text_projection.shape[1], generator=g), dim=-1)
        self.x, self.y = x.to(device), torch.randint(n_cls, (32,), generator=g).to(device)
        self.model, self.precision, self.device = model, precision, device
        self.encode = StepEncoder(compiled, device)
        self.times: list[float] = []
        t0 = time.perf_counter()
        self.grad = self.step()
        self.first = time.perf_counter() - t0
        self.step()

    def step(self) -> torch.Tensor:
        with clip_model.autocast(self.device, self.precision):
            text = F.normalize(self.encode(self.model, [self.learner])[0].float(), dim=-1)
            loss = F.cross_entropy(100.0 * self.x @ text.T, self.y)
        self.optim.zero_grad()
        loss.backward()
        self.optim.step()
        sync(self.device)
        return self.learner.ctx.grad.detach().float().clone()

    def timed(self) -> None:
        t0 = time.perf_counter()
        self.step()
        self.times.append(time.perf_counter() - t0)

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)

    @property
    def ran(self) -> str:
        return self.encode.describe()


def side_by_side(cases: list[Case], repeats: int) -> None:
    """Time the cases' steps interleaved (one of each per round), so load drifts hit all alike."""
    for _ in range(repeats):
        for c in cases:
            c.timed()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bf16", action="store_true", help="also bf16 autocast and bf16 weights")
    ap.add_argument("--no-compile", action="store_true", help="leave out the compiled row")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(clip_model.resolve_device(args.device))
    fp32 = vit_b16().to(device)
    rows = [("fp32", False)]
    if not args.no_compile:
        rows.append(("fp32", True))
    if args.bf16:
        rows += [("amp", False), ("bf16", False)]
    models = {"fp32": fp32, "amp": fp32}
    if args.bf16:
        models["bf16"] = clip_model.to_precision(copy.deepcopy(fp32), "bf16")
    bf16_cpu = clip_model.native_bf16("cpu")
    print(
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, batch 32, "
        f"native CPU bf16: {bf16_cpu}",
        flush=True,
    )
    for n in args.classes:
        cases = [Case(models[prec], prec, comp, n, device) for prec, comp in rows]
        side_by_side(cases, args.repeats)
        base = cases[0]
        for (precision, compiled), c in zip(rows, cases, strict=True):
            if compiled and c.ran != "compiled":
                raise SystemExit(f"the compiled row ran {c.ran}")
            err = float((c.grad - base.grad).abs().max() / base.grad.abs().max())
            name = f"{precision} {'compiled' if compiled else 'eager'}"
            print(
                f"{n:>4} classes  {name:<14} {c.seconds * 1e3:8.1f} ms/step  "
                f"x{base.seconds / c.seconds:5.2f} vs fp32 eager  first call {c.first:7.1f} s  "
                f"ctx grad vs fp32 eager {err:.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
