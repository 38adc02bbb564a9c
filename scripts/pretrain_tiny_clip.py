"""Pretrain the built-in `tiny-shapes-easy` CLIP (for the easy `shapes-easy` world)
contrastively on generated image–caption pairs.

The pairs are not the `shapes-easy` dataset's images: they come from their own seeds, two thirds are
drawn in other styles (outlines, or filled with a dark border), half sit on plain white, paper
or black backgrounds, four more colours and five more shapes add distractor vocabulary, and the
captions come from ten templates ("a drawing of a red star", "a star in red", …), none of them
CoOp's hand prompt "a photo of a {class}." (so "photo" is a word the model never saw). Each
batch is a grid of 8 colours × 8 shapes, so every item has same-colour and same-shape negatives
and colour alone cannot solve the contrastive task. A zero-shot check on a small `shapes`-style
set is logged during training.

    python scripts/pretrain_tiny_clip.py --seed 0 --out nlp_cli/assets/tiny-shapes-easy.pt

The vision tower is a small ModifiedResNet (64 px input, attention-pool grid 2 × 2), the text
tower a 3-layer width-64 transformer with CLIP's vocabulary; saved fp16 in OpenAI's state-dict
layout, so `clip.load(path, jit=False)` rebuilds it.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nlp_cli import clip_model
from nlp_cli.datasets import shapes

TEMPLATES = (
    "a drawing of a {c} {s}",
    "a {c} {s}",
    "a {s} in {c}",
    "a {c} {s} on a plain background",
    "a sketch of a {s} that is {c}",
    "an image of a {c} {s}",
    "a {s} coloured {c}",
    "a picture of a {c} {s}",
    "{c} {s}",
    "the {s} is {c}",
)
STYLES = ("outline", "bordered", "filled")
# Plain backgrounds, or (None) one of the varied kinds of `shapes.background`.
BACKS = ("white", "paper", "black", None, None, None)
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


def build(seed: int, width: int = 16, layers: tuple[int, ...] = (1, 1, 1, 1), embed_dim: int = 64,
          text_width: int = 64, text_layers: int = 3):  # fmt: skip
    """A ModifiedResNet CLIP at 64 px (attention-pool grid 2 × 2), in training mode."""
    model = clip_model.build_tiny(
        seed,
        embed_dim=embed_dim,
        image_resolution=64,
        vision_layers=layers,
        vision_width=width,
        vision_patch_size=None,
        transformer_width=text_width,
        transformer_layers=text_layers,
    )
    return model.train()


def to_tensor(images: list) -> torch.Tensor:
    """uint8 images -> a float batch normalised like CLIP's preprocessing."""
    x = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)
    return (x.float() / 255 - MEAN) / STD


def make_pool(
    seed: int, per_combo: int, colours: list[str], styles: tuple[str, ...] = STYLES
) -> dict[tuple[int, int], torch.Tensor]:
    """Pretraining images per (colour, shape): outline or bordered, on plain backgrounds."""
    pool = {}
    for ci, c in enumerate(colours):
        for si, s in enumerate(shapes.SHAPES):
            ims = []
            for i in range(per_combo):
                rng = random.Random(shapes.item_seed("pretrain", seed, c, s, i))
                ims.append(
                    shapes.draw_item(
                        rng, c, s, style=rng.choice(styles), back=rng.choice(BACKS),
                        n_clutter=rng.randint(0, 4), scale=(0.2, 0.45),
                    )
                )  # fmt: skip
            pool[(ci, si)] = to_tensor(ims).half()
    return pool


def encode_text_short(model, tokens: torch.Tensor, table: torch.Tensor, index: torch.Tensor):
    """model.encode_text with embeddings from `table[index[token]]`, cut after the last EOT.

    Cutting is exact (the transformer is causal and only EOT is read); the compact table holds
    just the rows of the tokens the captions use, so each step updates those rows only.
    """
    n = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :n]
    x = table[index[tokens]] + model.positional_embedding[:n]
    x = x.permute(1, 0, 2)
    mask = torch.full((n, n), float("-inf")).triu_(1)
    for block in model.transformer.resblocks:
        x = x + block.attn(block.ln_1(x), block.ln_1(x), block.ln_1(x), need_weights=False,
                           attn_mask=mask)[0]  # fmt: skip
        x = x + block.mlp(block.ln_2(x))
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


