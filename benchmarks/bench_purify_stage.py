"""Where the time of `nlp purify` goes: model loading, hand-prompt encoding, PromptOT, the rest.

Run from the repository root:

    PYTHONPATH=$PWD python benchmarks/bench_purify_stage.py --classes 100 --n-train 4128

A randomly initialised ViT-B/16-sized CLIP saved as an fp16 OpenAI-layout checkpoint (as the
real weights are), cached features of Caltech101's size (4128 training samples, 100 classes
with CoOp's Caltech101 names when the split file is there) near the hand-prompt prototypes,
half of the labels flipped (`--sym 0.5`). First `nlp purify` as a user runs it (a fresh
process, `--threads`, no cache), then the stage's steps one by one in this process, in the
stage's order: reading the label set and features, loading the CLIP, encoding the hand prompts,
PromptOT, confident learning's check, and the whole `make_partition` once more for its total.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_protocol import synthetic_features
from bench_step import vit_b16

from nlp_cli import clip_model, stages
from nlp_cli import label_issues as cl
from nlp_cli import purify as purifiers
from nlp_cli.data import LABEL_KINDS, load_data
from nlp_cli.stages.purify import text_prototypes


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--n-train", type=int, default=4128)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["NLP_HOME"] = str(tmp / "home")
        ckpt = clip_model.save_checkpoint(vit_b16(), tmp / "vit-b16-random.pt")
        feats = synthetic_features(tmp / "f.safetensors", ckpt, a.classes, a.n_train, 100)
        ls = stages.make_labelset(
            feats, stages.CorruptOptions(kind="sym", rate=0.5, seed=1), tmp / "ls.safetensors"
        ).path
        cmd = [sys.executable, "-m", "nlp_cli", "--threads", str(a.threads), "purify", str(ls)]
        cli_s, _ = timed(
            lambda: subprocess.run(
                cmd + ["--out", str(tmp / "c.safetensors")], check=True, capture_output=True
            )
        )

        read_s, data = timed(lambda: load_data(ls, LABEL_KINDS))
        load_s, loaded = timed(lambda: clip_model.load_for(data.features.meta, device="cpu"))
        text_s, text = timed(lambda: text_prototypes(data.features, loaded, None))
        x, text = data.train_features, text.float()
        ot_s, verdict = timed(
            lambda: purifiers.purify("ot", x, text, data.labels, loaded.logit_scale)
        )
        cl_s, _ = timed(
            lambda: cl.find_label_issues(
                purifiers.class_probs(x, text, loaded.logit_scale), data.labels, x.float()
            )
        )
        stage_s, _ = timed(lambda: stages.make_partition(ls, out=tmp / "p.safetensors"))
    steps = read_s + load_s + text_s + ot_s + cl_s
    rows = [
        ("`nlp purify` (fresh process: interpreter, imports, the stage, writing)", cli_s),
        ("`make_partition` in-process (no imports)", stage_s),
        ("reading the label set and features", read_s),
        ("loading the CLIP checkpoint (ViT-B/16-sized, fp16 file)", load_s),
        (f"encoding the {a.classes} hand prompts (text tower, once)", text_s),
        (
            f"PromptOT ({verdict.info['iterations']} Sinkhorn iterations, "
            f"{'log domain' if verdict.info['log_domain'] else 'scaling form'})",
            ot_s,
        ),
        ("confident learning's check (probabilities, cleanlab counts)", cl_s),
        ("rest of make_partition (detection metrics, metadata, atomic write)", stage_s - steps),
    ]
    print(f"nlp purify, N = {a.n_train}, C = {a.classes}, {a.threads} thread(s)\n")
    print("| step | seconds | share of make_partition |")
    print("|---|---:|---:|")
    for name, s in rows:
        print(f"| {name} | {s:.2f} | {100 * s / stage_s:.0f} % |")
    print("\ncommand: " + " ".join(["python", *sys.argv]), file=sys.stderr)


if __name__ == "__main__":
    main()
