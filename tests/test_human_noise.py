"""CIFAR-10N / CIFAR-100N: downloads from a local server, safe loading, `nlp corrupt --human`.

The label files are generated in the published layout (a torch-saved dict of numpy int arrays,
50000 labels in the order of the training pickles) with known human errors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_download import Server, local, targz

from nlp_cli import artifacts, datasets
from nlp_cli.datasets import cifar
from nlp_cli.datasets import download as dl
from nlp_cli.errors import NlpError
from nlp_cli.home import data_dir

N = 50000
CIFAR10N_KEYS = ("aggre_label", "worse_label", "random_label1", "random_label2", "random_label3")
RATES = {
    "aggre_label": 0.09,
    "worse_label": 0.40,
    "random_label1": 0.17,
    "random_label2": 0.18,
    "random_label3": 0.18,
    "noisy_label": 0.40,
}


def human_labels(num_classes: int, keys: tuple[str, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """Clean labels in class-cycling order and, per key, a known share flipped to other classes."""
    rng = np.random.default_rng(seed)
    clean = np.arange(N) % num_classes
    out = {"clean_label": clean}
    for key in keys:
        wrong = rng.random(N) < RATES[key]
        noisy = clean.copy()
        noisy[wrong] = (clean[wrong] + rng.integers(1, num_classes, int(wrong.sum()))) % num_classes
        out[key] = noisy
    return out


def saved(obj: object, zip_format: bool = True) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=zip_format)
    return buf.getvalue()


def cifar_features(
    path: Path, clean: np.ndarray, dataset: str = "cifar10", classnames=cifar.CIFAR10_CLASSES
) -> Path:
    """A features artifact shaped like `nlp embed cifar10`'s: train labels in pickle order."""
    g = torch.Generator().manual_seed(0)
    labels = torch.as_tensor(clean, dtype=torch.long)
    tensors = {
        "train.features": torch.randn(len(labels), 4, generator=g).half(),
        "train.labels": labels,
        "test.features": torch.randn(20, 4, generator=g).half(),
        "test.labels": torch.arange(20) % len(classnames),
    }
    meta = {
        "model": {"name": "tiny", "digest": "0" * 16},
        "dataset": dataset,
        "classnames": list(classnames),
        "paths": {"train": [], "val": [], "test": []},
        "root": "",
        "options": {"seed": 0},
        "upstream": {},
    }
    meta["key"] = artifacts.cache_key("features", {}, {"n": len(labels), "dataset": dataset})
    return artifacts.save(path, "features", tensors, meta)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(scope="module")
def c10() -> dict[str, np.ndarray]:
    return human_labels(10, CIFAR10N_KEYS)


@pytest.fixture
def placed(c10) -> Path:
    """CIFAR-10N's file where `nlp download cifar10n` puts it."""
    target = data_dir() / "cifar-10n" / "CIFAR-10_human.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(saved(c10))
    return target


def served(spec, srv: Server, data: bytes, size: int | None = None):
    """The catalog entry served by the local server, its size pinned to `data`'s (or `size`)."""
    spec = local(spec, srv, {spec.sources[0].filename: data})
    src = dataclasses.replace(spec.sources[0], size=len(data) if size is None else size)
    return dataclasses.replace(spec, sources=(src,))


def counted_transition(true: list[int], given: list[int], c: int) -> list[list[float]]:
    """Row = true class, column = given label, by plain counting."""
    pairs = Counter(zip(true, given, strict=True))
    rows = Counter(true)
    return [
        [pairs[(i, j)] / rows[i] if rows[i] else float(i == j) for j in range(c)] for i in range(c)
    ]


# --- download --------------------------------------------------------------------------------


