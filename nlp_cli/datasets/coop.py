"""The nine CoOp benchmarks: sources, folder layouts and the rules of CoOp's `datasets/*.py`.

Layouts, split files and class-name rules follow CoOp (Zhou et al.): each `_build_*` regenerates
the split CoOp would make when the published `split_zhou_*.json` cannot be had.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from nlp_cli.datasets.spec import DatasetSpec, Source, gdrive, register
from nlp_cli.datasets.splits import Item, Split, read_and_split, split_trainval
from nlp_cli.errors import NlpError

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


OX = "https://www.robots.ox.ac.uk/~vgg/data"


register(
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
    )
)

register(
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
        needs=("annotations/trainval.txt", "annotations/test.txt"),
    )
)

register(
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
        needs=("devkit/cars_meta.mat", "devkit/cars_train_annos.mat"),
    )
)

register(
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
        needs=("imagelabels.mat", "cat_to_name.json"),
    )
)

register(
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
    )
)

register(
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
        needs=("variants.txt", "images_variant_train.txt"),
    )
)

register(
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
    )
)

register(
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
    )
)

register(
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
        needs=("ucfTrainTestlist/classInd.txt",),
    )
)
