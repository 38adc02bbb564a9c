"""The catalog, CoOp's class-name and split rules (against the real split files), user data."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from PIL import Image

from nlp_cli import datasets
from nlp_cli.datasets import catalog, folder
from nlp_cli.datasets import download as dl
from nlp_cli.errors import NlpError, UsageError

SPLITS = SHARED_DATA / "coop-splits"
MINI = SHARED_DATA / "mini"
needs_splits = pytest.mark.skipif(not SPLITS.is_dir(), reason="shared data absent")
needs_mini = pytest.mark.skipif(not MINI.is_dir(), reason="shared data absent")


def split_classnames(path: Path) -> list[str]:
    return datasets.catalog.to_dataset(
        "x", path.parent, catalog.read_split_file(path), []
    ).classnames


def touch_tree(root: Path, classes: list[str], n: int = 10) -> None:
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / c / f"img_{i:03d}.jpg").write_bytes(b"")


def write_images(root: Path, classes: list[str], n: int = 10, size=(24, 20)) -> None:
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", size, (30 * k % 255, 8 * i, 100)).save(root / c / f"{c}_{i}.png")


# --- registry ---------------------------------------------------------------------------------


def test_catalog_has_the_coop_datasets():
    expected = {
        "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
        "fgvc_aircraft", "dtd", "eurosat", "ucf101", "imagenet", "cifar10", "cifar100", "cifar10n",
        "cifar100n", "shapes", "shapes-easy", "shapes-fine",
    }  # fmt: skip
    assert set(datasets.list_datasets()) == expected
    assert datasets.get("caltech-101").name == "caltech101"


def test_unknown_dataset_suggests(cli):
    with pytest.raises(UsageError, match="did you mean 'caltech101'"):
        datasets.get("caltech10")
    r = cli("download", "eurosatt")
    assert r.code == 2 and "did you mean 'eurosat'" in r.stderr and r.stdout == ""


# --- CoOp's rules, checked against the real split files ---------------------------------------


@needs_splits
@pytest.mark.parametrize(
    "name,counts",
    [
        ("Caltech101", (4128, 1649, 2465)),
        ("DescribableTextures", (2820, 1128, 1692)),
        ("EuroSAT", (13500, 5400, 8100)),
        ("OxfordFlowers", (4093, 1633, 2463)),
        ("OxfordPets", (2944, 736, 3669)),
        ("StanfordCars", (6509, 1635, 8041)),
        ("UCF101", (7639, 1898, 3783)),
    ],
)
def test_real_split_files_read(name, counts):
    items = catalog.read_split_file(SPLITS / f"split_zhou_{name}.json")
    assert tuple(len(items[s]) for s in ("train", "val", "test")) == counts


@needs_splits
def test_caltech_rule_reproduces_split_classnames(tmp_path):
    real = json.loads((SPLITS / "split_zhou_Caltech101.json").read_text())
    folders = sorted({p.split("/")[0] for p, _, _ in real["train"]})
    touch_tree(tmp_path / "101_ObjectCategories", folders + ["BACKGROUND_Google", "Faces_easy"])
    ds = datasets.get("caltech101").load(tmp_path)
    assert len(ds.classnames) == 100
    assert ds.classnames == split_classnames(SPLITS / "split_zhou_Caltech101.json")
    assert {"face", "leopard", "airplane", "motorbike"} <= set(ds.classnames)
    assert ds.notes and "regenerated" in ds.notes[0]


@needs_splits
@pytest.mark.parametrize(
    "key,name,image_dir",
    [("eurosat", "EuroSAT", "2750"), ("dtd", "DescribableTextures", "images")],
)
def test_folder_rules_reproduce_split_classnames(tmp_path, key, name, image_dir):
    real = json.loads((SPLITS / f"split_zhou_{name}.json").read_text())
    touch_tree(tmp_path / image_dir, sorted({p.split("/")[0] for p, _, _ in real["train"]}))
    ds = datasets.get(key).load(tmp_path)
    assert ds.classnames == split_classnames(SPLITS / f"split_zhou_{name}.json")


@needs_splits
def test_pets_rule_reproduces_split_classnames(tmp_path):
    real = json.loads((SPLITS / "split_zhou_OxfordPets.json").read_text())
    rows = sorted({(Path(p).stem, y) for s in real.values() for p, y, _ in s})
    (tmp_path / "annotations").mkdir()
    lines = [f"{stem} {y + 1} 1 1" for stem, y in rows]
    (tmp_path / "annotations" / "trainval.txt").write_text("\n".join(lines[::2]))
    (tmp_path / "annotations" / "test.txt").write_text("\n".join(lines[1::2]))
    (tmp_path / "images").mkdir()
    ds = datasets.get("oxford_pets").load(tmp_path)
    assert ds.classnames == split_classnames(SPLITS / "split_zhou_OxfordPets.json")


@needs_splits
def test_ucf_rule_reproduces_split_classnames(tmp_path):
    names = split_classnames(SPLITS / "split_zhou_UCF101.json")
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    camel = ["".join(n.split("_")) for n in names]
    (lists / "classInd.txt").write_text("\n".join(f"{i + 1} {c}" for i, c in enumerate(camel)))
    for f, g in (("trainlist01.txt", "g08"), ("testlist01.txt", "g01")):
        rows = [
            f"{c}/v_{c}_{g}_c0{k}.avi {i + 1}" for i, c in enumerate(camel) for k in range(1, 6)
        ]
        (lists / f).write_text("\n".join(rows))
    (tmp_path / "UCF-101-midframes").mkdir()
    ds = datasets.get("ucf101").load(tmp_path)
    assert ds.classnames == names
    assert ds.paths["test"][0] == f"{names[0]}/v_{camel[0]}_g01_c01.jpg"


@needs_splits
def test_cars_rule_moves_year_to_front(tmp_path):
    np = pytest.importorskip("numpy")
    sio = pytest.importorskip("scipy.io")
    names = split_classnames(SPLITS / "split_zhou_StanfordCars.json")
    upstream = [" ".join(n.split(" ")[1:] + [n.split(" ")[0]]) for n in names]
    meta = np.empty((1, len(upstream)), dtype=object)
    for i, n in enumerate(upstream):
        meta[0, i] = np.array([n])
    (tmp_path / "devkit").mkdir()
    sio.savemat(tmp_path / "devkit" / "cars_meta.mat", {"class_names": meta})
    for fname, n in (("devkit/cars_train_annos.mat", 5), ("cars_test_annos_withlabels.mat", 2)):
        annos = np.zeros((1, len(names) * n), dtype=[("fname", object), ("class", object)])
        for k in range(len(names) * n):
            annos[0, k] = (np.array([f"{k:05d}.jpg"]), np.array([[k % len(names) + 1]]))
        sio.savemat(tmp_path / fname, {"annotations": annos})
    ds = datasets.get("stanford_cars").load(tmp_path)
    assert ds.classnames == names
    assert ds.paths["test"][0] == "cars_test/00000.jpg"


def test_regenerated_split_follows_coop_counts_and_seed(tmp_path):
    touch_tree(tmp_path / "2750", ["AnnualCrop", "River"], n=13)
    spec = datasets.get("eurosat")
    a = spec.load(tmp_path, seed=1)
    # round(13 * .5) = 6 (banker's rounding, as CoOp's Python round), round(13 * .2) = 3
    assert [len(a.paths[s]) for s in ("train", "val", "test")] == [12, 6, 8]
    assert a.paths == spec.load(tmp_path, seed=1).paths
    assert a.paths != spec.load(tmp_path, seed=2).paths
    assert sorted(a.paths["train"] + a.paths["val"] + a.paths["test"]) == sorted(
        f"{c}/img_{i:03d}.jpg" for c in ("AnnualCrop", "River") for i in range(13)
    )


# --- the shared mini data and --from ----------------------------------------------------------


@needs_mini
@pytest.mark.parametrize(
    "name,src,counts,first",
    [
        ("caltech101", "caltech-101", [30, 10, 20], "face"),
        ("eurosat", "eurosat", [60, 20, 40], "Annual Crop Land"),
    ],
)
def test_download_from_mini(cli, tmp_path, name, src, counts, first):
    before = sorted(p.name for p in (MINI / src).iterdir())
    r = cli("download", name, "--from", MINI / src, "--root", tmp_path)
    assert r.code == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path == tmp_path / datasets.get(name).folder and len(r.stdout.splitlines()) == 1
    ds = datasets.load(name, tmp_path)
    assert [len(ds.paths[s]) for s in ("train", "val", "test")] == counts
    assert ds.classnames[0] == first
    assert sorted(p.name for p in (MINI / src).iterdir()) == before
    assert cli("download", name, "--from", MINI / src, "--root", tmp_path).code == 0
    r = cli("download", "--list", "--json", "--root", tmp_path)
    present = {d["name"]: d["present"] for d in json.loads(r.stdout)}
    assert present[name] and not present["dtd"]


@needs_mini
def test_mini_caltech_classnames_follow_coop():
    ds = datasets.load(str(MINI / "caltech-101"))
    assert ds.name == "caltech101"
    assert ds.classnames == ["face", "leopard", "accordion", "car_side", "yin_yang"]


def test_from_without_split_regenerates_beside_links(cli, tmp_path):
    src = tmp_path / "src" / "caltech-101"
    touch_tree(src / "101_ObjectCategories", ["Faces", "Faces_easy", "Motorbikes", "ant"])
    r = cli("download", "caltech101", "--from", src, "--root", tmp_path / "root")
    assert r.code == 0, r.stderr
    assert "regenerated" in r.stderr
    out = Path(r.stdout.strip())
    assert (out / "split_zhou_Caltech101.json").is_file()
    assert not (src / "split_zhou_Caltech101.json").exists()
    assert datasets.load("caltech101", tmp_path / "root").classnames == ["face", "motorbike", "ant"]


def test_from_wrong_layout_is_a_usage_error(cli, tmp_path):
    (tmp_path / "x").mkdir()
    r = cli("download", "caltech101", "--from", tmp_path / "x", "--root", tmp_path)
    assert r.code == 2 and "101_ObjectCategories/ is missing" in r.stderr


def test_embed_of_absent_catalog_dataset_says_how(tmp_path):
    with pytest.raises(NlpError, match="nlp download dtd"):
        datasets.load("dtd", tmp_path)


# --- shapes (generated by another module: `nlp_cli.datasets.duo`) -------------------------------


def test_shapes_absent_is_one_clear_line(cli, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "nlp_cli.datasets.duo", None)
    monkeypatch.delattr(datasets, "duo", raising=False)
    r = cli("download", "shapes", "--root", tmp_path)
    assert r.code == 1 and "shapes generator" in r.stderr and len(r.stderr.splitlines()) == 1


def test_shapes_download_calls_generator(cli, monkeypatch, tmp_path):
    def generate(root: Path, seed: int = 0) -> Path:
        out = Path(root) / "shapes"
        write_images(out / "images", ["red circle", "blue square"], n=4)
        items = {
            s: [[f"{c}/{c}_{i}.png", k, c] for k, c in enumerate(["red circle", "blue square"])
                for i in idx]
            for s, idx in (("train", [0, 1]), ("val", [2]), ("test", [3]))
        }  # fmt: skip
        (out / "split_shapes.json").write_text(json.dumps(items))
        return out

    fake = types.SimpleNamespace(generate=generate)
    monkeypatch.setitem(sys.modules, "nlp_cli.datasets.duo", fake)
    monkeypatch.setattr(datasets, "duo", fake, raising=False)
    r = cli("download", "shapes", "--root", tmp_path)
    assert r.code == 0, r.stderr
    assert Path(r.stdout.strip()) == tmp_path / "shapes"
    ds = datasets.load("shapes", tmp_path)
    assert ds.classnames == ["red circle", "blue square"] and len(ds.paths["train"]) == 4
    assert ds.root == (tmp_path / "shapes" / "images").absolute()


# --- a user's own data ------------------------------------------------------------------------


def test_class_folders_get_a_reproducible_split(tmp_path):
    write_images(tmp_path / "mine", ["cat", "dog"], n=10)
    ds = datasets.load(str(tmp_path / "mine"))
    assert ds.name == "mine" and ds.classnames == ["cat", "dog"]
    assert [len(ds.paths[s]) for s in ("train", "val", "test")] == [10, 4, 6]
    assert "no test split" in ds.notes[0]
    assert datasets.load(str(tmp_path / "mine")).paths == ds.paths


def test_split_folders_are_kept(tmp_path):
    write_images(tmp_path / "mine" / "train", ["cat", "dog"], n=3)
    write_images(tmp_path / "mine" / "test", ["cat", "dog"], n=2)
    ds = datasets.load(str(tmp_path / "mine"))
    assert [len(ds.paths[s]) for s in ("train", "val", "test")] == [6, 0, 4]
    assert ds.notes == [] and ds.paths["test"][0].startswith("test/cat/")


def test_csv_with_header_and_splits(tmp_path):
    write_images(tmp_path / "imgs", ["a", "b"], n=3)
    rows = ["path,label,split"] + [
        f"imgs/{c}/{c}_{i}.png,{c},{'test' if i == 2 else 'train'}" for c in "ab" for i in range(3)
    ]
    (tmp_path / "data.csv").write_text("\n".join(rows))
    ds = datasets.load(str(tmp_path / "data.csv"))
    assert ds.classnames == ["a", "b"] and ds.root == tmp_path.absolute()
    assert [len(ds.paths[s]) for s in ("train", "val", "test")] == [4, 0, 2]


def test_csv_numeric_labels_sort_numerically(tmp_path):
    write_images(tmp_path, ["x"], n=12)
    rows = [f"x/x_{i}.png,{i % 3 * 5}" for i in range(12)]  # labels 0, 5, 10
    (tmp_path / "d.csv").write_text("\n".join(rows))
    ds = datasets.load(str(tmp_path / "d.csv"))
    assert ds.classnames == ["0", "5", "10"] and ds.notes


@pytest.mark.parametrize(
    "text,match",
    [
        ("x/missing.png,a\n", "do not exist"),
        ("x/x_0.png,a,holdout\n", "not one of train, val, test"),
        ("x/x_0.png\n", "not path,label"),
    ],
)
def test_csv_errors(tmp_path, text, match):
    write_images(tmp_path, ["x"], n=1)
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(NlpError, match=match):
        datasets.load(str(tmp_path / "d.csv"))


def test_too_few_images_for_a_split(tmp_path):
    write_images(tmp_path / "mine", ["cat"], n=2)
    with pytest.raises(NlpError, match="too few"):
        folder.load_class_folders(tmp_path / "mine")


def test_adopt_refuses_a_foreign_existing_folder(tmp_path):
    src = tmp_path / "src"
    touch_tree(src / "2750", ["River"], n=4)
    (tmp_path / "root" / "eurosat").mkdir(parents=True)
    (tmp_path / "root" / "eurosat" / "mine.txt").write_text("x")
    with pytest.raises(NlpError, match="remove it first"):
        dl.adopt(datasets.get("eurosat"), src, tmp_path / "root" / "eurosat")


@needs_mini
def test_coop_folder_name_works_as_a_catalog_name(tmp_path):
    dl.fetch_dataset(datasets.get("caltech101"), tmp_path, MINI / "caltech-101")
    assert datasets.load("caltech-101", tmp_path).name == "caltech101"
    with pytest.raises(UsageError, match="did you mean 'eurosat'"):
        datasets.load("eurosta", tmp_path)