def test_download_pins_sha256_on_first_use_and_refuses_a_changed_file(
    cli, server, monkeypatch, c10
):
    data = saved(c10)
    monkeypatch.setitem(
        datasets.CATALOG, "cifar10n", served(datasets.get("cifar10n"), server, data)
    )
    r = cli("download", "cifar10n")
    assert r.code == 0, r.stderr
    folder = Path(r.stdout.strip())
    assert folder == data_dir() / "cifar-10n"
    assert (folder / "CIFAR-10_human.pt").read_bytes() == data
    pinned = (folder / "CIFAR-10_human.pt.sha256").read_text().split()[0]
    assert pinned == hashlib.sha256(data).hexdigest()
    assert "pinned" in r.stderr and "no published checksum" in r.stderr
    assert datasets.get("cifar10n").present(folder)

    asked = len(server.ranges)
    r = cli("download", "cifar10n")
    assert r.code == 0 and len(server.ranges) == asked and "pinned" not in r.stderr

    (folder / "CIFAR-10_human.pt").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    r = cli("download", "cifar10n")
    assert r.code == 1 and r.stderr.count("\n") == 1 and "changed" in r.stderr
    feats = cifar_features(data_dir() / "f.safetensors", c10["clean_label"])
    r = cli("corrupt", str(feats), "--human", "aggre")
    assert r.code == 1 and "changed" in r.stderr


def test_interrupted_download_resumes_and_a_short_one_leaves_nothing(server, tmp_path, c10):
    data = saved(c10)
    spec = served(datasets.get("cifar10n"), server, data)
    server.cut_first[f"/cifar10n/{spec.sources[0].filename}"] = 5000
    folder, _ = dl.fetch_dataset(spec, tmp_path / "a", progress=False)
    assert (folder / "CIFAR-10_human.pt").read_bytes() == data
    assert server.ranges[-1] == "bytes=5000-"

    # A server sending another length than the file's: refused, nothing left half-written.
    wrong = served(datasets.get("cifar10n"), server, data, size=len(data) + 7)
    with pytest.raises(dl.DownloadError, match=f"expected {len(data) + 7}"):
        dl.fetch_dataset(wrong, tmp_path / "b", progress=False)
    left = sorted(p.name for p in (tmp_path / "b" / "cifar-10n").iterdir())
    assert left == [".nlp-incomplete"]
    assert not wrong.present(tmp_path / "b" / "cifar-10n")


def test_catalog_entries_say_what_they_are():
    for name, n_sets in (("cifar10n", 5), ("cifar100n", 1)):
        spec = datasets.get(name)
        assert spec.labels_for == name.removesuffix("n")
        assert spec.sources[0].pin and spec.sources[0].checksum is None
        assert "no checksum" in spec.note and "licence" in spec.note
        assert len(cifar.HUMAN[spec.labels_for].sets) == n_sets
    with pytest.raises(NlpError, match="embed cifar10"):
        datasets.get("cifar10n").load(Path("anywhere"))


# --- safe loading ----------------------------------------------------------------------------


class _Opens:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_label_file_is_read_without_running_its_code(tmp_path, c10):
    h = cifar.HUMAN["cifar10"]
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(saved({"clean_label": _Opens(marker)}))
    with pytest.raises(NlpError, match="not a readable cifar10n label file"):
        cifar.load_human_labels(evil, h)
    assert not marker.exists()


@pytest.mark.parametrize("zip_format,numpy1", [(True, False), (False, False), (False, True)])
def test_label_file_layouts_load(tmp_path, c10, zip_format, numpy1):
    data = saved(c10, zip_format)
    if numpy1:  # as numpy 1.x pickles an array (the published files predate numpy 2)
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        assert b"numpy.core.multiarray" in data
    path = tmp_path / "h.pt"
    path.write_bytes(data)
    got = cifar.load_human_labels(path, cifar.HUMAN["cifar10"])
    for key in ("clean_label", *CIFAR10N_KEYS):
        assert got[key].dtype == torch.int64 and got[key].tolist() == c10[key].tolist()


def test_label_file_of_the_wrong_shape_is_one_line(tmp_path, c10):
    h = cifar.HUMAN["cifar10"]
    cases = {
        "no 'worse_label'": {k: v for k, v in c10.items() if k != "worse_label"},
        "labels 49999": {k: v[:-1] for k, v in c10.items()},
        "not a list of labels": {**c10, "aggre_label": c10["aggre_label"] + 10},
        "holds a list": [1, 2],
    }
    for i, (message, obj) in enumerate(cases.items()):
        path = tmp_path / f"{i}.pt"
        path.write_bytes(saved(obj))
        with pytest.raises(NlpError, match=message):
            cifar.load_human_labels(path, h)


