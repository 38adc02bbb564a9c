"""A user's own data: a folder with one sub-folder per class, or a CSV `path,label[,split]`.

When the data names no test split, every image is split per class with CoOp's 50/20/30 rule
and a fixed seed (so the split is the same on every run), and the Dataset's `notes` say so.
A folder whose top-level sub-folders are `train/`, `val/`, `test/` (each holding class folders)
keeps that split. A CSV's paths are relative to the CSV's folder (absolute paths work too).
"""

from __future__ import annotations

import csv
from pathlib import Path

from nlp_cli.datasets.splits import (
    IMAGE_EXTS,
    Dataset,
    Item,
    Split,
    read_and_split,
    read_split_file,
    to_dataset,
)
from nlp_cli.errors import NlpError, UsageError

SPLIT_NAMES = ("train", "val", "test")


def _images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")
    )


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_class_folders(folder: Path, seed: int = 1) -> Dataset:
    """One sub-folder per class (or train/val/test folders of class folders)."""
    folder = Path(folder)
    subdirs = _class_dirs(folder)
    if not subdirs:
        raise UsageError(f"{folder} has no class sub-folders (expected one folder per class)")
    if "train" in subdirs and set(subdirs) <= set(SPLIT_NAMES):
        classnames = sorted({c for s in subdirs for c in _class_dirs(folder / s)})
        index = {c: i for i, c in enumerate(classnames)}
        items: Split = {s: [] for s in SPLIT_NAMES}
        for s in subdirs:
            for c in _class_dirs(folder / s):
                items[s] += [
                    (p.relative_to(folder).as_posix(), index[c], c) for p in _images(folder / s / c)
                ]
        return _finish(folder.name, folder, items, seed)
    counts = {c: len(_images(folder / c)) for c in subdirs}
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise UsageError(f"{folder}: class folders without images: {', '.join(empty[:5])}")
    flat: Split = {"train": [], "val": [], "test": []}
    for i, c in enumerate(subdirs):
        flat["train"] += [(p.relative_to(folder).as_posix(), i, c) for p in _images(folder / c)]
    return _finish(folder.name, folder, flat, seed)


def load_csv(path: Path, seed: int = 1) -> Dataset:
    """Rows `path,label[,split]` (a header row is optional); labels are class names or ids."""
    path = Path(path)
    try:
        # utf-8-sig: a CSV saved by a spreadsheet starts with a byte-order mark
        text = path.read_text(encoding="utf-8-sig")
        rows = [r for r in csv.reader(text.splitlines()) if r and any(r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"{path} is not a readable CSV ({e})") from e
    if rows and rows[0][0].strip().lower() in ("path", "image", "file", "filename"):
        rows = rows[1:]
    if not rows:
        raise UsageError(f"{path} has no rows (expected path,label[,split])")
    bad = [i for i, r in enumerate(rows) if len(r) < 2 or len(r) > 3]
    if bad:
        raise UsageError(f"{path}: row {bad[0] + 1} is not path,label[,split]")
    labels = sorted({r[1].strip() for r in rows}, key=_label_order)
    index = {c: i for i, c in enumerate(labels)}
    items: Split = {s: [] for s in SPLIT_NAMES}
    for r in rows:
        split = r[2].strip().lower() if len(r) == 3 and r[2].strip() else "train"
        if split not in SPLIT_NAMES:
            raise UsageError(f"{path}: split {split!r} is not one of train, val, test")
        items[split].append((r[0].strip(), index[r[1].strip()], r[1].strip()))
    missing = [p for s in items.values() for p, _, _ in s if not (path.parent / p).is_file()]
    if missing:
        raise NlpError(f"{path}: {len(missing)} listed images do not exist, e.g. {missing[0]}")
    return _finish(path.stem, path.parent, items, seed)


def _label_order(label: str) -> tuple[int, int | str]:
    return (0, int(label)) if label.lstrip("-").isdigit() else (1, label)


def _finish(name: str, root: Path, items: Split, seed: int) -> Dataset:
    if items.get("test"):
        return to_dataset(name, root, items, [])
    pooled = [it for s in SPLIT_NAMES for it in items.get(s, [])]
    return to_dataset(
        name,
        root,
        _resplit(pooled, seed),
        [f"{name} has no test split: made one with CoOp's 50/20/30 per-class rule (seed {seed})"],
    )


def _resplit(pooled: list[Item], seed: int) -> Split:
    """CoOp's per-class 50/20/30 split applied to a listing instead of a folder tree."""
    import random

    rng = random.Random(seed)
    by_label: dict[int, list[Item]] = {}
    for it in sorted(pooled):
        by_label.setdefault(it[1], []).append(it)
    out: Split = {"train": [], "val": [], "test": []}
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        n_train, n_val = round(len(group) * 0.5), round(len(group) * 0.2)
        if n_train == 0 or n_val == 0 or len(group) - n_train - n_val == 0:
            raise NlpError(
                f"class {group[0][2]!r} has {len(group)} images: too few for a "
                "train/val/test split (give a test split, or at least 4 images per class)"
            )
        out["train"] += group[:n_train]
        out["val"] += group[n_train : n_train + n_val]
        out["test"] += group[n_train + n_val :]
    return out


def load_split_folder(folder: Path) -> Dataset | None:
    """A folder holding one CoOp-format `split*.json`; paths are relative to it or a sub-folder."""
    folder = Path(folder)
    files = sorted(folder.glob("split*.json"))
    if len(files) != 1:
        return None
    items = read_split_file(files[0])
    first = next((p for s in items.values() for p, _, _ in s), None)
    if first is None:
        raise NlpError(f"{files[0]} lists no images")
    for base in [folder, *(folder / d for d in _class_dirs(folder))]:
        if (base / first).is_file():
            return to_dataset(folder.name, base, items, [])
    raise NlpError(f"{files[0]} lists {first}, which is not under {folder}")


__all__ = ["load_class_folders", "load_csv", "load_split_folder", "read_and_split"]
