"""The CoOp benchmark catalog: where each dataset comes from, its folder layout and class names.

Layouts, split files and class-name rules follow CoOp's `datasets/*.py` (Zhou et al.). Where a
split file is missing, the split is regenerated with CoOp's rule (per class 50/20/30, or a 20 %
validation cut of the official train+val list) using `random.Random(seed)`; CoOp shuffles with
the global `random` after `os.listdir`, whose order depends on the file system, so we sort file
names first to make the regenerated split reproducible anywhere.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nlp_cli.errors import NlpError

if TYPE_CHECKING:
    from nlp_cli.datasets import Dataset

Item = tuple[str, int, str]  # (path relative to the image folder, label, class name)
Split = dict[str, list[Item]]

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
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
    prepare: Callable[[Path], None] | None = None
    note: str = ""
    required: tuple[str, ...] = ()  # further folders the images live in (when image_dir is "")
    generate: Callable[[Path, int], Path] | None = field(default=None, compare=False)

    def present(self, folder: Path) -> bool:
        """True when `folder` holds this dataset's images and a split (file or rule)."""
        if self.generate is not None:
            return folder.is_dir() and any(folder.glob("split*.json"))
        if (folder / INCOMPLETE).exists():
            return False
        if self.image_dir and not (folder / self.image_dir).is_dir():
            return False
        if not all((folder / r).is_dir() for r in self.required):
            return False
        if self.split_file and (folder / self.split_file).is_file():
            return True
        return self.build is not None and _can_build(self, folder)

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
        if self.generate is not None:
            from nlp_cli.datasets.folder import load_split_folder

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


def to_dataset(name: str, root: Path, items: Split, notes: list[str]) -> Dataset:
    """Turn split items into a Dataset; class names come from the items' third column."""
    from nlp_cli.datasets import Dataset

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
        return {
            s: [(str(p), int(y), str(c)) for p, y, c in data.get(s, [])]
            for s in ("train", "val", "test")
        }
    except (OSError, ValueError, TypeError) as e:
        raise NlpError(f"{path} is not a CoOp split file ({type(e).__name__}: {e})") from e


def save_split_file(items: Split, path: Path) -> None:
    """Write a split file in CoOp's format, atomically."""
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

CALTECH_IGNORED = ("BACKGROUND_Google", "Faces_easy")
CALTECH_NEW_CNAMES = {
    "airplanes": "airplane",
    "Faces": "face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
}
EUROSAT_NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def _build_caltech(folder: Path, seed: int) -> Split:
    return read_and_split(
        folder / "101_ObjectCategories",
        seed,
        ignored=CALTECH_IGNORED,
        new_cnames=CALTECH_NEW_CNAMES,
    )


def _build_plain(image_dir: str) -> Callable[[Path, int], Split]:
    def build(folder: Path, seed: int) -> Split:
        return read_and_split(folder / image_dir, seed)

    return build


def _build_eurosat(folder: Path, seed: int) -> Split:
    return read_and_split(folder / "2750", seed, new_cnames=EUROSAT_NEW_CNAMES)


def pets_read(anno_file: Path) -> list[Item]:
    """CoOp's OxfordPets.read_data: breed = lower-cased file stem without its number."""
    items = []
    for line in anno_file.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        imname, label, _species, _ = line.strip().split(" ")
        breed = "_".join(imname.split("_")[:-1]).lower()
        items.append((f"{imname}.jpg", int(label) - 1, breed))
    return items


def _build_pets(folder: Path, seed: int) -> Split:
    trainval = pets_read(folder / "annotations" / "trainval.txt")
    test = pets_read(folder / "annotations" / "test.txt")
    train, val = split_trainval(trainval, seed)
    return {"train": train, "val": val, "test": test}


def _loadmat(path: Path):
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise NlpError(
            f"reading {path.name} needs scipy (pip install scipy), or place the CoOp split file"
        ) from e
    return loadmat(str(path))


def cars_read(folder: Path, image_dir: str, anno_file: Path, meta_file: Path) -> list[Item]:
    """CoOp's StanfordCars.read_data: the model year moves to the front of the class name."""
    annos = _loadmat(anno_file)["annotations"][0]
    names = _loadmat(meta_file)["class_names"][0]
    items = []
    for a in annos:
        label = int(a["class"][0, 0]) - 1
        words = str(names[label][0]).split(" ")
        year = words.pop(-1)
        items.append((f"{image_dir}/{a['fname'][0]}", label, " ".join([year, *words])))
    return items


