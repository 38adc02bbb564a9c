"""CoOp's split files and split rules, and the `Dataset` a split becomes.

A split file (`split_zhou_<Name>.json`) maps "train", "val", "test" to `[path, label, classname]`
rows, paths relative to the dataset's image folder. Where a split file is missing, the split is
regenerated with CoOp's rule (per class 50/20/30, or a 20 % validation cut of the official
train+val list) using `random.Random(seed)`; CoOp shuffles with the global `random` after
`os.listdir`, whose order depends on the file system, so we sort file names first to make the
regenerated split reproducible anywhere.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from nlp_cli.errors import NlpError

Item = tuple[str, int, str]  # (path relative to the image folder, label, class name)
Split = dict[str, list[Item]]

SPLITS = ("train", "val", "test")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


@dataclass
class Dataset:
    """Class names and, per split, image paths (relative to `root`) and labels."""

    name: str
    root: Path
    classnames: list[str]
    paths: dict[str, list[str]]
    labels: dict[str, list[int]]
    notes: list[str] = field(default_factory=list)

    def splits(self) -> list[str]:
        """The splits that hold images, in train/val/test order."""
        return [s for s in SPLITS if self.paths.get(s)]

    def digest(self) -> str:
        """SHA-256 of what the features depend on: the listing and each image's size and mtime.

        The listing alone (class names, paths, labels) is not enough: an image fixed in place
        keeps its path, and its old features would be a cache hit. So every listed file's size
        and `st_mtime_ns` enter the digest too (a file that cannot be stat'ed counts as -1, -1;
        embedding then reports it). Copying a dataset without keeping mtimes makes a new key.
        """
        h = hashlib.sha256()
        listing = {"classnames": self.classnames, "paths": self.paths, "labels": self.labels}
        h.update(json.dumps(listing, sort_keys=True).encode())
        for split in sorted(self.paths):
            for rel in self.paths[split]:
                h.update(b"\0%d %d" % _size_and_mtime(self.root / rel))
        return h.hexdigest()


def _size_and_mtime(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


def to_dataset(name: str, root: Path, items: Split, notes: list[str]) -> Dataset:
    """Turn split items into a Dataset; class names come from the items' third column."""
    names: dict[int, str] = {}
    for split in items.values():
        for _, label, cname in split:
            if names.setdefault(int(label), cname) != cname:
                raise NlpError(f"{name}: label {label} has two class names in the split")
    if sorted(names) != list(range(len(names))):
        raise NlpError(f"{name}: labels are not 0..{len(names) - 1}")

    in_train = {int(y) for _, y, _ in items.get("train", [])}
    absent = [names[i] for i in sorted(names) if i not in in_train]
    if absent and items.get("train"):
        notes = [
            *notes,
            f"{len(absent)} class(es) have no training image: {', '.join(absent[:5])} "
            "(they can still be predicted, from their names alone)",
        ]
    return Dataset(
        name=name,
        root=root.absolute(),
        classnames=[names[i] for i in range(len(names))],
        paths={s: [p for p, _, _ in items.get(s, [])] for s in ("train", "val", "test")},
        labels={s: [int(y) for _, y, _ in items.get(s, [])] for s in ("train", "val", "test")},
        notes=notes,
    )


def read_split_file(path: Path) -> Split:
    """Read a CoOp split file `{"train"|"val"|"test": [[path, label, classname], ...]}`."""
    try:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict):
            raise NlpError(
                f"{path} is not a CoOp split file: it holds a {type(data).__name__}, not a "
                'mapping {"train": [[path, label, classname], …], "val": …, "test": …}'
            )
        return {
            s: [(str(p), int(y), str(c)) for p, y, c in data.get(s, [])]
            for s in ("train", "val", "test")
        }
    except (OSError, ValueError, TypeError) as e:
        raise NlpError(f"{path} is not a CoOp split file ({type(e).__name__}: {e})") from e


def save_split_file(items: Split, path: Path) -> None:
    """Write a split file in CoOp's format, atomically."""
    # Imported here: artifacts imports torch, which listing the catalog must not.
    from nlp_cli.artifacts import atomic_write_text

    data = {s: [[p, y, c] for p, y, c in items.get(s, [])] for s in ("train", "val", "test")}
    atomic_write_text(path, json.dumps(data, indent=1))


def _listdir(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if not p.name.startswith("."))


def read_and_split(
    image_dir: Path,
    seed: int,
    p_trn: float = 0.5,
    p_val: float = 0.2,
    ignored: tuple[str, ...] = (),
    new_cnames: dict[str, str] | None = None,
) -> Split:
    """CoOp's DTD.read_and_split_data: per class shuffle, then round(50 %)/round(20 %)/rest."""
    rng = random.Random(seed)
    categories = [c for c in _listdir(image_dir) if c not in ignored and (image_dir / c).is_dir()]
    out: Split = {"train": [], "val": [], "test": []}
    for label, category in enumerate(categories):
        images = [f"{category}/{im}" for im in _listdir(image_dir / category)]
        rng.shuffle(images)
        n_train = round(len(images) * p_trn)
        n_val = round(len(images) * p_val)
        if n_train == 0 or n_val == 0 or len(images) - n_train - n_val == 0:
            raise NlpError(f"class {category!r} has {len(images)} images: too few to split")
        cname = (new_cnames or {}).get(category, category)
        out["train"] += [(p, label, cname) for p in images[:n_train]]
        out["val"] += [(p, label, cname) for p in images[n_train : n_train + n_val]]
        out["test"] += [(p, label, cname) for p in images[n_train + n_val :]]
    return out


def split_trainval(trainval: list[Item], seed: int, p_val: float = 0.2) -> tuple[list, list]:
    """CoOp's OxfordPets.split_trainval: per class, the first round(20 %) shuffled go to val."""
    rng = random.Random(seed)
    tracker: dict[int, list[int]] = defaultdict(list)
    for idx, item in enumerate(trainval):
        tracker[item[1]].append(idx)
    train, val = [], []
    for idxs in tracker.values():
        n_val = round(len(idxs) * p_val)
        if n_val == 0:
            raise NlpError("a class has too few images for a validation split")
        rng.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


# --- per-dataset rules (CoOp's datasets/*.py) -------------------------------------------------
