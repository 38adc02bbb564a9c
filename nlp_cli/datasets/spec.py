"""A catalog entry (`DatasetSpec`, its `Source`s) and the registry the dataset families fill.

Each family module (`coop`, `cifar`, `generated`) calls `register(DatasetSpec(...))` at import;
`nlp_cli.datasets` imports them in catalog order, which is the order of `nlp download --list`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nlp_cli.datasets.folder import load_split_folder
from nlp_cli.datasets.splits import Dataset, Split, read_split_file, to_dataset
from nlp_cli.errors import NlpError
from nlp_cli.registry import Registry

# Present in a dataset folder while a download into it is under way (or died half-way).
INCOMPLETE = ".nlp-incomplete"


def gdrive(file_id: str) -> str:
    """A direct-download URL for a public Google Drive file (skips the virus-scan page)."""
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


@dataclass(frozen=True)
class Source:
    """One file to fetch: where from, its digest, and how to unpack it into the dataset folder."""

    url: str
    filename: str
    checksum: str | None = None  # "sha256:<hex>" or "md5:<hex>"; None when no digest is known
    extract: bool = True
    strip: str = ""  # leading folder inside the archive to drop (e.g. "dtd/")
    inner: tuple[str, ...] = ()  # archives inside the archive to unpack in turn (then delete)
    creates: str = ""  # path in the dataset folder that shows this source is already in place
    mirrors: tuple[str, ...] = ()
    optional: bool = False  # a split file: when unreachable, regenerate it instead
    size: int | None = None  # the file's length in bytes, when known: any other length is refused
    # No published digest: the SHA-256 is recorded beside the file when it is first fetched
    # (`<file>.sha256`, trust on first use) and every later use is checked against it.
    pin: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    """A catalog entry: CoOp folder layout, sources and the rules that make its split."""

    name: str
    folder: str
    image_dir: str
    split_file: str | None
    sources: tuple[Source, ...]
    description: str
    build: Callable[[Path, int], Split] | None = None
    # Run after the sources are in place (or adopted): checks and rearranges files; notes.
    prepare: Callable[[Path], list[str] | None] | None = None
    note: str = ""
    required: tuple[str, ...] = ()  # further folders the images live in (when image_dir is "")
    generate: Callable[[Path, int], Path] | None = field(default=None, compare=False)
    needs: tuple[str, ...] = ()  # files `build` reads: with them, a missing split is regenerated
    # A label set for another entry's images (CIFAR-10N for cifar10): label files, no images.
    labels_for: str = ""
    # A generated world's check of a folder before it is read (refuses another world's folder).
    verify: Callable[[Path], None] | None = field(default=None, compare=False)
    aliases: tuple[str, ...] = ()  # earlier names that still find this entry

    def present(self, folder: Path) -> bool:
        """True when `folder` holds this dataset's images and a split (file or rule)."""
        if self.generate is not None:
            if not (folder.is_dir() and any(folder.glob("split*.json"))):
                return False
            try:
                if self.verify is not None:
                    self.verify(folder)
            except NlpError:
                return False  # another world's folder: `nlp download` draws this one over it
            return True
        if (folder / INCOMPLETE).exists():
            return False
        if self.labels_for:
            return all((folder / src.filename).is_file() for src in self.sources)
        if self.image_dir and not (folder / self.image_dir).is_dir():
            return False
        if not all((folder / r).is_dir() for r in self.required):
            return False
        if self.split_file and (folder / self.split_file).is_file():
            return True
        return self.build is not None and all((folder / n).exists() for n in self.needs)

    def split(self, folder: Path, seed: int = 1) -> tuple[Split, list[str]]:
        """The split items and notes: the split file when present, else CoOp's rule."""
        if self.split_file and (folder / self.split_file).is_file():
            return read_split_file(folder / self.split_file), []
        if self.build is None:
            raise NlpError(
                f"{folder} has no {self.split_file or 'split file'} and {self.name} "
                "has no rule to regenerate it"
            )
        items = self.build(folder, seed)
        note = (
            f"{self.split_file} is missing: regenerated the split with CoOp's rule (seed {seed})"
            if self.split_file
            else ""
        )
        return items, [note] if note else []

    def load(self, folder: Path, seed: int = 1) -> Dataset:
        """Read the dataset in `folder` (CoOp layout) without writing anything."""
        if self.labels_for:
            raise NlpError(
                f"{self.name} holds labels for {self.labels_for}'s training images, no images: "
                f"embed {self.labels_for} and give the labels to `nlp corrupt`"
            )
        if self.generate is not None:
            if self.verify is not None:
                self.verify(folder)
            ds = load_split_folder(folder)
            if ds is None:
                raise NlpError(f"{folder} holds no split file for {self.name}")
            ds.name = self.name
            return ds
        image_root = folder / self.image_dir
        if not image_root.is_dir():
            raise NlpError(f"{folder} is not a {self.name} folder: {self.image_dir}/ is missing")
        items, notes = self.split(folder, seed)
        return to_dataset(self.name, image_root, items, notes)


_REGISTRY: Registry[DatasetSpec] = Registry("dataset")
# The live name → spec mapping, in registration order; lookups also match CoOp folder names.
CATALOG: dict[str, DatasetSpec] = _REGISTRY.mapping()


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a catalog entry under its name; a name registered twice is an error."""
    _REGISTRY.add(spec.name, spec)
    return spec
