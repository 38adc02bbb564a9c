"""Images per second of `nlp embed` (decode + preprocess + image encoder + shard writes).

Run from the repository root, e.g.:

    PYTHONPATH=$PWD python benchmarks/bench_embed.py --images 256 --model tiny
    PYTHONPATH=$PWD python benchmarks/bench_embed.py --model ViT-B/16 --device cuda --workers 8

`--model tiny` builds a random tiny CLIP (no download); any name or checkpoint path that
`nlp embed --model` accepts works too. Images are random JPEGs of `--size` pixels, written to a
temporary folder first (not timed). Prints one result line.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from nlp_cli import clip_model, datasets
from nlp_cli.embed import EmbedOptions, embed


def make_images(root: Path, n: int, size: int, classes: int = 4) -> None:
    """`n` random JPEGs in `classes` class folders, plus a small test split."""
    g = torch.Generator().manual_seed(0)
    for split, count in (("train", n), ("test", max(classes, n // 10))):
        for i in range(count):
            folder = root / split / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            px = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8)
            Image.fromarray(px.numpy()).save(folder / f"{i}.jpg", quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256, help="training images")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels")
    ap.add_argument("--model", default="tiny", help="'tiny', a CLIP name or a checkpoint path")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--views", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = args.model
        if model == "tiny":
            model = str(clip_model.save_checkpoint(clip_model.build_tiny(0), tmp_path / "tiny.pt"))
        make_images(tmp_path / "data", args.images, args.size)
        ds = datasets.load(str(tmp_path / "data"))
        clip_model.load(model, device=args.device)  # load once, outside the timing
        opts = EmbedOptions(
            views=args.views,
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
        )
        n = sum(len(ds.paths[s]) for s in ds.splits()) + args.images * args.views
        start = time.perf_counter()
        embed(ds, model, opts, tmp_path / "feats.safetensors")
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    print(
        f"embed: {n / seconds:.1f} images/s ({n} encoder images in {seconds:.2f} s; "
        f"model={args.model} device={args.device} batch={args.batch_size} "
        f"workers={args.workers} views={args.views} size={args.size})"
    )


if __name__ == "__main__":
    main()
