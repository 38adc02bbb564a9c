"""A learner's start: CLIP's BPE tokenizer built once per process vs once per class name.

Run from the repository root, e.g.:

    PYTHONPATH=$PWD python benchmarks/bench_tokenizer.py --classes 56 --repeats 3

`PromptLearner` measures every class name in BPE tokens. Building clip-anytorch's
`SimpleTokenizer` reads and parses its gzipped merge list; `clip_model.bpe_encode` builds it once
per process (`_simple_tokenizer`), where it used to build one per name. This times, interleaved
in one run, the learner's construction on a tiny CLIP both ways (the old way by clearing the
cache before every name) and prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nlp_cli import clip_model
from nlp_cli.prompt import PromptLearner


def build(model, names: list[str], per_name: bool) -> float:
    encode = clip_model.bpe_encode
    if per_name:

        def fresh(m, text):  # the former behaviour: a new tokenizer for every call
            clip_model._simple_tokenizer.cache_clear()
            return encode(m, text)

        clip_model.bpe_encode = fresh
    try:
        t = time.perf_counter()
        PromptLearner(model, names, generator=torch.Generator().manual_seed(0))
        return time.perf_counter() - t
    finally:
        clip_model.bpe_encode = encode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=56)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = clip_model.build_tiny(seed=0)
    names = [f"class {i} on blue" for i in range(args.classes)]
    clip_model.bpe_encode(model, "warm up")  # imports clip, builds the cached tokenizer
    once, every = [], []
    for _ in range(args.repeats):
        every.append(build(model, names, per_name=True))
        clip_model._simple_tokenizer.cache_clear()
        once.append(build(model, names, per_name=False))  # includes building it once
    a, b = statistics.median(every), statistics.median(once)
    print(
        f"C = {args.classes}: tokenizer per name {a:.2f} s, once per process {b:.3f} s, "
        f"{a / b:.0f}x"
    )


if __name__ == "__main__":
    main()
