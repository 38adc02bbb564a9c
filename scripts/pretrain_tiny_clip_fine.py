"""Pretrain the built-in `tiny-shapes-fine` CLIP contrastively on generated image–caption pairs.

The pairs are not the `shapes-fine` dataset's images: they come from their own seeds, two thirds are
drawn in other styles (outlines, or filled with a dark border), many sit on plain white, paper or
black backgrounds, one more colour and four more shapes add distractor vocabulary, and about half
are edited (grayscale, negative, dark, faded, blurry). The captions are web-like: of varied
length and structure ("on a striped background , a dim render of a tiny red circle", "in this
grayscale image there is a blue star"), the edit words before the class words and changing what
they mean in the image, so the text tower learns to read the whole caption. They never say
"photo" (CoOp's hand prompt "a photo of a {class}." is not their style, as web captions are not
CoOp's template). Each batch is a grid of 8 colours × 8 shapes, so every item has same-colour
and same-shape negatives. Zero-shot and untrained-context checks on a small `shapes-fine`-style set
are logged during training.

    python scripts/pretrain_tiny_clip_fine.py --seed 0 --out nlp_cli/assets/tiny-shapes-fine.pt

The vision tower is a small ModifiedResNet (64 px input, attention-pool grid 2 × 2), the text
tower a 6-layer width-64 transformer with CLIP's vocabulary; the temperature learns up to CLIP's
clamp of 100. Saved fp16 in OpenAI's state-dict layout, so `clip.load(path, jit=False)` rebuilds
it.
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
from PIL import Image, ImageFilter

from nlp_cli import clip_model
from nlp_cli.datasets import shapes_fine as shapes
from nlp_cli.prompt import PromptLearner, plain_text_features

NOUNS = ("picture", "image", "drawing", "snapshot", "rendering", "render", "scan", "frame")
# Image edits and the words captions use for them. The words sit before the class words and
# change what the class words mean in the image (a "negative" red is cyan, a "grayscale" one has
# no colour at all), so the text tower must read the whole caption, not just its last two words.
EDITS: dict[str, tuple[str, ...]] = {
    "plain": ("", "simple", "clean", "sharp", "small", "cropped", "nice", "digital"),
    "grayscale": ("grayscale", "black and white", "monochrome"),
    "negative": ("negative", "inverted", "colour inverted"),
    "dark": ("dark", "dim", "underexposed"),
    "faded": ("faded", "washed out", "pale"),
    "blurry": ("blurry", "out of focus", "soft"),
}
EDIT_WEIGHTS = (0.45, 0.1, 0.1, 0.12, 0.12, 0.11)
BACKS = ("white", "paper", "black", "solid", "gradient", "stripes", "noise")
BACK_WORDS = {
    "white": ("white", "blank white"), "paper": ("paper", "light grey"), "black": ("black", "dark"),
    "solid": ("plain", "flat coloured"), "gradient": ("gradient", "shaded"),
    "stripes": ("striped", "lined"), "noise": ("noisy", "mottled"),
}  # fmt: skip
STYLES = ("outline", "bordered", "filled")
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


def edit(img: Image.Image, kind: str, rng: random.Random) -> Image.Image:
    """The image edit a caption's edit words describe."""
    x = np.asarray(img, dtype=float)
    if kind == "grayscale":
        x = np.repeat((x @ np.array([0.299, 0.587, 0.114]))[..., None], 3, axis=-1)
    elif kind == "negative":
        x = 255 - x
    elif kind == "dark":
        x = x * rng.uniform(0.3, 0.5)
    elif kind == "faded":
        a = rng.uniform(0.45, 0.6)
        x = x * (1 - a) + 255 * a
    elif kind == "blurry":
        return img.filter(ImageFilter.GaussianBlur(rng.uniform(1.5, 2.5)))
    return Image.fromarray(np.clip(x, 0, 255).round().astype(np.uint8))