# --- nlp corrupt --human ---------------------------------------------------------------------


def test_corrupt_human_takes_the_file_labels_and_measures_the_transition(cli, placed, c10):
    feats = cifar_features(data_dir() / "feats.safetensors", c10["clean_label"])
    r = cli("--threads", "1", "corrupt", str(feats), "--human", "aggre")
    assert r.code == 0, r.stderr
    ls = artifacts.load(Path(r.stdout.strip()), "labelset")
    assert ls.tensors["labels"].tolist() == c10["aggre_label"].tolist()
    assert ls.tensors["true_labels"].tolist() == c10["clean_label"].tolist()
    assert ls.tensors["index"].tolist() == list(range(N))

    want = counted_transition(c10["clean_label"].tolist(), c10["aggre_label"].tolist(), 10)
    meta = ls.meta["noise"]
    assert np.allclose(meta["transition"], want, rtol=0, atol=1e-12)
    assert np.allclose(ls.tensors["transition"].numpy(), want, rtol=0, atol=1e-12)
    wrong = sum(a != b for a, b in zip(c10["clean_label"], c10["aggre_label"], strict=True))
    assert meta["n_noisy"] == wrong and meta["actual_rate"] == pytest.approx(wrong / N, abs=0)
    assert 0.08 < meta["actual_rate"] < 0.10
    assert meta["type"] == "human" and meta["human"]["set"] == "aggre"
    assert meta["human"]["key"] == "aggre_label"
    assert meta["human"]["sha256"] == hashlib.sha256(placed.read_bytes()).hexdigest()

    again = cli("corrupt", str(feats), "--human", "aggre", "--json")
    assert again.code == 0 and json.loads(again.stdout)["n_noisy"] == wrong
    worst = cli("corrupt", str(feats), "--human", "worst")
    assert worst.code == 0 and worst.stdout != r.stdout
    assert artifacts.load(Path(worst.stdout.strip())).tensors["labels"].tolist() == (
        c10["worse_label"].tolist()
    )


def test_corrupt_human_is_cached_and_keyed_by_set_seed_shots_and_file(cli, placed, c10, tmp_path):
    from nlp_cli.stages.corrupt import CorruptOptions, make_labelset

    feats = cifar_features(data_dir() / "feats.safetensors", c10["clean_label"])
    first = make_labelset(feats, CorruptOptions(kind="human", human="random1"))
    again = make_labelset(feats, CorruptOptions(kind="human", human="random1"))
    assert again.cache_hit and again.path == first.path and not first.cache_hit
    other = make_labelset(feats, CorruptOptions(kind="human", human="random2"))
    assert other.path != first.path

    shots = make_labelset(feats, CorruptOptions(kind="human", human="random1", shots=16, seed=3))
    ls = artifacts.load(shots.path)
    index = ls.tensors["index"]
    assert torch.bincount(ls.tensors["true_labels"], minlength=10).tolist() == [16] * 10
    assert ls.tensors["labels"].tolist() == c10["random_label1"][index.numpy()].tolist()
    assert ls.tensors["true_labels"].tolist() == c10["clean_label"][index.numpy()].tolist()
    want = counted_transition(
        c10["clean_label"][index.numpy()].tolist(), c10["random_label1"][index.numpy()].tolist(), 10
    )
    assert np.allclose(ls.meta["noise"]["transition"], want, rtol=0, atol=1e-12)

    # Another file (same name, other labels) is another label set, not a cache hit.
    moved = tmp_path / "elsewhere.pt"
    moved.write_bytes(saved(human_labels(10, CIFAR10N_KEYS, seed=1)))
    elsewhere = make_labelset(
        feats, CorruptOptions(kind="human", human="random1", human_file=moved)
    )
    assert not elsewhere.cache_hit and elsewhere.path != first.path


