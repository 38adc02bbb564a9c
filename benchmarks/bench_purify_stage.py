"""Where the time of `nlp purify` goes: model loading, hand-prompt encoding, PromptOT, the rest.

Run from the repository root:

    PYTHONPATH=$PWD python benchmarks/bench_purify_stage.py --classes 100 --n-train 4128

A randomly initialised ViT-B/16-sized CLIP saved as an fp16 OpenAI-layout checkpoint (as the
real weights are), cached features of Caltech101's size (4128 training samples, 100 classes
with CoOp's Caltech101 names when the split file is there) near the hand-prompt prototypes,
half of the labels flipped (`--sym 0.5`). First `nlp purify` as a user runs it (a fresh
process, `--threads`, no cache), then, in another fresh process, the stage's steps one by one in
its order: imports, reading the label set and features, loading the CLIP, encoding the hand
prompts, PromptOT, confident learning's check; last the whole `make_partition` once more in that
process (imports done, the CLIP cached), for what the steps leave out (metrics, writing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T0 = time.perf_counter()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def child(ls: str, out: str, threads: int) -> None:
    """The stage's steps in a fresh process, in its order, each timed."""
    import torch

    from nlp_cli import clip_model, stages
    from nlp_cli import label_issues as cl
    from nlp_cli import purify as purifiers
    from nlp_cli.data import LABEL_KINDS, load_data
    from nlp_cli.stages.purify import text_prototypes

    torch.set_num_threads(threads)
    t = {"imports (torch, clip, nlp_cli)": time.perf_counter() - T0}
    t["reading the label set and features"], data = timed(lambda: load_data(ls, LABEL_KINDS))
    t["loading the CLIP checkpoint's text tower (ViT-B/16-sized, fp16 file)"], loaded = timed(
        lambda: clip_model.load_for(data.features.meta, device="cpu", image=False)
    )
    text_s, text = timed(lambda: text_prototypes(data.features, loaded, None))
    t[f"encoding the {text.shape[0]} hand prompts (text tower, once)"] = text_s
    x, text = data.train_features, text.float()
    ot_s, verdict = timed(lambda: purifiers.purify("ot", x, text, data.labels, loaded.logit_scale))
    it, mode = verdict.info["iterations"], verdict.info["log_domain"]
    t[f"PromptOT ({it} Sinkhorn iterations, {'log domain' if mode else 'scaling form'})"] = ot_s
    t["confident learning's check (incl. importing cleanlab)"], _ = timed(
        lambda: cl.find_label_issues(
            purifiers.class_probs(x, text, loaded.logit_scale), data.labels, x.float()
        )
    )
    t["`make_partition` again, warm (imports done, CLIP cached): all of it"], _ = timed(
        lambda: stages.make_partition(ls, out=Path(out))
    )
    print(json.dumps(t))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--n-train", type=int, default=4128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child, a.threads)
        return
    from bench_protocol import synthetic_features
    from bench_step import vit_b16

    from nlp_cli import clip_model, stages

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
                [*cmd, "--out", str(tmp / "c.safetensors")], check=True, capture_output=True
            )
        )
        steps = subprocess.run(
            [sys.executable, __file__, "--child", str(ls), str(tmp / "p.safetensors")]
            + ["--threads", str(a.threads)],
            check=True,
            capture_output=True,
            text=True,
        )
        rows = json.loads(steps.stdout.strip().splitlines()[-1])
    print(f"nlp purify, N = {a.n_train}, C = {a.classes}, {a.threads} thread(s)\n")
    print("| step | seconds |")
    print("|---|---:|")
    print(f"| `nlp purify` as run from the shell (fresh process, no cache) | {cli_s:.2f} |")
    for name, sec in rows.items():
        print(f"| {name} | {sec:.2f} |")
    print("\ncommand: " + " ".join(["python", *sys.argv]), file=sys.stderr)


if __name__ == "__main__":
    main()
