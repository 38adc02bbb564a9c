"""`shapes-fine`: a fine-grained generated world of coloured shapes (experimental, beside `shapes`).

Each class is a colour and a shape ("red circle", "orange circle", …): six shapes × ten colours =
60 classes, shape-major with the colours in hue order, so that class c + 1 (where pair noise
flips c) is the look-alike of class c — the same shape in the neighbouring hue, about 30 degrees
away, like two models of one car make. An image is 64 × 64 px: one filled shape of that colour
(hue and brightness jittered, random size, position and rotation) on a varied background (muted
solid colour, gradient, stripes or smooth noise) with some clutter (thin lines, dots and small
grey shapes), seen through a "camera" (a white-balance cast, an exposure change, sensor noise)
that makes neighbouring hues overlap. Every image is drawn from its own seed (dataset seed,
split, class, index), so the same seed gives byte-identical files on any machine with the same
Pillow. Layout: `shapes-fine/images/<colour>_<shape>/<split>_<i>.png` and a CoOp split file
`shapes-fine/split_shapes_fine.json`.

The drawing functions are public so that `scripts/pretrain_tiny_clip_fine.py` can draw its own,
different image–caption pairs (outline styles, plain backgrounds, edits, more colours and shapes).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import nlp_cli.datasets.shapes as _shapes
from nlp_cli.datasets.shapes import (  # the drawing shared with `shapes`
    folder_name,
    item_seed,
    polygon,
)

# Hue (degrees), saturation range, value range. The ten class colours are in hue order, about
# 30 degrees apart: with the hue jitter and the dataset's colour casts, neighbours overlap.
COLOURS: dict[str, tuple[float, tuple[float, float], tuple[float, float]]] = {
    "red": (0.0, (0.7, 1.0), (0.7, 1.0)),
    "orange": (28.0, (0.75, 1.0), (0.8, 1.0)),
    "yellow": (55.0, (0.7, 1.0), (0.8, 1.0)),
    "lime": (88.0, (0.65, 1.0), (0.7, 1.0)),
    "green": (125.0, (0.6, 1.0), (0.5, 0.9)),
    "teal": (160.0, (0.6, 1.0), (0.5, 0.85)),
    "cyan": (188.0, (0.6, 1.0), (0.75, 1.0)),
    "blue": (222.0, (0.6, 1.0), (0.6, 1.0)),
    "purple": (275.0, (0.5, 0.9), (0.55, 0.9)),
    "pink": (322.0, (0.35, 0.65), (0.85, 1.0)),
    # A further colour: distractor vocabulary for pretraining, not a class of the dataset.
    "brown": (25.0, (0.6, 0.9), (0.3, 0.45)),
}
HUE_JITTER = 10.0
SHAPES = (
    "circle", "square", "triangle", "star", "cross", "heart",
    # Further shapes: distractor vocabulary for pretraining.
    "pentagon", "hexagon", "arrow", "crescent",
)  # fmt: skip
DATASET_COLOURS = (
    "red", "orange", "yellow", "lime", "green", "teal", "cyan", "blue", "purple", "pink",
)  # fmt: skip
DATASET_SHAPES = ("circle", "square", "triangle", "star", "cross", "heart")
# Shape-major, colours in hue order: class c and c + 1 (pair noise's flip) are the same shape in
# neighbouring colours, the look-alike pairs of a fine-grained dataset.
CLASSES = tuple(f"{c} {s}" for s in DATASET_SHAPES for c in DATASET_COLOURS)
SIZE = 64
COUNTS = {"train": 32, "val": 10, "test": 30}
FOLDER = "shapes-fine"
SPLIT_FILE = "split_shapes_fine.json"
VERSION = 2


def colour_rgb(name: str, rng: random.Random) -> tuple[int, int, int]:
    """A jittered RGB sample of one of this world's colours."""
    return _shapes.colour_rgb(name, rng, COLOURS, HUE_JITTER)


def clutter(draw: ImageDraw.ImageDraw, rng: random.Random, size: int, n: int) -> None:
    """`shapes`' clutter, with this world's shapes."""
    _shapes.clutter(draw, rng, size, n, SHAPES)


def draw_item(rng: random.Random, colour: str, shape: str, size: int = SIZE, **kw) -> Image.Image:
    """`shapes`' drawing of one item, with this world's colours and shapes."""
    return _shapes.draw_item(rng, colour, shape, size, colours=COLOURS, shapes=SHAPES, **kw)


def camera(img: Image.Image, rng: random.Random, cast: float = 0.15, noise: float = 6.0):
    """A camera's look: a white-balance cast (per-channel gain within ±cast), an exposure change
    and sensor noise. The dataset's images are "photos" with these; pretraining sees weaker ones.
    """
    gains = np.array([rng.uniform(1 - cast, 1 + cast) for _ in range(3)]) * rng.uniform(0.8, 1.1)
    x = np.asarray(img, dtype=float) * gains[None, None, :]
    if noise > 0:
        x = x + np.random.default_rng(rng.getrandbits(32)).normal(0.0, noise, x.shape)
    return Image.fromarray(np.clip(x, 0, 255).round().astype(np.uint8))


def render(rng: random.Random, colour: str, shape: str, size: int) -> Image.Image:
    """One dataset image of class '<colour> <shape>': `shapes`' drawing through a camera."""
    return camera(draw_item(rng, colour, shape, size), rng)


def generate(
    root: Path,
    seed: int = 0,
    counts: dict[str, int] | None = None,
    classes: tuple[str, ...] = CLASSES,
    size: int = SIZE,
) -> Path:
    """Write the dataset to `root/shapes-fine` (unless it is already there) and return it."""
    return _shapes.write_world(
        root,
        FOLDER,
        SPLIT_FILE,
        VERSION,
        render,
        seed,
        COUNTS if counts is None else counts,
        classes,
        size,
    )


__all__ = [
    "CLASSES",
    "COLOURS",
    "SHAPES",
    "camera",
    "draw_item",
    "folder_name",
    "generate",
    "item_seed",
    "polygon",
]
