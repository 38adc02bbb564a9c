"""One CoOp training step, ours vs the plain path, on a ViT-B/16-sized random CLIP.

Run from the repository root, e.g.:

    PYTHONPATH=$PWD python benchmarks/bench_step.py --classes 10 100

Plain path (CoOp as published): the image encoder on the batch's images, the 77-token text
encoder on every class prompt, forward and backward to the context; plain text path: the same
77-token text encoder on cached image features (what the text encoder alone saves). Ours:
cached image features, the exact fast text encoder (prompt.text_features). All with frozen
weights, batch 32, shared 16-token context, class token at the end, timed in interleaved rounds.
Reports the median of repeats, the speed-up measured in
the same run, the tokens each path pushes through the text transformer and the achieved FLOP/s
(matmul FLOPs of the tokens actually encoded; backward counted as one more forward, since no
weight gradients are formed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nlp_cli import clip_model
from nlp_cli.prompt import PromptLearner, plain_text_features, shared_prefix_len, text_features

WORDS = [
    "red",
    "sea",
    "lion",
    "golden",
    "retriever",
    "annual",
    "crop",
    "land",
    "river",
    "forest",
    "pizza",
    "apple",
    "pie",
    "bonsai",
    "wild",
    "cat",
    "stop",
    "sign",
]


SPLITS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "coop-splits"
SPLITS = {
    100: SPLITS_DIR / "split_zhou_Caltech101.json",
    10: SPLITS_DIR / "split_zhou_EuroSAT.json",
}


def vit_b16(seed: int = 0):
    """A randomly initialised CLIP of ViT-B/16's shape (image 224, patch 16, text 512 × 12)."""
    clip = clip_model._clip()
    torch.manual_seed(seed)
    model = clip.model.CLIP(
        embed_dim=512,
        image_resolution=224,
        vision_layers=12,
        vision_width=768,
        vision_patch_size=16,
        context_length=77,
        vocab_size=49408,
        transformer_width=512,
        transformer_heads=8,
        transformer_layers=12,
    ).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def classnames(n: int) -> list[str]:
    """n class names: CoOp's Caltech101 (100) or EuroSAT (10) names when the split files are
    there, else distinct made-up names of one to three words."""
    split = SPLITS.get(n)
    if split is not None and split.exists():
        data = json.loads(split.read_text())
        return sorted({c for _, _, c in data["train"]})
    names = list(WORDS)
    names += [f"{a} {b}" for a in WORDS for b in WORDS if a != b]
    names += [f"{a} {b} {c}" for a in WORDS for b in WORDS for c in WORDS if len({a, b, c}) == 3]
    g = torch.Generator().manual_seed(n)
    return [names[i] for i in torch.randperm(len(names), generator=g)[:n].tolist()]


def text_flops(tokens: int, width: int, layers: int, attended: int) -> float:
    """Forward matmul FLOPs of `tokens` positions through `layers` blocks (12·W² MACs each)."""
    return 2.0 * tokens * layers * (12 * width * width + 2 * attended * width)


def bench(model, n_cls: int, batch: int, repeats: int, plain_repeats: int) -> dict[str, float]:
    names = classnames(n_cls)
    learner = PromptLearner(model, names, n_ctx=16, generator=torch.Generator().manual_seed(0))
    optim = torch.optim.SGD([learner.ctx], lr=0.002)
    labels = torch.randint(n_cls, (batch,))
    images = torch.randn(batch, 3, 224, 224)
    cached = F.normalize(torch.randn(batch, 512), dim=-1)
    scale = model.logit_scale.exp().item()

    def step(text_fn, image_fn):
        img = image_fn()
        text = F.normalize(text_fn(model, learner), dim=-1)
        loss = F.cross_entropy(scale * img @ text.T, labels)
        optim.zero_grad()
        loss.backward()
        optim.step()

    def plain_images():
        with torch.no_grad():
            return F.normalize(model.encode_image(images).float(), dim=-1)

    # Interleaved rounds (one of each path per round) so that other jobs' load hits all alike.
    paths = {
        "ours": (lambda: step(text_features, lambda: cached), repeats),
        "text": (lambda: step(plain_text_features, lambda: cached), plain_repeats),
        "plain": (lambda: step(plain_text_features, plain_images), plain_repeats),
    }
    paths["ours"][0]()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in paths}
    for i in range(max(repeats, plain_repeats)):
        for key, (fn, n) in paths.items():
            if i < n:
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
    ours, text, plain = (statistics.median(times[k]) for k in ("ours", "text", "plain"))

    width, layers = 512, 12
    length = int(learner.tokenized.argmax(dim=-1).max()) + 1
    p = shared_prefix_len(learner)
    ours_tokens = p + int((learner.tokenized.argmax(dim=-1) + 1 - p).sum())
    plain_tokens = n_cls * 77
    ours_flops = 2 * text_flops(ours_tokens, width, layers, length)
    img_tokens = batch * (1 + (224 // 16) ** 2)
    plain_flops = 2 * text_flops(plain_tokens, width, layers, 77) + text_flops(
        img_tokens, 768, 12, 197
    )
    return {
        "classes": n_cls,
        "ours_s": ours,
        "plain_s": plain,
        "speedup": plain / ours,
        "text_s": text,
        "text_speedup": text / ours,
        "ours_tokens": ours_tokens,
        "plain_text_tokens": plain_tokens,
        "ours_gflops": ours_flops / ours / 1e9,
        "plain_gflops": plain_flops / plain / 1e9,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of our step")
    ap.add_argument("--plain-repeats", type=int, default=3, help="timed repeats of the plain step")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = vit_b16()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for n in args.classes:
        r = bench(model, n, args.batch, args.repeats, args.plain_repeats)
        print(
            f"{r['classes']:>4} classes: ours {r['ours_s'] * 1e3:8.1f} ms  "
            f"plain {r['plain_s'] * 1e3:9.1f} ms  speed-up {r['speedup']:5.1f}x  "
            f"plain text on cached features {r['text_s'] * 1e3:9.1f} ms "
            f"({r['text_speedup']:5.1f}x)  "
            f"text tokens {r['ours_tokens']} vs {r['plain_text_tokens']}  "
            f"achieved {r['ours_gflops']:.1f} vs {r['plain_gflops']:.1f} GFLOP/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
