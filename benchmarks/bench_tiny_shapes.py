"""How much a built-in CLIP knows about its generated world: zero-shot, a linear probe and CoOp.

Run from the repository root, e.g.:

    PYTHONPATH=$PWD python benchmarks/bench_tiny_shapes.py
    PYTHONPATH=$PWD python benchmarks/bench_tiny_shapes.py --model /tmp/other.pt --coop-steps 100
    PYTHONPATH=$PWD python benchmarks/bench_tiny_shapes.py --dataset shapes-easy \
        --model tiny-shapes-easy

Generates the world (`--dataset`, default `shapes`; seed 0) in a temporary folder, encodes train and
test with the model's own preprocessing, and reports test accuracy of: zero-shot with "a photo of a
{class}.", a linear probe (logistic regression on the frozen features), and a short CoOp run with
clean labels (16 shared context tokens, the plain 77-token text encoder, Adam, full-batch). Prints
one line.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from nlp_cli import clip_model, datasets
from nlp_cli.prompt import PromptLearner, plain_text_features


@torch.no_grad()
def encode(loaded, ds, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image features and labels of one split."""
    x = torch.stack([loaded.preprocess(Image.open(ds.root / p)) for p in ds.paths[split]])
    feats = torch.cat([loaded.model.encode_image(b).float() for b in x.split(256)])
    return F.normalize(feats, dim=-1), torch.tensor(ds.labels[split])


def linear_probe(xtr, ytr, xte, yte, n_cls: int, steps: int = 300) -> float:
    w = torch.zeros(xtr.shape[1], n_cls, requires_grad=True)
    b = torch.zeros(n_cls, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(steps):
        loss = F.cross_entropy(30 * xtr @ w + b, ytr) + 1e-4 * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float((30 * xte @ w + b).argmax(1).eq(yte).float().mean())


def coop(model, classnames, xtr, ytr, xte, yte, steps: int, lr: float) -> float:
    learner = PromptLearner(model, classnames, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam([learner.ctx], lr=lr)
    scale = model.logit_scale.exp().item()
    for _ in range(steps):
        text = F.normalize(plain_text_features(model, learner), dim=-1)
        loss = F.cross_entropy(scale * xtr @ text.T, ytr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        text = F.normalize(plain_text_features(model, learner), dim=-1)
    return float((xte @ text.T).argmax(1).eq(yte).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="shapes", help="a generated world: shapes, shapes-easy, …")
    ap.add_argument("--model", default="tiny-shapes", help="a name or checkpoint path")
    ap.add_argument("--coop-steps", type=int, default=60)
    ap.add_argument("--coop-lr", type=float, default=1e-2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    loaded = clip_model.load(args.model)
    model = loaded.model
    with tempfile.TemporaryDirectory() as tmp:
        spec = datasets.get(args.dataset)
        if spec.generate is None:
            raise SystemExit(f"{args.dataset} is not a generated world")
        ds = spec.load(spec.generate(Path(tmp), 0))
        xtr, ytr = encode(loaded, ds, "train")
        xte, yte = encode(loaded, ds, "test")
    protos = clip_model.hand_prompt_features(model, ds.classnames)
    zs = float((xte @ protos.T).argmax(1).eq(yte).float().mean())
    probe = linear_probe(xtr, ytr, xte, yte, len(ds.classnames))
    for p in model.parameters():
        p.requires_grad_(False)
    co = coop(model, ds.classnames, xtr, ytr, xte, yte, args.coop_steps, args.coop_lr)
    print(
        f"{args.model}: {len(ds.classnames)} classes (chance {1 / len(ds.classnames):.3f}), "
        f"test zero-shot {zs:.3f}, linear probe {probe:.3f}, CoOp {args.coop_steps} steps "
        f"{co:.3f} ({time.time() - t0:.0f}s)"
    )


if __name__ == "__main__":
    main()
