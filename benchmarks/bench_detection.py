"""Noisy-label detection of every purifier, side by side: precision, recall, F1 and AUROC.

Run from the repository root, e.g.:

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/bench_detection.py
    PYTHONPATH=$PWD python benchmarks/bench_detection.py --worlds shapes --noise sym:0.5

Worlds: the generated ones (`shapes`, `shapes-easy`, `shapes-fine`: `nlp download NAME`,
embedded with their own built-in CLIP `tiny-NAME`) and `eurosat` (the real mini EuroSAT of
../shared/data/mini, embedded as a CoOp dataset with `--root` by `--eurosat-model`, default
`tiny-shapes-easy`, skipped when absent). Each noise setting corrupts the
training labels (`nlp corrupt`, seed 1) and runs every registered purifier with the hand
prompt (`nlp purify --method NAME`), then `nlp label-issues --probs probe --splits train`
(cleanlab on an out-of-fold linear probe of the features). Positive = the label is wrong;
AUROC ranks by 1 − score, the estimated probability that the label is wrong. `est` is
confident learning's estimate of the number of wrong labels (`num_label_issues`), `wrong` the
true number, `warnings` the trust checks that fired (nlp_cli/label_issues.py).
Prints a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from nlp_cli import purify, stages
from nlp_cli.embed import EmbedOptions

MINI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mini"
NOISE = ["sym:0.2", "sym:0.5", "sym:0.8", "pair:0.4"]


GENERATED = {"shapes": "tiny-shapes", "shapes-easy": "tiny-shapes-easy",
             "shapes-fine": "tiny-shapes-fine"}  # fmt: skip


def features(world: str, eurosat_model: str) -> Path | None:
    """The world's feature cache (made once under NLP_HOME), or None when its data is absent."""
    if world in GENERATED:
        stages.download(world)
        return stages.embed(world, GENERATED[world], EmbedOptions()).path
    if world == "eurosat":
        if not (MINI / "eurosat").is_dir():
            return None
        return stages.embed("eurosat", eurosat_model, EmbedOptions(), root=MINI).path
    raise SystemExit(f"unknown world {world!r}")


def fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", default="shapes,eurosat")
    parser.add_argument("--eurosat-model", default="tiny-shapes-easy")
    parser.add_argument("--noise", default=",".join(NOISE), help="kind:rate,… (sym, pair)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--methods", default=",".join(purify.list_purifiers()))
    args = parser.parse_args(argv)
    os.environ.setdefault("NLP_HOME", tempfile.mkdtemp(prefix="nlp-bench-"))
    head = "world | noise | method | precision | recall | F1 | AUROC | flagged | est | wrong"
    print(f"| {head} | warnings |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for world in args.worlds.split(","):
        feats = features(world, args.eurosat_model)
        if feats is None:
            print(f"skipped {world}: {MINI / world} is absent", file=sys.stderr)
            continue
        for setting in args.noise.split(","):
            kind, rate = setting.split(":")
            labels = stages.make_labelset(
                feats, stages.CorruptOptions(kind=kind, rate=float(rate), seed=args.seed)
            ).path
            for method in args.methods.split(","):
                res = stages.make_partition(labels, stages.PurifyOptions(method=method))
                det = res.summary["detection"]
                est = res.summary.get("num_label_issues", "")
                warned = ", ".join(w.split(":")[0] for w in res.warnings) or "–"
                print(
                    f"| {world} | {kind} {float(rate):.0%} | {method} | {fmt(det['precision'])} "
                    f"| {fmt(det['recall'])} | {fmt(det['f1'])} | {fmt(det['auroc'])} "
                    f"| {det['n_flagged']} | {est} | {det['n_noisy']} | {warned} |",
                    flush=True,
                )
            # `nlp label-issues --probs probe --splits train`: cleanlab on a linear probe's
            # out-of-fold probabilities instead of CLIP's text prototypes.
            opts = stages.LabelIssueOptions(probs="probe", splits=("train",))
            out = Path(os.environ["NLP_HOME"]) / f"probe-{world}-{kind}-{rate}.csv"
            res = stages.find_label_issues(labels, opts, out)
            det = res.summary["detection"]
            warned = ", ".join(res.summary["warnings"]) or "–"
            print(
                f"| {world} | {kind} {float(rate):.0%} | cleanlab, probe | "
                f"{fmt(det['precision'])} | {fmt(det['recall'])} | {fmt(det['f1'])} "
                f"| {fmt(det['auroc'])} | {det['n_flagged']} | {res.summary['num_label_issues']} "
                f"| {det['n_noisy']} | {warned} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