def _a(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def caption(rng: random.Random, colour: str, shape: str, info: dict) -> str:
    """A web-style caption: varied length and structure, the class words mostly at the end."""
    words = EDITS[info["edit"]]
    adj = rng.choice(words) if info["edit"] == "plain" or rng.random() < 0.9 else ""
    size = ""
    if rng.random() < 0.4:
        size = {"small": "tiny ", "large": "big ", "medium": ""}[info["size"]]
    obj = f"{size}{colour} {shape}"
    noun = "outline" if info["style"] == "outline" and rng.random() < 0.5 else rng.choice(NOUNS)
    lead = _a(f"{adj} {noun}".strip())
    back = f"{rng.choice(BACK_WORDS[info['back']])} background"
    form = rng.randrange(8)
    if form == 0:
        text = f"{lead} of {_a(obj)}"
    elif form == 1:
        text = f"{lead} of {_a(obj)} on {_a(back)}"
    elif form == 2:
        text = f"on {_a(back)} , {lead} of {_a(obj)}"
    elif form == 3:
        text = f"in this {adj} {noun} there is {_a(obj)}".replace("  ", " ")
    elif form == 4:
        text = f"{lead} showing {_a(obj)}"
    elif form == 5:
        text = f"{adj} {obj}".strip() if adj else obj
    elif form == 6:
        text = f"{lead} with {_a(back)} and {_a(obj)}"
    else:
        text = f"on {_a(back)} , in this {adj} {noun} we can see {_a(obj)}".replace("  ", " ")
    return text + "." if rng.random() < 0.5 else text


def build(seed: int, width: int = 16, layers: tuple[int, ...] = (1, 1, 1, 1), embed_dim: int = 64,
          text_width: int = 64, text_layers: int = 6):  # fmt: skip
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
) -> dict[tuple[int, int], tuple[torch.Tensor, list[dict]]]:
    """Pretraining images per (colour, shape), each with what its caption may say about it."""
    pool = {}
    for ci, c in enumerate(colours):
        for si, s in enumerate(shapes.SHAPES):
            ims, infos = [], []
            for i in range(per_combo):
                rng = random.Random(shapes.item_seed("pretrain", seed, c, s, i))
                info = {"style": rng.choice(styles), "back": rng.choice(BACKS)}
                info["edit"] = rng.choices(list(EDITS), EDIT_WEIGHTS)[0]
                scale = rng.uniform(0.2, 0.45)
                info["size"] = "small" if scale < 0.27 else "large" if scale > 0.38 else "medium"
                img = shapes.draw_item(
                    rng, c, s, style=info["style"], back=info["back"],
                    n_clutter=rng.randint(0, 4), scale=(scale, scale),
                )  # fmt: skip
                img = shapes.camera(img, rng, cast=0.06, noise=3.0)
                ims.append(edit(img, info["edit"], rng))
                infos.append(info)
            pool[(ci, si)] = (to_tensor(ims).half(), infos)
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


def compact_table(model, texts: list[str]):
    """The rows of the token embedding that `texts` use, as one trainable table, with the index
    from token id to row; the full embedding is frozen (see `encode_text_short`)."""
    used = torch.unique(clip_model.tokenize(texts))
    index = torch.zeros(model.vocab_size, dtype=torch.long)
    index[used] = torch.arange(len(used))
    table = torch.nn.Parameter(model.token_embedding.weight.detach()[used].clone())
    model.token_embedding.weight.requires_grad_(False)
    return used, index, table


def optimiser(model, table: torch.Tensor, lr: float, steps: int, scale_lr: float = 20.0):
    """AdamW (weight decay on matrices only) with warm-up and cosine decay; the temperature
    gets `scale_lr` times the base step: at the base rate it barely leaves its 1/0.07 start in a
    few thousand steps, where CLIP's reaches its clamp of 100."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [
        p
        for n, p in model.named_parameters()
        if p.requires_grad and n != "logit_scale" and not (p.ndim >= 2 and "embedding" not in n)
    ] + [table]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": 0.05},
            {"params": other, "weight_decay": 0.0},
            {"params": [model.logit_scale], "weight_decay": 0.0, "lr": scale_lr * lr},
        ],
        lr=lr, betas=(0.9, 0.98), eps=1e-6,
    )  # fmt: skip
    warm = min(200, steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda k: min(1.0, (k + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(k / steps, 1))),
    )
    return opt, sched


def contrastive_step(
    model, imgs, texts, table, index, opt, sched, token_norm: float
) -> torch.Tensor:
    """One step of CLIP's symmetric contrastive loss on paired images (half flipped) and
    captions; the temperature is clamped at 100 and, with `token_norm` > 0, every token row is
    put back at that L2 norm. Returns the loss."""
    x = torch.stack(imgs).float()
    flip = torch.rand(len(x)) < 0.5
    x[flip] = x[flip].flip(-1)
    img = F.normalize(model.encode_image(x), dim=-1)
    txt = F.normalize(encode_text_short(model, clip_model.tokenize(texts), table, index), dim=-1)
    logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
    target = torch.arange(len(x))
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
        if token_norm > 0:
            table.mul_(token_norm / table.norm(dim=1, keepdim=True))
    return loss


def check_set(seed: int, per_class: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A small `shapes-fine`-style set (filled, varied backgrounds, camera look) for checks."""
    ims, ys = [], []
    for y, cname in enumerate(shapes.CLASSES):
        colour, shape = cname.split(" ")
        for i in range(per_class):
            rng = random.Random(shapes.item_seed("check", seed, y, i))
            ims.append(shapes.camera(shapes.draw_item(rng, colour, shape), rng))
            ys.append(y)
    return to_tensor(ims), torch.tensor(ys)


