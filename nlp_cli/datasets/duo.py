"""`duo`: a generated world of colour pairs, an object of one colour on a background of another
(experimental, beside `shapes` and `shapes-fine`).

Each class is an ordered pair of eight colours in hue order ("red on orange", …, "pink on
purple"; 8 × 7 = 56 classes). The object's shape does not matter for the class: it is any of
eight, large, filled, roughly central. The background is its colour with a texture (solid,
gradient, stripes or smooth noise between the colour and a darker shade of it), with a little grey
clutter. Classes are object-major and, within one object colour, the backgrounds follow in hue
order starting after the object's, so class c + 1 (where pair noise flips c) is the same object
on the neighbouring background hue; the role swap ("blue on red" beside "red on blue") and
neighbouring object hues are the other look-alikes.

Every image carries the dataset's look, which the hand prompt does not name: a tint (the hue
turned by about 20 degrees, part of the way to the next colour) and a camera (white-balance cast,
exposure, sensor noise, as in `shapes-fine`). Pretraining (`scripts/pretrain_tiny_clip_duo.py`)
sees tinted images with the words "tinted", "colour shifted", "off colour" in their captions.

Every image is drawn from its own seed (dataset seed, split, class, index), so the same seed
gives byte-identical files on any machine with the same Pillow. Layout:
`duo/images/<object>_on_<background>/<split>_<i>.png` and a CoOp split file `duo/split_duo.json`.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

import nlp_cli.datasets.shapes as _shapes
from nlp_cli.datasets.shapes import folder_name, item_seed, polygon
from nlp_cli.datasets.shapes_fine import camera

# Hue (degrees), saturation range, value range. The eight class colours are in hue order, 28 to
# 65 degrees apart.
COLOURS: dict[str, tuple[float, tuple[float, float], tuple[float, float]]] = {
    "red": (0.0, (0.7, 1.0), (0.7, 1.0)),
    "orange": (30.0, (0.75, 1.0), (0.85, 1.0)),
    "yellow": (58.0, (0.7, 1.0), (0.85, 1.0)),
    "green": (122.0, (0.6, 1.0), (0.5, 0.9)),
    "cyan": (186.0, (0.6, 1.0), (0.75, 1.0)),
    "blue": (226.0, (0.6, 1.0), (0.6, 1.0)),
    "purple": (278.0, (0.5, 0.9), (0.55, 0.9)),
    "pink": (325.0, (0.35, 0.65), (0.85, 1.0)),
    # Further colours: distractor vocabulary for pretraining, not classes of the dataset.
    "lime": (90.0, (0.65, 1.0), (0.7, 1.0)),
    "teal": (155.0, (0.6, 1.0), (0.5, 0.85)),
}
HUE_JITTER = 8.0
DATASET_COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "pentagon", "hexagon")
TEXTURES = ("solid", "gradient", "stripes", "noise")
# Object-major; the backgrounds in hue order from the one after the object's (cyclically), so
# that class c + 1 is class c with the background one hue further.
CLASSES = tuple(
    f"{o} on {DATASET_COLOURS[(i + k) % len(DATASET_COLOURS)]}"
    for i, o in enumerate(DATASET_COLOURS)
    for k in range(1, len(DATASET_COLOURS))
)
SIZE = 64
COUNTS = {"train": 32, "val": 10, "test": 30}
FOLDER = "shapes"
SPLIT_FILE = "split_shapes.json"
VERSION = 1
TINT = (15.0, 25.0)  # degrees of hue turn of the dataset's look


def parse(classname: str) -> tuple[str, str]:
    """'red on blue' -> ('red', 'blue'): the object's colour and the background's."""
    obj, on, back = classname.split(" ")
    if on != "on":
        raise ValueError(f"not a colour pair: {classname!r}")
    return obj, back


def colour_rgb(name: str, rng: random.Random) -> tuple[int, int, int]:
    """A jittered RGB sample of one of this world's colours."""
    return _shapes.colour_rgb(name, rng, COLOURS, HUE_JITTER)


def draw_pair(
    rng: random.Random,
    obj: str,
    back: str,
    size: int = SIZE,
    *,
    shape: str | None = None,
    texture: str | None = None,
    style: str = "filled",
    scale: tuple[float, float] = (0.3, 0.45),
    n_clutter: int | None = None,
) -> Image.Image:
    """One image of an `obj`-coloured shape (random unless given) on a `back`-coloured textured
    background, drawn by `shapes`' draw_item. texture: a kind of `shapes.background`, or a plain
    one ("white", "black", "paper": then `back` is not drawn)."""
    shape = shape or rng.choice(SHAPES)
    texture = texture or rng.choice(TEXTURES)
    a = np.array(colour_rgb(back, rng), dtype=float)
    pair = (a, a * rng.uniform(0.55, 0.85))
    return _shapes.draw_item(
        rng,
        obj,
        shape,
        size,
        style=style,
        back=texture,
        n_clutter=rng.randint(0, 3) if n_clutter is None else n_clutter,
        scale=scale,
        colours=COLOURS,
        shapes=SHAPES,
        back_pair=pair,
    )


def tint(img: Image.Image, rng: random.Random, turn: tuple[float, float] = TINT) -> Image.Image:
    """The hue of every pixel turned by a random angle in `turn` (degrees), towards the next
    colour in hue order."""
    hsv = np.asarray(img.convert("HSV")).copy()
    step = round(rng.uniform(*turn) / 360 * 256)
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + step) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def look(img: Image.Image, rng: random.Random) -> Image.Image:
    """The dataset's look: the tint, then a camera (weaker cast than `shapes-fine`'s)."""
    return camera(tint(img, rng), rng, cast=0.1, noise=5.0)


def render(rng: random.Random, obj: str, back: str, size: int = SIZE) -> Image.Image:
    """One dataset image of class '<obj> on <back>'."""
    return look(draw_pair(rng, obj, back, size), rng)


def generate(
    root: Path,
    seed: int = 0,
    counts: dict[str, int] | None = None,
    classes: tuple[str, ...] = CLASSES,
    size: int = SIZE,
) -> Path:
    """Write the dataset to `root/shapes` (unless it is already there) and return it."""
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
        parse,
    )


__all__ = [
    "CLASSES",
    "COLOURS",
    "SHAPES",
    "camera",
    "draw_pair",
    "folder_name",
    "generate",
    "item_seed",
    "look",
    "parse",
    "polygon",
    "render",
    "tint",
]