def test_corrupt_human_refuses_features_that_do_not_fit(cli, placed, c10):
    clean = c10["clean_label"]
    out = data_dir() / "labelsets"
    cases = [
        (cifar_features(data_dir() / "a.safetensors", clean, dataset="synthetic"), "aggre",
         2, "needs cifar10 or cifar100 training features"),
        (cifar_features(data_dir() / "b.safetensors", clean[:-2]), "aggre",
         2, "hold 49998 training images, cifar10n labels 50000"),
        (cifar_features(data_dir() / "c.safetensors", np.roll(clean, 1)), "aggre",
         2, "not cifar10's training set in the pickles' order"),
        (cifar_features(data_dir() / "d.safetensors", clean), "noisy",
         2, "cifar10n has no label set 'noisy'"),
    ]  # fmt: skip
    for feats, label_set, code, message in cases:
        r = cli("corrupt", str(feats), "--human", label_set)
        assert r.code == code and message in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and r.stdout == ""
    assert not out.exists() or not any(out.iterdir())

    feats = cases[-1][0]
    for args, message in [
        (["--human", "aggre", "--sym", "0.2"], "choose one noise type"),
        (["--sym", "0.2", "--human-labels", str(placed)], "--human-labels belongs to --human"),
    ]:
        r = cli("corrupt", str(feats), *args)
        assert r.code == 2 and message in r.stderr, r.stderr
    placed.unlink()
    r = cli("corrupt", str(feats), "--human", "aggre")
    assert r.code == 1 and "run `nlp download cifar10n`" in r.stderr


# --- CIFAR-100 and CIFAR-100N ----------------------------------------------------------------


def test_cifar100_pickles_become_pngs_and_its_human_labels_fit(server, tmp_path, monkeypatch):
    names = [f"name_{i}" if i % 2 else f"c{i}" for i in range(100)]

    def batch(n: int, offset: int) -> bytes:
        rng = np.random.default_rng(offset)
        return pickle.dumps(
            {
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"fine_labels": [(offset + i) % 100 for i in range(n)],
                b"coarse_labels": [0] * n,
                b"filenames": [f"img_{offset + i}.png".encode() for i in range(n)],
            }
        )

    members = {
        "cifar-100-python/train": batch(6, 0),
        "cifar-100-python/test": batch(3, 500),
        "cifar-100-python/meta": pickle.dumps({b"fine_label_names": [n.encode() for n in names]}),
    }
    spec = local(datasets.get("cifar100"), server, {"cifar-100-python.tar.gz": targz(members)})
    folder, _ = dl.fetch_dataset(spec, tmp_path / "root", progress=False)
    ds = spec.load(folder)
    assert [len(ds.paths[s]) for s in ("train", "val", "test")] == [6, 0, 3]
    assert ds.paths["train"][1] == "train/name_1/img_1.png" and ds.classnames[1] == "name 1"
    assert ds.labels["train"] == [0, 1, 2, 3, 4, 5]
    first = pickle.loads(members["cifar-100-python/train"])[b"data"][0]
    with Image.open(ds.root / ds.paths["train"][0]) as im:
        assert np.array_equal(np.asarray(im).transpose(2, 0, 1).reshape(-1), first)

    c100 = human_labels(100, ("noisy_label",))
    c100["clean_coarse_label"] = c100["clean_label"] // 5
    c100["noisy_coarse_label"] = c100["noisy_label"] // 5
    data = saved(c100)
    hspec = served(datasets.get("cifar100n"), server, data)
    monkeypatch.setitem(datasets.CATALOG, "cifar100n", hspec)
    hfolder, notes = dl.fetch_dataset(hspec, data_dir(), progress=False)
    assert hfolder == data_dir() / "cifar-100n" and any("pinned" in n for n in notes)

    from nlp_cli.stages.corrupt import CorruptOptions, make_labelset

    classnames = [n.replace("_", " ") for n in names]
    feats = cifar_features(tmp_path / "f.safetensors", c100["clean_label"], "cifar100", classnames)
    ls = artifacts.load(make_labelset(feats, CorruptOptions(kind="human", human="noisy")).path)
    assert ls.tensors["labels"].tolist() == c100["noisy_label"].tolist()
    want = counted_transition(c100["clean_label"].tolist(), c100["noisy_label"].tolist(), 100)
    assert np.allclose(ls.meta["noise"]["transition"], want, rtol=0, atol=1e-12)
    wrong = int((c100["clean_label"] != c100["noisy_label"]).sum())
    assert ls.meta["noise"]["actual_rate"] == wrong / N