def _build_cars(folder: Path, seed: int) -> Split:
    meta = folder / "devkit" / "cars_meta.mat"
    trainval = cars_read(folder, "cars_train", folder / "devkit" / "cars_train_annos.mat", meta)
    test = cars_read(folder, "cars_test", folder / "cars_test_annos_withlabels.mat", meta)
    train, val = split_trainval(trainval, seed)
    return {"train": train, "val": val, "test": test}


def _build_flowers(folder: Path, seed: int) -> Split:
    labels = _loadmat(folder / "imagelabels.mat")["labels"][0]
    lab2cname = json.loads((folder / "cat_to_name.json").read_text())
    tracker: dict[int, list[str]] = defaultdict(list)
    for i, label in enumerate(labels):
        tracker[int(label)].append(f"image_{i + 1:05d}.jpg")
    rng = random.Random(seed)
    out: Split = {"train": [], "val": [], "test": []}
    for label, paths in tracker.items():
        rng.shuffle(paths)
        n_train, n_val = round(len(paths) * 0.5), round(len(paths) * 0.2)
        cname = lab2cname[str(label)]
        out["train"] += [(p, label - 1, cname) for p in paths[:n_train]]
        out["val"] += [(p, label - 1, cname) for p in paths[n_train : n_train + n_val]]
        out["test"] += [(p, label - 1, cname) for p in paths[n_train + n_val :]]
    return out


def aircraft_read(folder: Path, split_file: str, cname2lab: dict[str, int]) -> list[Item]:
    """CoOp's FGVCAircraft.read_data: `<image id> <variant name>` per line."""
    items = []
    for line in (folder / split_file).read_text().splitlines():
        if not line.strip():
            continue
        parts = line.strip().split(" ")
        cname = " ".join(parts[1:])
        items.append((f"{parts[0]}.jpg", cname2lab[cname], cname))
    return items


def _build_aircraft(folder: Path, seed: int) -> Split:
    names = [ln.strip() for ln in (folder / "variants.txt").read_text().splitlines() if ln.strip()]
    cname2lab = {c: i for i, c in enumerate(names)}
    return {
        s: aircraft_read(folder, f"images_variant_{s}.txt", cname2lab)
        for s in ("train", "val", "test")
    }


def ucf_read(list_file: Path, cname2lab: dict[str, int]) -> list[Item]:
    """CoOp's UCF101.read_data: CamelCase actions become Snake_Case folders of mid-frames."""
    items = []
    for line in list_file.read_text().splitlines():
        if not line.strip():
            continue
        action, filename = line.strip().split(" ")[0].split("/")
        renamed = "_".join(re.findall("[A-Z][^A-Z]*", action))
        items.append((f"{renamed}/{filename.replace('.avi', '.jpg')}", cname2lab[action], renamed))
    return items


def _build_ucf(folder: Path, seed: int) -> Split:
    lists = folder / "ucfTrainTestlist"
    cname2lab = {}
    for line in (lists / "classInd.txt").read_text().splitlines():
        if line.strip():
            label, cname = line.strip().split(" ")
            cname2lab[cname] = int(label) - 1
    trainval = ucf_read(lists / "trainlist01.txt", cname2lab)
    test = ucf_read(lists / "testlist01.txt", cname2lab)
    train, val = split_trainval(trainval, seed)
    return {"train": train, "val": val, "test": test}


