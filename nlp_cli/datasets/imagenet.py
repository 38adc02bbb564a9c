"""ImageNet-1k (ILSVRC2012) in CoOp's layout, and sorting its flat validation folder.

CoOp (DATASETS.md, datasets/imagenet.py): `imagenet/classnames.txt` (CoOp's file, copied from
CLIP: `<wnid> <class name>` per line), `imagenet/images/train/<wnid>/…` and
`imagenet/images/val/<wnid>/…`; labels are the sorted train wnids; the validation set is the
test set ("standard practice", CoOp's val is the same images, so it is left empty here rather
than encoded twice). The few-shot protocol samples K shots per class from train afterwards
(`nlp corrupt --shots 16`).

ILSVRC2012's licence forbids fetching it for the user, so there are no sources: `nlp download
imagenet` checks the files the user placed and prepares them. The official and the Kaggle
archives ship val/ flat (50 000 JPEGs in one folder, KaiyangZhou/CoOp#60); `prepare` sorts it
into wnid folders from Kaggle's LOC_val_solution.csv or the devkit's ground truth + meta.mat.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

from nlp_cli.datasets.spec import DatasetSpec, register
from nlp_cli.datasets.splits import IMAGE_EXTS, Split
from nlp_cli.errors import NlpError

CSV = "LOC_val_solution.csv"
DEVKIT = "ILSVRC2012_devkit_t12"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META = "meta.mat"
PARTIAL = ".nlp-partial"


def where(folder: Path) -> str:
    """What goes where, in one sentence (the message of every missing-file error)."""
    return (
        f"ImageNet cannot be downloaded automatically (its licence): put ILSVRC2012's train/ "
        f"(one folder per wnid) and val/ in {folder / 'images'}/, CoOp's classnames.txt in "
        f"{folder}/, and for a flat val/ Kaggle's {CSV} (or the devkit's {DEVKIT}/) in "
        f"{folder}/; then run `nlp download imagenet` again (or `--from DIR`, DIR holding the same)"
    )


def read_classnames(path: Path) -> dict[str, str]:
    """CoOp's ImageNet.read_classnames: `<wnid> <class name …>` per line, in file order."""
    names: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.strip().split(" ")
        if not parts[0]:
            continue
        if len(parts) < 2:
            raise NlpError(f"{path}:{n}: expected '<wnid> <class name>', got {line.strip()!r}")
        names[parts[0]] = " ".join(parts[1:])
    return names


def _images(folder: Path) -> list[str]:
    return sorted(
        e.name
        for e in os.scandir(folder)
        if not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_EXTS and e.is_file()
    )


def _wnid_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_dir())


def build(folder: Path, seed: int) -> Split:
    """CoOp's ImageNet.read_data for train and val (as test); `seed` is unused (no split rule).

    CoOp numbers val's classes by val's own sorted folders; here they take train's labels, so a
    val folder missing a class cannot shift the others.
    """
    del seed
    classnames = read_classnames(folder / "classnames.txt")
    train_dir, val_dir = folder / "images" / "train", folder / "images" / "val"
    if _images(val_dir):
        raise NlpError(
            f"{val_dir} holds images outside wnid folders: run `nlp download imagenet` to sort "
            f"them with {CSV} or the devkit's ground truth"
        )
    wnids = _wnid_dirs(train_dir)
    if not wnids:
        raise NlpError(f"{train_dir} has no wnid folders. {where(folder)}")
    unnamed = [w for w in wnids if w not in classnames]
    if unnamed:
        raise NlpError(
            f"{len(unnamed)} train folder(s) have no line in {folder / 'classnames.txt'}, "
            f"e.g. {unnamed[0]}"
        )
    label = {w: i for i, w in enumerate(wnids)}
    extra = [w for w in _wnid_dirs(val_dir) if w not in label]
    if extra:
        raise NlpError(f"{val_dir} has {len(extra)} folder(s) not in train/, e.g. {extra[0]}")
    out: Split = {"train": [], "val": [], "test": []}
    for split, root in (("train", train_dir), ("test", val_dir)):
        sub = root.name
        for w in wnids if split == "train" else _wnid_dirs(val_dir):
            cname = classnames[w]
            out[split] += [(f"{sub}/{w}/{im}", label[w], cname) for im in _images(root / w)]
    return out


def _csv_labels(path: Path) -> dict[str, str]:
    """Kaggle's LOC_val_solution.csv: `ImageId,PredictionString`, the wnid first in the string."""
    labels = {}
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if not header or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise NlpError(f"{path} is not Kaggle's {CSV} (header ImageId,PredictionString)")
        for n, row in enumerate(rows, 2):
            if len(row) < 2 or not row[1].split():
                raise NlpError(f"{path}:{n}: expected 'ImageId,<wnid> …', got {','.join(row)!r}")
            labels[row[0].strip()] = row[1].split()[0]
    return labels