@torch.no_grad()
def zero_shot(model, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Accuracy on the check set of the hand prompt and of an untrained 16-token context."""
    was = model.training
    model.eval()
    feats = F.normalize(model.encode_image(images).float(), dim=-1)
    protos = clip_model.hand_prompt_features(model, list(shapes.CLASSES))
    acc = float((feats @ protos.T).argmax(1).eq(labels).float().mean())
    learner = PromptLearner(model, list(shapes.CLASSES), generator=torch.Generator().manual_seed(1))
    text = F.normalize(plain_text_features(model, learner).float(), dim=-1)
    untrained = float((feats @ text.T).argmax(1).eq(labels).float().mean())
    model.train(was)
    return acc, untrained


def parser(
    doc: str, *, per_combo: int, per_combo_help: str, grid_help: str, text_layers: int
) -> argparse.ArgumentParser:
    """The options every tiny-CLIP pretraining script takes, with its own defaults."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--per-combo", type=int, default=per_combo, help=per_combo_help)
    ap.add_argument("--grid", type=int, default=8, help=grid_help)
    ap.add_argument("--width", type=int, default=8, help="ResNet stem width")
    ap.add_argument("--text-layers", type=int, default=text_layers, help="text transformer depth")
    # 0.16 = 0.02 · √64, the norm of a N(0, 0.02²) vector of width 64: CLIP's token scale (its
    # init) and CoOp's random context's, so 16 random context vectors look like 16 words.
    ap.add_argument(
        "--token-norm", type=float, default=0.16,
        help="keep every trained token embedding at this L2 norm (0: free)",
    )  # fmt: skip
    ap.add_argument("--check-every", type=int, default=250)
    ap.add_argument("--check-per-class", type=int, default=8, help="images per class to check")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest on a busy 2-core machine)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser(
        __doc__,
        per_combo=48,
        per_combo_help="pool images per colour × shape",
        grid_help="batch = grid colours × grid shapes",
        text_layers=6,
    )
    ap.add_argument("--styles", default=",".join(STYLES), help="drawing styles of the pairs")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    t0 = time.time()
    rng = random.Random(args.seed)
    colours = list(shapes.COLOURS)
    pool = make_pool(args.seed, args.per_combo, colours, tuple(args.styles.split(",")))
    check_x, check_y = check_set(args.seed, args.check_per_class)
    log(f"pool of {sum(len(v[1]) for v in pool.values())} images in {time.time() - t0:.0f}s")

    model = build(args.seed, width=args.width, text_layers=args.text_layers)
    model.train()
    probe = random.Random(args.seed + 1)
    captions = [
        caption(probe, c, s, {"edit": e, "style": st, "back": b, "size": z})
        for c in colours for s in shapes.SHAPES for e in EDITS for st in STYLES for b in BACKS
        for z in ("small", "medium", "large") for _ in range(2)
    ]  # fmt: skip
    words = {w for e in EDITS.values() for w in e} | set(NOUNS) | set(colours) | set(shapes.SHAPES)
    words |= {w for ws in BACK_WORDS.values() for w in ws}
    words |= {"tiny", "big", "outline", "background", "in", "this", "there", "is", "showing"}
    words |= {"we", "can", "see"}
    words |= {"with", "and", "on", "of", "a", "an", ",", "."}
    used, index, table = compact_table(model, [*captions, *sorted(words)])
    opt, sched = optimiser(model, table, args.lr, args.steps)
    g = args.grid
    for step in range(1, args.steps + 1):
        cs = rng.sample(range(len(colours)), min(g, len(colours)))
        ss = rng.sample(range(len(shapes.SHAPES)), min(g, len(shapes.SHAPES)))
        imgs, texts = [], []
        for ci in cs:
            for si in ss:
                ims, infos = pool[(ci, si)]
                k = rng.randrange(len(infos))
                imgs.append(ims[k])
                texts.append(caption(rng, colours[ci], shapes.SHAPES[si], infos[k]))
        loss = contrastive_step(model, imgs, texts, table, index, opt, sched, args.token_norm)
        if step % args.check_every == 0 or step == args.steps:
            with torch.no_grad():
                model.token_embedding.weight[used] = table
            acc, untrained = zero_shot(model, check_x, check_y)
            log(f"step {step} loss {loss.item():.3f} scale {model.logit_scale.exp().item():.1f} "
                f"zero-shot check {acc:.3f} untrained {untrained:.3f} "
                f"({time.time() - t0:.0f}s)")  # fmt: skip
    with torch.no_grad():
        model.token_embedding.weight[used] = table
    model.eval()
    clip_model.save_checkpoint(model, args.out)
    loaded = clip_model.load(str(args.out))
    acc, untrained = zero_shot(loaded.model, check_x, check_y)
    log(f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB, fp16); zero-shot check after "
        f"reload {acc:.3f}, untrained {untrained:.3f}; {time.time() - t0:.0f}s in all")  # fmt: skip
    return 0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