def _prepare_cifar10(folder: Path) -> None:
    """Unpickle CIFAR-10's batches into PNGs per class and write its split file."""
    import pickle

    import numpy as np
    from PIL import Image

    src = folder / "cifar-10-batches-py"
    if (folder / "split_cifar10.json").is_file() or not src.is_dir():
        return
    items: Split = {"train": [], "val": [], "test": []}
    batches = [("train", f"data_batch_{i}") for i in range(1, 6)] + [("test", "test_batch")]
    for split, batch in batches:
        with open(src / batch, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        for img, label, fname in zip(data, d[b"labels"], d[b"filenames"], strict=True):
            cname = CIFAR10_CLASSES[label]
            rel = f"{split}/{cname}/{Path(fname.decode()).stem}.png"
            (folder / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / "images" / rel)
            items[split].append((rel, int(label), cname))
    save_split_file(items, folder / "split_cifar10.json")


def _can_build(spec: DatasetSpec, folder: Path) -> bool:
    needs = {
        "oxford_pets": ["annotations/trainval.txt", "annotations/test.txt"],
        "stanford_cars": ["devkit/cars_meta.mat", "devkit/cars_train_annos.mat"],
        "oxford_flowers": ["imagelabels.mat", "cat_to_name.json"],
        "fgvc_aircraft": ["variants.txt", "images_variant_train.txt"],
        "ucf101": ["ucfTrainTestlist/classInd.txt"],
    }.get(spec.name, [])
    return all((folder / n).exists() for n in needs)


def _generate_shapes(root: Path, seed: int) -> Path:
    try:
        from nlp_cli.datasets import shapes
    except ImportError as e:
        raise NlpError("the shapes generator (nlp_cli.datasets.shapes) is not installed") from e
    return Path(shapes.generate(root, seed=seed))


def _generate_shapes_fine(root: Path, seed: int) -> Path:
    from nlp_cli.datasets import shapes_fine

    return Path(shapes_fine.generate(root, seed=seed))


OX = "https://www.robots.ox.ac.uk/~vgg/data"
CATALOG: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec(
            "caltech101",
            "caltech-101",
            "101_ObjectCategories",
            "split_zhou_Caltech101.json",
            (
                Source(
                    "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip?download=1",
                    "caltech-101.zip",
                    strip="caltech-101/",
                    inner=("101_ObjectCategories.tar.gz",),
                    creates="101_ObjectCategories",
                ),
                Source(
                    gdrive("1hyarUivQE36mY6jSomru6Fjd-JzwcCzN"),
                    "split_zhou_Caltech101.json",
                    extract=False,
                    creates="split_zhou_Caltech101.json",
                    optional=True,
                ),
            ),
            "Caltech101: 100 object classes (no background)",
            build=_build_caltech,
        ),
        DatasetSpec(
            "oxford_pets",
            "oxford_pets",
            "images",
            "split_zhou_OxfordPets.json",
            (
                Source(
                    f"{OX}/pets/data/images.tar.gz",
                    "images.tar.gz",
                    "md5:5c4f3ee8e5d25df40f4fd59a7f44e54c",
                    creates="images",
                ),
                Source(
                    f"{OX}/pets/data/annotations.tar.gz",
                    "annotations.tar.gz",
                    "md5:95a8c909bbe2e81eed6a22bccdf3f68f",
                    creates="annotations",
                ),
                Source(
                    gdrive("1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"),
                    "split_zhou_OxfordPets.json",
                    extract=False,
                    creates="split_zhou_OxfordPets.json",
                    optional=True,
                ),
            ),
            "Oxford-IIIT Pets: 37 cat and dog breeds",
            build=_build_pets,
        ),
        DatasetSpec(
            "stanford_cars",
            "stanford_cars",
            "",
            "split_zhou_StanfordCars.json",
            (
                Source(
                    "http://ai.stanford.edu/~jkrause/car196/cars_train.tgz",
                    "cars_train.tgz",
                    creates="cars_train",
                ),
                Source(
                    "http://ai.stanford.edu/~jkrause/car196/cars_test.tgz",
                    "cars_test.tgz",
                    creates="cars_test",
                ),
                Source(
                    "https://ai.stanford.edu/~jkrause/cars/car_devkit.tgz",
                    "car_devkit.tgz",
                    creates="devkit",
                ),
                Source(
                    "http://ai.stanford.edu/~jkrause/car196/cars_test_annos_withlabels.mat",
                    "cars_test_annos_withlabels.mat",
                    extract=False,
                    creates="cars_test_annos_withlabels.mat",
                ),
                Source(
                    gdrive("1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT"),
                    "split_zhou_StanfordCars.json",
                    extract=False,
                    creates="split_zhou_StanfordCars.json",
                    optional=True,
                ),
            ),
            "Stanford Cars: 196 car models",
            build=_build_cars,
            required=("cars_train", "cars_test"),
            note=(
                "the official ai.stanford.edu URLs are dead; get cars_train/, cars_test/, devkit/ "
                "(e.g. Kaggle 'jessicali9530/stanford-cars-dataset') and use --from"
            ),
        ),
        DatasetSpec(
            "oxford_flowers",
            "oxford_flowers",
            "jpg",
            "split_zhou_OxfordFlowers.json",
            (
                Source(
                    f"{OX}/flowers/102/102flowers.tgz",
                    "102flowers.tgz",
                    "md5:52808999861908f626f3c1f4e79d11fa",
                    creates="jpg",
                ),
                Source(
                    f"{OX}/flowers/102/imagelabels.mat",
                    "imagelabels.mat",
                    "md5:e0620be6f572b9609742df49c70aed4d",
                    extract=False,
                    creates="imagelabels.mat",
                ),
                Source(
                    gdrive("1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0"),
                    "cat_to_name.json",
                    extract=False,
                    creates="cat_to_name.json",
                ),
                Source(
                    gdrive("1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT"),
                    "split_zhou_OxfordFlowers.json",
                    extract=False,
                    creates="split_zhou_OxfordFlowers.json",
                    optional=True,
                ),
            ),
            "Oxford Flowers 102",
            build=_build_flowers,
        ),
        DatasetSpec(
            "food101",
            "food-101",
            "images",
            "split_zhou_Food101.json",
            (
                Source(
                    "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
                    "food-101.tar.gz",
                    "md5:85eeb15f3717b99a5da872d97d918f87",
                    strip="food-101/",
                    creates="images",
                ),
                Source(
                    gdrive("1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl"),
                    "split_zhou_Food101.json",
                    extract=False,
                    creates="split_zhou_Food101.json",
                    optional=True,
                ),
            ),
            "Food-101: 101 dishes",
            build=_build_plain("images"),
        ),
        DatasetSpec(
            "fgvc_aircraft",
            "fgvc_aircraft",
            "images",
            None,
            (
                Source(
                    f"{OX}/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                    "fgvc-aircraft-2013b.tar.gz",
                    strip="fgvc-aircraft-2013b/data/",
                    creates="images",
                ),
            ),
            "FGVC Aircraft: 100 aircraft variants (official train/val/test lists)",
            build=_build_aircraft,
        ),
        DatasetSpec(
            "dtd",
            "dtd",
            "images",
            "split_zhou_DescribableTextures.json",
            (
                Source(
                    f"{OX}/dtd/download/dtd-r1.0.1.tar.gz",
                    "dtd-r1.0.1.tar.gz",
                    "md5:fff73e5086ae6bdbea199a49dfb8a4c1",
                    strip="dtd/",
                    creates="images",
                ),
                Source(
                    gdrive("1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x"),
                    "split_zhou_DescribableTextures.json",
                    extract=False,
                    creates="split_zhou_DescribableTextures.json",
                    optional=True,
                ),
            ),
            "Describable Textures: 47 texture classes",
            build=_build_plain("images"),
        ),
        DatasetSpec(
            "eurosat",
            "eurosat",
            "2750",
            "split_zhou_EuroSAT.json",
            (
                Source(
                    # The original madm.dfki.de host's certificate expired; torchvision's mirror.
                    "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
                    "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
                    "EuroSAT.zip",
                    "md5:c8fa014336c82ac7804f0398fcb19387",
                    creates="2750",
                    mirrors=("https://madm.dfki.de/files/sentinel/EuroSAT.zip",),
                ),
                Source(
                    gdrive("1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o"),
                    "split_zhou_EuroSAT.json",
                    extract=False,
                    creates="split_zhou_EuroSAT.json",
                    optional=True,
                ),
            ),
            "EuroSAT: 10 land-use classes from Sentinel-2 (RGB)",
            build=_build_eurosat,
        ),
        DatasetSpec(
            "ucf101",
            "ucf101",
            "UCF-101-midframes",
            "split_zhou_UCF101.json",
            (
                Source(
                    gdrive("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O"),
                    "UCF-101-midframes.zip",
                    creates="UCF-101-midframes",
                ),
                Source(
                    gdrive("1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y"),
                    "split_zhou_UCF101.json",
                    extract=False,
                    creates="split_zhou_UCF101.json",
                    optional=True,
                ),
            ),
            "UCF101: 101 actions, one middle frame per video",
            build=_build_ucf,
        ),
        DatasetSpec(
            "cifar10",
            "cifar-10",
            "images",
            "split_cifar10.json",
            (
                Source(
                    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    "cifar-10-python.tar.gz",
                    "md5:c58f30108f718f92721af3b95e74349a",
                    creates="cifar-10-batches-py",
                ),
            ),
            "CIFAR-10: 10 classes, 50000 train / 10000 test (DSPT's appendix)",
            prepare=_prepare_cifar10,
        ),
        DatasetSpec(
            "shapes",
            "shapes",
            "",
            None,
            (),
            "Generated coloured shapes (offline, deterministic)",
            generate=_generate_shapes,
        ),
        DatasetSpec(
            "shapes-fine",
            "shapes-fine",
            "",
            None,
            (),
            "Generated fine-grained shapes, 60 classes (offline, deterministic; experimental)",
            generate=_generate_shapes_fine,
        ),
    ]
}
