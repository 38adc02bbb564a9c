"""Hand-prompt prototypes: CLIP's 77-position encode_text vs nlp's truncated encode_texts.

    PYTHONPATH=$PWD python benchmarks/bench_prototypes.py --classes 100 --threads 1

A ViT-B/16-sized random CLIP (text tower 512 × 12), CoOp's Caltech101 class names when
../shared/data has them (else made-up ones), "a photo of a {}."; both paths in one run, median
of repeats, the largest difference of the features.
"""

from __future__ import annotations

import argparse

import torch
from bench_step import classnames, time_it, vit_b16

from nlp_cli import clip_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = vit_b16()
    texts = [f"a photo of a {c}." for c in classnames(args.classes)]
    tokens = clip_model.tokenize(texts)

    def plain():
        with torch.no_grad():
            return model.encode_text(tokens).float()

    def ours():
        return clip_model.encode_texts(model, texts)

    t_plain = time_it(plain, args.repeats, 1)
    t_ours = time_it(ours, args.repeats, 1)
    diff = float((plain() - ours()).abs().max())
    length = int(tokens.argmax(dim=-1).max()) + 1
    print(
        f"{args.classes} classes, {args.threads} thread(s): encode_text {t_plain:.3f} s, "
        f"truncated to {length} positions {t_ours:.3f} s, {t_plain / t_ours:.1f}x, "
        f"max |diff| {diff:.2e}"
    )


if __name__ == "__main__":
    main()
