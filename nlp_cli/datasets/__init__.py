"""Dataset registry: the CoOp benchmarks (and `shapes`) by name, plus loading any dataset folder.

The entries live in one module per family (`coop`, `imagenet`, `cifar`, `generated`); the types
and CoOp's split files and rules in `spec` and `splits`; fetching in `download`; a user's own data
in `folder`.

A dataset on disk is a folder in CoOp's layout (`<root>/<folder>/<image_dir>/…` and a split file
`split_zhou_<Name>.json`), a user folder with one sub-folder per class, or a CSV
`path,label[,split]`. Every kind loads into the same `Dataset`: class names and, per split, image
paths relative to `Dataset.root` with their labels.
"""

from __future__ import annotations

from pathlib import Path

# isort: off
# Each family module registers its entries on import: this order is the catalog's.
from nlp_cli.datasets import coop  # noqa: F401
from nlp_cli.datasets import imagenet  # noqa: F401
from nlp_cli.datasets import cifar  # noqa: F401
from nlp_cli.datasets import generated  # noqa: F401

# isort: on
from nlp_cli.datasets import folder as user
from nlp_cli.datasets.spec import CATALOG, DatasetSpec, Source
from nlp_cli.datasets.splits import Dataset
from nlp_cli.errors import NlpError, UsageError, did_you_mean
from nlp_cli.home import data_dir

__all__ = [
    "CATALOG",
    "Dataset",
    "DatasetSpec",
    "Source",
    "get",
    "list_datasets",
    "load",
    "resolve",
]


def list_datasets() -> list[str]:
    """Catalog names, in catalog order."""
    return list(CATALOG)


def _lookup(name: str) -> DatasetSpec | None:
    key = name.lower().replace("-", "_")
    if key in CATALOG:
        return CATALOG[key]
    return next((s for s in CATALOG.values() if name == s.folder or name in s.aliases), None)


def get(name: str) -> DatasetSpec:
    """The catalog entry for `name` (or its CoOp folder name); a usage error when unknown."""
    spec = _lookup(name)
    if spec is None:
        raise _unknown(name)
    return spec


def _unknown(name: str) -> UsageError:
    key = name.lower().replace("-", "_")
    return UsageError(
        f"unknown dataset {name!r}{did_you_mean(key, list(CATALOG))}: "
        f"known are {', '.join(CATALOG)} (or pass a folder or CSV of your own)"
    )


def resolve(name_or_path: str, root: Path | None = None) -> tuple[DatasetSpec | None, Path]:
    """Find a dataset: a catalog name (looked up under `root`) or a path; returns (spec, path)."""
    root = Path(root) if root is not None else data_dir()
    path = Path(name_or_path).expanduser()
    spec = _lookup(name_or_path)
    if spec is not None and not (path.exists() and ("/" in name_or_path or path.is_file())):
        folder = root / spec.folder
        if not folder.is_dir():
            raise NlpError(
                f"dataset {spec.name} is not under {root}: run `nlp download {spec.name}` "
                f"(or `nlp download {spec.name} --from DIR` for a local copy)"
            )
        return spec, folder
    if path.exists():
        if path.is_dir():
            return detect(path), path
        return None, path
    raise _unknown(name_or_path)


def detect(folder: Path) -> DatasetSpec | None:
    """The catalog entry whose CoOp layout `folder` has (split file or folder name), else None."""
    for spec in CATALOG.values():
        if spec.split_file and (folder / spec.split_file).is_file():
            return spec
    for spec in CATALOG.values():
        if folder.name == spec.folder and spec.image_dir and (folder / spec.image_dir).is_dir():
            return spec
    return None


def load(name_or_path: str, root: Path | None = None, seed: int = 1) -> Dataset:
    """Load a catalog dataset, a CoOp-layout folder, a class-folder tree or a CSV."""
    spec, path = resolve(name_or_path, root)
    if spec is not None:
        return spec.load(path, seed=seed)
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise UsageError(f"{path} is a file but not a CSV of path,label[,split]")
        return user.load_csv(path, seed=seed)
    split = user.load_split_folder(path)
    if split is not None:
        return split
    return user.load_class_folders(path, seed=seed)
