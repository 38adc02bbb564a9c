"""`shapes`: a generated dataset of coloured shapes, the offline world of the quickstart and tests.

Each class is a colour and a shape ("red circle", "blue star", …; 5 × 5 = 25 classes). An image
is 64 × 64 px: one filled shape of that colour (hue and brightness jittered, random size,
position and rotation) on a varied background (muted solid colour, gradient, stripes or smooth
noise) with some clutter (thin lines, dots and small grey shapes). Every image is drawn from its
own seed (dataset seed, split, class, index), so the same seed gives byte-identical files on
any machine with the same Pillow. Layout: `shapes/images/<colour>_<shape>/<split>_<i>.png` and a
CoOp split file `shapes/split_shapes.json`.

The drawing functions are public so that `scripts/pretrain_tiny_clip.py` can draw its own,
different image–caption pairs (outline styles, plain backgrounds, more colours and shapes).
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import json
import math
import multiprocessing
import os
import pickle
import random
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from nlp_cli.datasets.splits import Split, save_split_file
from nlp_cli.errors import NlpError
from nlp_cli.home import cores

# Hue (degrees), saturation range, value range.
COLOURS: dict[str, tuple[float, tuple[float, float], tuple[float, float]]] = {
    "red": (0.0, (0.7, 1.0), (0.7, 1.0)),
    "yellow": (55.0, (0.7, 1.0), (0.85, 1.0)),
    "green": (125.0, (0.6, 1.0), (0.55, 0.9)),
    "blue": (225.0, (0.6, 1.0), (0.65, 1.0)),
    "purple": (285.0, (0.5, 0.9), (0.55, 0.9)),
    # Further colours: distractor vocabulary for pretraining, not classes of the dataset.
    "orange": (28.0, (0.8, 1.0), (0.9, 1.0)),
    "cyan": (185.0, (0.6, 1.0), (0.8, 1.0)),
    "pink": (330.0, (0.3, 0.5), (0.9, 1.0)),
    "brown": (25.0, (0.6, 0.9), (0.35, 0.5)),
}
HUE_JITTER = 10.0
SHAPES = (
    "circle", "square", "triangle", "star", "cross",
    # Further shapes: distractor vocabulary for pretraining.
    "pentagon", "hexagon", "heart", "arrow", "crescent",
)  # fmt: skip
DATASET_COLOURS = ("red", "yellow", "green", "blue", "purple")
DATASET_SHAPES = ("circle", "square", "triangle", "star", "cross")
CLASSES = tuple(f"{c} {s}" for c in DATASET_COLOURS for s in DATASET_SHAPES)
SIZE = 64
COUNTS = {"train": 40, "val": 10, "test": 30}
FOLDER = "shapes-easy"
SPLIT_FILE = "split_shapes_easy.json"
VERSION = 1


def _regular(n: int, start: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [
        (math.cos(start + 2 * math.pi * k / n), math.sin(start + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star() -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        r = 1.0 if k % 2 == 0 else 0.42
        a = -math.pi / 2 + math.pi * k / 5
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _heart() -> list[tuple[float, float]]:
    pts = []
    for k in range(40):
        t = 2 * math.pi * k / 40
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 17, -y / 17 + 0.1))
    return pts


def _crescent() -> list[tuple[float, float]]:
    outer = [(math.cos(a), math.sin(a)) for a in np.linspace(0.35 * math.pi, 1.65 * math.pi, 24)]
    inner = [
        (0.45 + 0.8 * math.cos(a), 0.8 * math.sin(a))
        for a in np.linspace(1.55 * math.pi, 0.45 * math.pi, 24)
    ]
    return [(float(x), float(y)) for x, y in outer + inner]


_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "circle": _regular(48),
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": [(x, y + 0.15) for x, y in _regular(3)],
    "star": _star(),
    "cross": [
        (-0.3, -0.9), (0.3, -0.9), (0.3, -0.3), (0.9, -0.3), (0.9, 0.3), (0.3, 0.3),
        (0.3, 0.9), (-0.3, 0.9), (-0.3, 0.3), (-0.9, 0.3), (-0.9, -0.3), (-0.3, -0.3),
    ],
    "pentagon": _regular(5),
    "hexagon": _regular(6),
    "heart": _heart(),
    "arrow": [
        (-0.9, -0.25), (0.2, -0.25), (0.2, -0.6), (0.9, 0.0), (0.2, 0.6), (0.2, 0.25), (-0.9, 0.25),
    ],
    "crescent": _crescent(),
}  # fmt: skip


def polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """The outline of `shape` centred at (cx, cy) with radius r, rotated by `angle` radians."""
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in _OUTLINES[shape]]


def colour_rgb(
    name: str, rng: random.Random, colours: dict | None = None, jitter: float = HUE_JITTER
) -> tuple[int, int, int]:
    """A jittered RGB sample of a named colour (of `colours`, default this world's)."""
    hue, (s0, s1), (v0, v1) = (colours or COLOURS)[name]
    h = ((hue + rng.uniform(-jitter, jitter)) % 360) / 360
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(s0, s1), rng.uniform(v0, v1))
    return int(r * 255), int(g * 255), int(b * 255)


