"""ImageNet in CoOp's layout from a tiny fake ILSVRC2012: placed by hand, flat val sorted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from nlp_cli import datasets
from nlp_cli.datasets import download as dl
from nlp_cli.datasets import imagenet
from nlp_cli.errors import NlpError

# CoOp's classnames.txt is in CLIP's names; file order differs from wnid order on purpose.
CLASSNAMES = {"n01530575": "brambling", "n01440764": "tench", "n01443537": "goldfish"}
# ILSVRC2012_ID order of the devkit (not sorted by wnid).
DEVKIT_IDS = {1: "n01530575", 2: "n01443537", 3: "n01440764"}
VAL = {  # val image id -> wnid
    "ILSVRC2012_val_00000001": "n01443537",
    "ILSVRC2012_val_00000002": "n01440764",
    "ILSVRC2012_val_00000003": "n01530575",
    "ILSVRC2012_val_00000004": "n01440764",
    "ILSVRC2012_val_00000005": "n01530575",
    "ILSVRC2012_val_00000006": "n01443537",
}


def fake_imagenet(root: Path, csv: bool = True, per_class: int = 3) -> Path:
    """The files a user has: train/<wnid>/*.JPEG, a flat val/, classnames.txt and Kaggle's csv."""
    images = root / "images"
    for k, wnid in enumerate(sorted(CLASSNAMES)):
        (images / "train" / wnid).mkdir(parents=True)
        for i in range(per_class):
            img = Image.new("RGB", (8, 8), (60 * k, 20 * i, 90))
            img.save(images / "train" / wnid / f"{wnid}_{i}.JPEG", format="JPEG")
    (images / "val").mkdir()
    for n, image_id in enumerate(VAL):
        Image.new("RGB", (8, 8), (10 * n, 0, 0)).save(images / "val" / f"{image_id}.JPEG", "JPEG")
    (root / "classnames.txt").write_text("".join(f"{w} {c}\n" for w, c in CLASSNAMES.items()))
    if csv:
        rows = [f"{i},{w} 10 20 30 40 {w} 1 2 3 4" for i, w in reversed(VAL.items())]
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows))
    return root


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def sorted_val(folder: Path) -> dict[str, str]:
    val = folder / "images" / "val"
    return {p.stem: p.parent.name for p in val.glob("*/*.JPEG")}


def test_nothing_placed_says_so_in_one_line(cli, tmp_path):
    r = cli("download", "imagenet", "--root", tmp_path)
    assert r.code == 1 and r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: ") and "cannot be downloaded automatically" in line
    folder = tmp_path / "imagenet"
    for where in (f"{folder / 'images'}/", "classnames.txt", "LOC_val_solution.csv", "--from"):
        assert where in line


def test_flat_val_is_sorted_from_the_kaggle_csv_and_loads_as_coop(cli, tmp_path):
    folder = fake_imagenet(tmp_path / "imagenet")
    r = cli("download", "imagenet", "--root", tmp_path)
    assert r.code == 0, r.stderr
    assert r.stdout.strip() == str(folder)
    assert "sorted 6 val images into 3 wnid folders from LOC_val_solution.csv" in r.stderr
    assert sorted_val(folder) == VAL
    assert not list((folder / "images" / "val").glob("*.JPEG"))

    ds = datasets.load("imagenet", tmp_path)
    # CoOp: labels are the sorted train wnids; names from classnames.txt; val is the test set.
    assert ds.classnames == ["tench", "goldfish", "brambling"]
    assert len(ds.paths["train"]) == 9 and ds.paths["val"] == []
    assert sorted(ds.paths["test"]) == sorted(f"val/{w}/{i}.JPEG" for i, w in VAL.items())
    wnids = sorted(CLASSNAMES)
    for path, label in zip(ds.paths["test"], ds.labels["test"], strict=True):
        assert wnids[label] == VAL[Path(path).stem]
    for path, label in zip(ds.paths["train"], ds.labels["train"], strict=True):
        assert path.startswith(f"train/{wnids[label]}/") and (ds.root / path).is_file()

    before = listing(folder)
    again = cli("download", "imagenet", "--root", tmp_path)
    assert again.code == 0 and "sorted" not in again.stderr
    assert listing(folder) == before


