"""The old home of the catalog, kept importable: the names now live in `spec`, `splits` and the
family modules (`coop`, `cifar`, `generated`)."""

from nlp_cli.datasets.spec import CATALOG, INCOMPLETE, DatasetSpec, Source, gdrive, register
from nlp_cli.datasets.splits import (
    IMAGE_EXTS,
    Item,
    Split,
    read_and_split,
    read_split_file,
    save_split_file,
    split_trainval,
    to_dataset,
)

__all__ = [
    "CATALOG",
    "IMAGE_EXTS",
    "INCOMPLETE",
    "DatasetSpec",
    "Item",
    "Source",
    "Split",
    "gdrive",
    "read_and_split",
    "read_split_file",
    "register",
    "save_split_file",
    "split_trainval",
    "to_dataset",
]
