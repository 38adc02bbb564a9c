"""One training step's text encoder at C = 100, 1000, 21 000 classes: chunked vs unchunked.

Run from the repository root, e.g.:

    PYTHONPATH=$PWD python benchmarks/bench_scale_classes.py --threads 1

A random text tower of ViT-B/16's size (width 512, 12 layers, 8 heads, frozen), a shared
16-token context at the end, random class names of 1-3 made-up words (ImageNet-like lengths),
cached image features of a batch of 32, CE, forward and backward to the context
(prompt.text_features_many). Each (C, encoder) cell runs in a fresh child process.

Memory, two ways. "step MiB (RSS)": the child's peak resident set (ru_maxrss from os.wait4)
minus its resident set just before the step: what the step adds, transient tensors included
(torch's CPU allocator keeps no peak counter and tracemalloc does not see its allocations, hence
RSS). "saved for backward MiB": the bytes of the distinct storages autograd keeps from the
forward for the backward (torch.autograd.graph.saved_tensors_hooks, counted once per storage);
what a checkpointed chunk drops and recomputes is not kept, so it is not counted. Unchunked
cells above --max-unchunked classes are not run (they would not fit beside other users' jobs).

`--before DIR` adds, up to --max-unchunked classes, the unchunked step of another copy of the
package; e.g. the encoder that concatenated the shared prefix's keys/values to every class's in
every layer: `mkdir /tmp/before && git archive fb1f085 nlp_cli | tar -x -C /tmp/before`, then
`--before /tmp/before`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time


def child(n_cls: int, chunk: int, threads: int, repeats: int) -> None:
    import resource

    import torch
    import torch.nn.functional as F

    from nlp_cli import clip_model
    from nlp_cli.prompt import PromptLearner, text_features_many

    torch.set_num_threads(threads)
    model = clip_model.build_tiny(
        seed=0, embed_dim=512, transformer_width=512, transformer_layers=12, vision_width=64
    )
    for p in model.parameters():
        p.requires_grad_(False)
    rng = random.Random(n_cls)
    letters = "abcdefghijklmnopqrstuvwxyz"
    names = [
        " ".join(
            "".join(rng.choice(letters) for _ in range(rng.randint(3, 9)))
            for _ in range(rng.randint(1, 3))
        )
        for _ in range(n_cls)
    ]
    learner = PromptLearner(model, names, n_ctx=16, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    images = F.normalize(torch.randn(32, 512, generator=g), dim=-1)
    labels = torch.randint(0, n_cls, (32,), generator=g)
    # chunk -1: call as the previous package did (it had no class_chunk)
    kw = {} if chunk < 0 else {"class_chunk": chunk}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, saved = [], {}

    def pack(t):
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    for _ in range(repeats):
        saved.clear()
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            text = text_features_many(model, [learner], **kw)[0]
            logits = 100.0 * images @ F.normalize(text, dim=-1).T
            loss = F.cross_entropy(logits, labels)
        loss.backward()
        times.append(time.perf_counter() - start)
        learner.ctx.grad = None
    eot = learner.tokenized.argmax(dim=-1)
    out = {
        "before_kib": before,
        "step_s": min(times),
        "saved_mib": sum(saved.values()) / 2**20,
        "tokens": int((eot - 16).sum()),
    }
    print(json.dumps(out))


def run_cell(n_cls: int, chunk: int, threads: int, repeats: int, path: str = "") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if path:
        env["PYTHONPATH"] = path
    cmd = [sys.executable, __file__, "--child", str(n_cls), str(chunk), str(threads), str(repeats)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"C={n_cls} chunk={chunk}: the child failed ({status})")
    cell = json.loads(out.strip().splitlines()[-1])
    cell["peak_mib"] = usage.ru_maxrss / 1024
    cell["step_mib"] = (usage.ru_maxrss - cell["before_kib"]) / 1024
    return cell


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*(int(a) for a in sys.argv[2:6]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[100, 1000, 21000])
    ap.add_argument("--chunk", type=int, default=256, help="classes per chunk (chunked cells)")
    ap.add_argument("--max-unchunked", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="steps per cell; the fastest counts")
    ap.add_argument("--before", default="", help="another copy of nlp_cli to compare with")
    args = ap.parse_args()
    print(
        "| C | suffix tokens | encoder | step | step MiB (RSS) | saved for backward MiB "
        "| time / unchunked | saved / unchunked |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for n_cls in args.classes:
        cells = []
        if n_cls <= args.max_unchunked:
            cells.append(("unchunked", run_cell(n_cls, 0, args.threads, args.repeats)))
            if args.before:
                old = run_cell(n_cls, -1, args.threads, args.repeats, args.before)
                cells.append(("before (prefix per class)", old))
        if n_cls > args.chunk:
            chunked = run_cell(n_cls, args.chunk, args.threads, args.repeats)
            cells.append((f"chunks of {args.chunk}", chunked))
        base = cells[0][1] if cells[0][0] == "unchunked" else None
        for name, c in cells:
            t = f"{c['step_s'] / base['step_s']:.2f}" if base else "—"
            m = f"{c['saved_mib'] / base['saved_mib']:.2f}" if base else "—"
            print(
                f"| {n_cls} | {c['tokens']} | {name} | {c['step_s']:.2f} s | {c['step_mib']:.0f} "
                f"| {c['saved_mib']:.0f} | {t} | {m} |"
            )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
