"""JoAPR's mixup: images mixed before the encoder (the reference) vs cached features mixed.

Run from the repository root, e.g.:

    PYTHONPATH=$PWD python benchmarks/bench_joapr_mix.py --pairs 256

Generates `--dataset` (default `shapes`, seed 0), preprocesses random pairs of training images (a,
b), and for each λ compares `encode(λ·a + (1 − λ)·b)` (what yunncheng/JoAPR's forward_backward
trains on) with `norm(λ·f(a) + (1 − λ)·f(b))` (what `nlp_cli.joapr.mixup` trains on): their mean
cosine, and how often the model's prompt-free zero-shot prediction agrees. Also prints how often
JoAPR's `λ = max(λ, 1 − λ)`, `λ ~ Beta(0.001, 0.001)` (its BETA) stays above 0.99. One line per λ.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nlp_cli import clip_model, datasets


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="shapes", help="a generated world")
    parser.add_argument("--model", default="tiny-shapes")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--beta", type=float, default=0.001)
    args = parser.parse_args()
    lam = np.random.default_rng(0).beta(args.beta, args.beta, 100_000)
    lam = np.maximum(lam, 1 - lam)
    print(
        f"Beta({args.beta:g}): P(λ > 0.99) = {(lam > 0.99).mean():.4f}, mean λ = {lam.mean():.4f}"
    )
    loaded = clip_model.load(args.model)
    model = loaded.model.float()
    with tempfile.TemporaryDirectory() as tmp:
        spec = datasets.get(args.dataset)
        ds = spec.load(spec.generate(Path(tmp), 0))
        g = torch.Generator().manual_seed(0)
        n = len(ds.paths["train"])
        ia = torch.randint(n, (args.pairs,), generator=g)
        ib = torch.randint(n, (args.pairs,), generator=g)
        img = lambda i: loaded.preprocess(Image.open(ds.root / ds.paths["train"][int(i)]))  # noqa: E731
        a = torch.stack([img(i) for i in ia])
        b = torch.stack([img(i) for i in ib])
        text = F.normalize(clip_model.hand_prompt_features(model, ds.classnames).float(), dim=-1)
        fa = F.normalize(model.encode_image(a).float(), dim=-1)
        fb = F.normalize(model.encode_image(b).float(), dim=-1)
        for lam in (0.5, 0.7, 0.9, 0.99, 0.999):
            by_image = F.normalize(model.encode_image(lam * a + (1 - lam) * b).float(), dim=-1)
            by_feature = F.normalize(lam * fa + (1 - lam) * fb, dim=-1)
            cos = (by_image * by_feature).sum(dim=1)
            agree = ((by_image @ text.T).argmax(1) == (by_feature @ text.T).argmax(1)).float()
            print(
                f"λ = {lam:g}: cosine mean {cos.mean():.4f} (min {cos.min():.4f}), "
                f"zero-shot argmax agrees {agree.mean():.3f}"
            )


if __name__ == "__main__":
    main()