def _devkit_labels(data: Path) -> dict[str, str]:
    """The devkit's ground truth (line i: ILSVRC2012_ID of ILSVRC2012_val_{i:08d}) through
    meta.mat's ILSVRC2012_ID → WNID."""
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise NlpError(
            f"reading {data / META} needs scipy (pip install scipy), or use {CSV}"
        ) from e
    synsets = loadmat(str(data / META), squeeze_me=True)["synsets"]
    wnid = {int(i): str(w) for i, w in zip(synsets["ILSVRC2012_ID"], synsets["WNID"], strict=True)}
    lines = (data / GROUND_TRUTH).read_text().split()
    try:
        return {f"ILSVRC2012_val_{n:08d}": wnid[int(i)] for n, i in enumerate(lines, 1)}
    except (KeyError, ValueError) as e:
        raise NlpError(f"{data / GROUND_TRUTH} names an ILSVRC2012_ID not in {META}: {e}") from e


def val_labels(folder: Path) -> tuple[dict[str, str], Path]:
    """Image id → wnid of the validation images, and the file it came from."""
    for base in (folder, folder / "images"):
        if (base / CSV).is_file():
            return _csv_labels(base / CSV), base / CSV
        for data in (base / DEVKIT / "data", base):
            if (data / GROUND_TRUTH).is_file() and (data / META).is_file():
                return _devkit_labels(data), data / GROUND_TRUTH
    raise NlpError(
        f"{folder / 'images' / 'val'} is flat and no label file was found. {where(folder)}"
    )


def _materialise(path: Path) -> None:
    """Replace the symlink `path` (to a folder) by a real folder of links to its entries, so that
    sorting works on links and never touches the linked folder. Resumes an interrupted swap."""
    partial = path.with_name(path.name + PARTIAL)
    if not path.exists() and not path.is_symlink() and partial.is_dir():
        partial.rename(path)  # the link was removed after `partial` was complete
        return
    if not path.is_symlink():
        return
    if partial.exists():
        shutil.rmtree(partial)  # links only: rmtree does not follow them
    target = path.resolve()
    partial.mkdir()
    for entry in sorted(os.scandir(target), key=lambda e: e.name):
        (partial / entry.name).symlink_to(target / entry.name, target_is_directory=entry.is_dir())
    path.unlink()
    partial.rename(path)


def sort_val(folder: Path) -> list[str]:
    """Move val/'s flat images into val/<wnid>/; a note of what was done (none when sorted).

    Everything is checked before the first move (a label per image, every wnid a train class,
    no name taken); each move is one rename that never replaces a file, so an interrupted run
    loses nothing and the next resumes. A val/ reached through a symlink is first rebuilt as
    links, and the links are sorted: the linked files stay as they are.
    """
    images, val = folder / "images", folder / "images" / "val"
    for path in (images, val):
        _materialise(path)
    flat = _images(val)
    if not flat:
        return []
    labels, source = val_labels(folder)
    unlabelled = [f for f in flat if Path(f).stem not in labels]
    if unlabelled:
        raise NlpError(
            f"{len(unlabelled)} of {len(flat)} images in {val} have no label in {source}, e.g. "
            f"{unlabelled[0]}: nothing was moved"
        )
    wnids = set(_wnid_dirs(images / "train"))
    strange = sorted({labels[Path(f).stem] for f in flat} - wnids)
    if strange:
        raise NlpError(
            f"{source} gives val images {len(strange)} wnid(s) with no train folder, e.g. "
            f"{strange[0]}: nothing was moved"
        )
    taken = [f for f in flat if (val / labels[Path(f).stem] / f).exists()]
    if taken:
        raise NlpError(
            f"{val / taken[0]} is also in {val / labels[Path(taken[0]).stem]}/: remove one of "
            "them; nothing was moved"
        )
    for f in flat:
        dest = val / labels[Path(f).stem]
        dest.mkdir(exist_ok=True)
        if (dest / f).exists() or (dest / f).is_symlink():
            raise NlpError(f"{dest / f} appeared while sorting: stopped, nothing was replaced")
        os.rename(val / f, dest / f)
    n_classes = len({labels[Path(f).stem] for f in flat})
    return [f"sorted {len(flat)} val images into {n_classes} wnid folders from {source.name}"]


def prepare(folder: Path) -> list[str]:
    """Check the user's files (one line naming what goes where when some are missing) and sort
    a flat val/."""
    for needed in ("images/train", "images/val", "classnames.txt"):
        if not (folder / needed).exists():
            raise NlpError(f"{folder / needed} is missing. {where(folder)}")
    return sort_val(folder)


register(
    DatasetSpec(
        "imagenet",
        "imagenet",
        "images",
        None,
        (),
        "ImageNet-1k (ILSVRC2012): 1000 classes, val as test (placed by hand: licence)",
        build=build,
        prepare=prepare,
        note="ILSVRC2012 cannot be downloaded automatically (licence)",
        required=("images/train", "images/val"),
        needs=("classnames.txt",),
    )
)