def test_missing_label_file_is_one_line_and_moves_nothing(cli, tmp_path):
    folder = fake_imagenet(tmp_path / "imagenet", csv=False)
    before = listing(folder)
    r = cli("download", "imagenet", "--root", tmp_path)
    assert r.code == 1
    (line,) = r.stderr.strip().splitlines()
    assert "is flat and no label file was found" in line and "LOC_val_solution.csv" in line
    assert listing(folder) == before
    with pytest.raises(NlpError, match="outside wnid folders"):
        datasets.load("imagenet", tmp_path)


def test_an_image_without_a_label_moves_nothing(tmp_path):
    folder = fake_imagenet(tmp_path / "imagenet")
    Image.new("RGB", (8, 8)).save(folder / "images" / "val" / "ILSVRC2012_val_00000099.JPEG")
    before = listing(folder)
    with pytest.raises(NlpError, match="1 of 7 images .* have no label .*nothing was moved"):
        imagenet.prepare(folder)
    assert listing(folder) == before


def test_an_interrupted_sort_loses_nothing_and_resumes(tmp_path, monkeypatch):
    folder = fake_imagenet(tmp_path / "imagenet")
    real, moves = os.rename, []

    def flaky(src, dst):
        if len(moves) == 2:
            raise OSError("disk went away")
        moves.append(dst)
        real(src, dst)

    monkeypatch.setattr(imagenet.os, "rename", flaky)
    with pytest.raises(OSError):
        imagenet.prepare(folder)
    val = folder / "images" / "val"
    assert len(list(val.glob("*.JPEG"))) + len(list(val.glob("*/*.JPEG"))) == len(VAL)
    monkeypatch.setattr(imagenet.os, "rename", real)
    assert imagenet.prepare(folder) == [
        "sorted 4 val images into 3 wnid folders from LOC_val_solution.csv"
    ]
    assert sorted_val(folder) == VAL


def test_from_dir_sorts_links_and_leaves_the_copy_alone(cli, tmp_path):
    src = fake_imagenet(tmp_path / "copy")
    before = listing(src)
    r = cli("download", "imagenet", "--root", tmp_path / "root", "--from", src)
    assert r.code == 0, r.stderr
    folder = tmp_path / "root" / "imagenet"
    assert listing(src) == before
    assert sorted_val(folder) == VAL
    linked = next((folder / "images" / "val").glob("*/*.JPEG"))
    assert linked.is_symlink() and linked.resolve().parent == (src / "images" / "val").resolve()
    ds = datasets.load("imagenet", tmp_path / "root")
    assert len(ds.paths["test"]) == len(VAL) and len(ds.paths["train"]) == 9
    assert cli("download", "imagenet", "--root", tmp_path / "root", "--from", src).code == 0
    assert listing(src) == before and sorted_val(folder) == VAL


def test_devkit_ground_truth_and_meta_mat(tmp_path):
    np = pytest.importorskip("numpy")
    sio = pytest.importorskip("scipy.io")
    folder = fake_imagenet(tmp_path / "imagenet", csv=False)
    data = folder / imagenet.DEVKIT / "data"
    data.mkdir(parents=True)
    synsets = np.zeros((len(DEVKIT_IDS), 1), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
    for row, (i, w) in enumerate(DEVKIT_IDS.items()):
        synsets[row, 0] = (i, w)
    sio.savemat(str(data / imagenet.META), {"synsets": synsets})
    ids = {w: i for i, w in DEVKIT_IDS.items()}
    (data / imagenet.GROUND_TRUTH).write_text("".join(f"{ids[w]}\n" for w in VAL.values()))
    notes = imagenet.prepare(folder)
    assert notes == [f"sorted 6 val images into 3 wnid folders from {imagenet.GROUND_TRUTH}"]
    assert sorted_val(folder) == VAL


def test_a_train_wnid_missing_from_classnames_is_refused(tmp_path):
    folder = fake_imagenet(tmp_path / "imagenet")
    (folder / "images" / "train" / "n09999999").mkdir()
    imagenet.prepare(folder)
    with pytest.raises(NlpError, match="no line in .*classnames.txt, e.g. n09999999"):
        datasets.load("imagenet", tmp_path)


def test_catalog_lists_imagenet_without_sources(cli, tmp_path):
    r = cli("download", "--list", "--json", "--root", tmp_path)
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["imagenet"]["present"] is False
    fake_imagenet(tmp_path / "imagenet")
    assert dl.fetch_dataset(datasets.get("imagenet"), tmp_path)[0] == tmp_path / "imagenet"
    r = cli("download", "--list", "--json", "--root", tmp_path)
    assert {row["name"]: row for row in json.loads(r.stdout)}["imagenet"]["present"] is True