def check_set(seed: int, per_class: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A small `shapes`-style set (filled shapes, varied backgrounds) for the zero-shot check."""
    ims, ys = [], []
    for y, cname in enumerate(shapes.CLASSES):
        colour, shape = cname.split(" ")
        for i in range(per_class):
            ims.append(shapes.draw_item(random.Random(shapes.item_seed("check", seed, y, i)),
                                        colour, shape))  # fmt: skip
            ys.append(y)
    return to_tensor(ims), torch.tensor(ys)


@torch.no_grad()
def zero_shot(model, images: torch.Tensor, labels: torch.Tensor) -> float:
    was = model.training
    model.eval()
    feats = F.normalize(model.encode_image(images).float(), dim=-1)
    protos = clip_model.hand_prompt_features(model, list(shapes.CLASSES))
    acc = float((feats @ protos.T).argmax(1).eq(labels).float().mean())
    model.train(was)
    return acc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--per-combo", type=int, default=64, help="pool images per colour × shape")
    ap.add_argument("--grid", type=int, default=8, help="batch = grid colours × grid shapes")
    ap.add_argument("--width", type=int, default=8, help="ResNet stem width")
    ap.add_argument("--styles", default=",".join(STYLES), help="drawing styles of the pairs")
    ap.add_argument("--check-every", type=int, default=250)
    ap.add_argument("--check-per-class", type=int, default=8, help="images per class to check")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest on a busy 2-core machine)",
    )
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    t0 = time.time()
    rng = random.Random(args.seed)
    colours = list(shapes.COLOURS)
    pool = make_pool(args.seed, args.per_combo, colours, tuple(args.styles.split(",")))
    check_x, check_y = check_set(args.seed, args.check_per_class)
    log(f"pool of {sum(len(v) for v in pool.values())} images in {time.time() - t0:.0f}s")

    model = build(args.seed, width=args.width)
    model.train()
    captions = [t.format(c=c, s=s) + "." for t in TEMPLATES for c in colours for s in shapes.SHAPES]
    used = torch.unique(clip_model.tokenize(captions))
    index = torch.zeros(model.vocab_size, dtype=torch.long)
    index[used] = torch.arange(len(used))
    table = torch.nn.Parameter(model.token_embedding.weight.detach()[used].clone())
    model.token_embedding.weight.requires_grad_(False)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [
        p
        for n, p in model.named_parameters()
        if p.requires_grad and n != "logit_scale" and not (p.ndim >= 2 and "embedding" not in n)
    ] + [table]
    # The temperature gets a larger step: at the base rate it barely leaves its 1/0.07 start
    # in a few thousand steps.
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": 0.05},
            {"params": other, "weight_decay": 0.0},
            {"params": [model.logit_scale], "weight_decay": 0.0, "lr": 5 * args.lr},
        ],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-6,
    )  # fmt: skip
    warm = min(200, args.steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda k: min(1.0, (k + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(k / args.steps, 1))),
    )
    g = args.grid
    for step in range(1, args.steps + 1):
        cs = rng.sample(range(len(colours)), min(g, len(colours)))
        ss = rng.sample(range(len(shapes.SHAPES)), min(g, len(shapes.SHAPES)))
        imgs, texts = [], []
        for ci in cs:
            for si in ss:
                imgs.append(pool[(ci, si)][rng.randrange(args.per_combo)])
                t = rng.choice(TEMPLATES).format(c=colours[ci], s=shapes.SHAPES[si])
                texts.append(t + "." if rng.random() < 0.5 else t)
        x = torch.stack(imgs).float()
        flip = torch.rand(len(x)) < 0.5
        x[flip] = x[flip].flip(-1)
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(
            encode_text_short(model, clip_model.tokenize(texts), table, index), dim=-1
        )
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        target = torch.arange(len(x))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % args.check_every == 0 or step == args.steps:
            with torch.no_grad():
                model.token_embedding.weight[used] = table
            acc = zero_shot(model, check_x, check_y)
            log(f"step {step} loss {loss.item():.3f} scale {model.logit_scale.exp().item():.1f} "
                f"zero-shot check {acc:.3f} ({time.time() - t0:.0f}s)")  # fmt: skip
    with torch.no_grad():
        model.token_embedding.weight[used] = table
    model.eval()
    clip_model.save_checkpoint(model, args.out)
    loaded = clip_model.load(str(args.out))
    acc = zero_shot(loaded.model, check_x, check_y)
    log(f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB, fp16); "
        f"zero-shot check after reload {acc:.3f}; {time.time() - t0:.0f}s in all")  # fmt: skip
    return 0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