def muted_rgb(rng: random.Random, v: tuple[float, float] = (0.15, 0.9)) -> np.ndarray:
    """A low-saturation colour, for backgrounds and clutter."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(*v))
    return np.array([r, g, b]) * 255


def background(
    rng: random.Random,
    size: int,
    kind: str | None = None,
    pair: tuple[np.ndarray, np.ndarray] | None = None,
) -> Image.Image:
    """A background: solid, gradient, stripes or smooth noise, between two colours (`pair`,
    default two muted ones)."""
    kind = kind or rng.choice(("solid", "gradient", "stripes", "noise"))
    a, b = (muted_rgb(rng), muted_rgb(rng)) if pair is None else pair
    yy, xx = np.mgrid[0:size, 0:size] / size
    if kind == "solid":
        t = np.zeros((size, size))
    elif kind == "gradient":
        ang = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(ang) + yy * math.sin(ang)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    elif kind == "stripes":
        ang = rng.uniform(0, math.pi)
        period = rng.uniform(0.08, 0.3)
        t = ((xx * math.cos(ang) + yy * math.sin(ang)) / period) % 1.0 < 0.5
        t = t.astype(float)
        b = a + (b - a) * 0.5
    else:
        nrng = np.random.default_rng(rng.getrandbits(32))
        coarse = nrng.random((5, 5))
        t = (
            np.asarray(
                Image.fromarray((coarse * 255).astype(np.uint8)).resize(
                    (size, size), Image.BICUBIC
                ),
                dtype=float,
            )
            / 255
        )
    img = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def clutter(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    size: int,
    n: int,
    shapes: tuple[str, ...] | None = None,
) -> None:
    """Thin lines, dots and small grey shapes (of `shapes`, default this world's) that carry
    no class."""
    for _ in range(n):
        kind = rng.choice(("line", "dot", "shape"))
        grey = int(rng.uniform(20, 235))
        fill = (grey, grey, grey)
        if kind == "line":
            pts = [(rng.uniform(0, size), rng.uniform(0, size)) for _ in range(2)]
            draw.line(pts, fill=fill, width=max(1, size // 64))
        elif kind == "dot":
            x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(1, size / 24)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        else:
            r = rng.uniform(size / 24, size / 12)
            pts = polygon(
                rng.choice(shapes or SHAPES), rng.uniform(0, size), rng.uniform(0, size), r,
                rng.uniform(0, 2 * math.pi),
            )  # fmt: skip
            draw.polygon(pts, fill=fill)


def draw_item(
    rng: random.Random,
    colour: str,
    shape: str,
    size: int = SIZE,
    *,
    style: str = "filled",
    back: str | None = None,
    n_clutter: int | None = None,
    scale: tuple[float, float] = (0.22, 0.42),
    colours: dict | None = None,
    shapes: tuple[str, ...] | None = None,
    back_pair: tuple[np.ndarray, np.ndarray] | None = None,
) -> Image.Image:
    """One image of a `colour` `shape`, drawn at 2× and downsampled (anti-aliased).

    style: "filled" (the dataset's), "outline", "bordered" (filled with a dark edge).
    back: a background kind of `background`, or "white"/"black"/"paper" for plain ones.
    back_pair: the two colours of a non-plain background (default two muted ones).
    """
    big = size * 2
    if back in ("white", "black", "paper"):
        level = {"white": 255, "black": 0, "paper": int(rng.uniform(200, 245))}[back]
        img = Image.new("RGB", (big, big), (level, level, level))
    else:
        img = background(rng, big, back, back_pair)
    draw = ImageDraw.Draw(img)
    clutter(draw, rng, big, rng.randint(0, 4) if n_clutter is None else n_clutter, shapes)
    r = rng.uniform(*scale) * big
    margin = r * 0.6
    cx, cy = rng.uniform(margin, big - margin), rng.uniform(margin, big - margin)
    pts = polygon(shape, cx, cy, r, rng.uniform(0, 2 * math.pi))
    rgb = colour_rgb(colour, rng, colours)
    if style == "filled":
        draw.polygon(pts, fill=rgb)
    elif style == "outline":
        draw.line(
            [*pts, pts[0]], fill=rgb, width=max(2, int(r * rng.uniform(0.12, 0.25))), joint="curve"
        )
    elif style == "bordered":
        edge = tuple(int(c * 0.3) for c in rgb)
        draw.polygon(pts, fill=rgb)
        draw.line([*pts, pts[0]], fill=edge, width=max(2, int(r * 0.1)), joint="curve")
    else:
        raise ValueError(f"unknown style {style!r}")
    return img.resize((size, size), Image.LANCZOS)


def item_seed(*parts: object) -> int:
    """A 64-bit seed from its parts, the same on every platform."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def folder_name(classname: str) -> str:
    return classname.replace(" ", "_")


def generate(
    root: Path,
    seed: int = 0,
    counts: dict[str, int] | None = None,
    classes: tuple[str, ...] = CLASSES,
    size: int = SIZE,
) -> Path:
    """Write the dataset to `root/shapes-easy` (unless it is already there) and return it."""
    return write_world(
        root,
        FOLDER,
        SPLIT_FILE,
        VERSION,
        draw_item,
        seed,
        COUNTS if counts is None else counts,
        classes,
        size,
    )


def write_world(
    root: Path,
    name: str,
    split_file: str,
    version: int,
    render: Callable[[random.Random, str, str, int], Image.Image],
    seed: int,
    counts: dict[str, int],
    classes: tuple[str, ...],
    size: int,
    parse: Callable[[str], tuple[str, str]] | None = None,
    workers: int | None = None,
) -> Path:
    """Write a generated world to `root/name` (unless the same one is there) and return it:
    `render(rng, colour, shape, size)` draws each image from its own seed, the split file and a
    stamp of what made it are written beside the images, and the folder appears whole.
    `parse` splits a class name into render's two words (default: at its one space).

    The classes are drawn by `workers` processes (default: one per core, up to 8, for a world
    of POOL_ABOVE images or more); each image's seed is its own, so the bytes do not depend on
    how many draw them. A `render` that cannot be pickled is drawn in this process."""
    counts = dict(counts)
    root = Path(root)
    out = root / name
    stamp = {
        "world": name,
        "version": version,
        "seed": seed,
        "counts": counts,
        "classes": list(classes),
        "size": size,
    }
    if (out / split_file).is_file() and _read_stamp(out) == stamp:
        return out
    root.mkdir(parents=True, exist_ok=True)
    # Each process draws into its own folder (ranks of a torchrun sweep may draw at once);
    # the folders of processes that died mid-draw are removed.
    for stale in root.glob(f".{name}.{seed}.*.tmp"):
        if not _alive(stale.name.split(".")[-2]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".{name}.{seed}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    items: Split = {"train": [], "val": [], "test": []}
    jobs = [(cname, *(cname.split(" ") if parse is None else parse(cname))) for cname in classes]
    draw = functools.partial(_draw_class, render, tmp / "images", version, seed, counts, size)
    n_workers = _draw_workers(workers, len(classes) * sum(counts.values()), render)
    if n_workers > 1:
        # spawned, not forked: the parent may hold threads (torch's, the CLI's signal watcher)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(n_workers, mp_context=context) as pool:
            drawn = list(pool.map(draw, jobs))
    else:
        drawn = [draw(job) for job in jobs]
    for label, (cname, per_split) in enumerate(zip(classes, drawn, strict=True)):
        for split, rels in per_split.items():
            items[split] += [(rel, label, cname) for rel in rels]
    save_split_file(items, tmp / split_file)
    (tmp / ".shapes.json").write_text(json.dumps(stamp, sort_keys=True))
    if (out / split_file).is_file() and _read_stamp(out) == stamp:
        shutil.rmtree(tmp)  # another process drew the same world meanwhile
        return out
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


# Below this many images a pool's start (about half a second a spawned worker) costs more than
# the drawing it shares out.
POOL_ABOVE = 1000


def _draw_workers(workers: int | None, n_images: int, render: Callable) -> int:
    if workers is None:
        if n_images < POOL_ABOVE:
            return 1
        workers = min(cores(), 8)
    if workers > 1:
        try:
            pickle.dumps(render)
        except (pickle.PicklingError, AttributeError, TypeError):
            return 1
    return max(workers, 1)


def _draw_class(
    render: Callable[[random.Random, str, str, int], Image.Image],
    images: Path,
    version: int,
    seed: int,
    counts: dict[str, int],
    size: int,
    job: tuple[str, str, str],
) -> dict[str, list[str]]:
    """Draw one class's images into `images`; its files per split, in order."""
    cname, colour, shape = job
    (images / folder_name(cname)).mkdir(parents=True)
    out: dict[str, list[str]] = {}
    for split, n in counts.items():
        out[split] = []
        for i in range(n):
            rng = random.Random(item_seed(version, seed, split, cname, i))
            rel = f"{folder_name(cname)}/{split}_{i:03d}.png"
            render(rng, colour, shape, size).save(images / rel, optimize=False)
            out[split].append(rel)
    return out


def _alive(pid: str) -> bool:
    """Whether the process `pid` (a folder name's part) still runs; not a number: no."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_stamp(folder: Path, name: str, classes: Callable[[], tuple[str, ...]]) -> None:
    """Refuse a folder that another generated world wrote: its stamp must name `name` (a stamp
    from before worlds were named in it must list the world's `classes()`), so that a folder
    drawn before a world was renamed is never read as the new one."""
    stamp = _read_stamp(folder)
    if stamp is None:
        return  # a copy without the stamp (e.g. a user's own tree in this layout)
    world = stamp.get("world")
    if world == name or (world is None and stamp.get("classes") == list(classes())):
        return
    drawn = f"the {world} world" if world else "another world (an earlier nlp's)"
    raise NlpError(
        f"{folder} holds {drawn}, not {name}: run `nlp download {name}` to draw it again"
    )


def _read_stamp(folder: Path) -> dict | None:
    try:
        return json.loads((folder / ".shapes.json").read_text())
    except (OSError, ValueError):
        return None


__all__ = ["CLASSES", "COLOURS", "SHAPES", "draw_item", "generate", "polygon"]
