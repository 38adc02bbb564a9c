"""The easy generated world: `shapes-easy` and the built-in `tiny-shapes-easy` CLIP (quick checks;
an untrained context already scores high there, so no finding is read from it)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import load_script, tree_digests
from PIL import Image

from nlp_cli import artifacts, clip_model, datasets
from nlp_cli.datasets import shapes

SMALL = {"train": 2, "val": 1, "test": 1}


@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> Path:
    return shapes.generate(tmp_path_factory.mktemp("world"), seed=0, counts=SMALL)


def test_same_seed_same_bytes_other_seed_other_images(small_world, tmp_path):
    again = shapes.generate(tmp_path / "a", seed=0, counts=SMALL)
    assert tree_digests(again) == tree_digests(small_world)
    other = tree_digests(shapes.generate(tmp_path / "b", seed=1, counts=SMALL))
    same = tree_digests(small_world)
    pngs = [k for k in same if k.endswith(".png")]
    assert sum(other[k] != same[k] for k in pngs) == len(pngs)


def test_two_processes_drawing_one_world_at_once_both_get_it_whole(
    small_world, tmp_path, monkeypatch
):
    """Ranks of a torchrun sweep may draw a world into one NLP_HOME at once: each draws into its
    own folder, so one never removes the other's half-drawn images (they shared one before), and
    the second to finish keeps the first's folder. A folder left by a dead process is removed."""
    dead = tmp_path / f".{shapes.FOLDER}.0.999999999.tmp"
    (dead / "images").mkdir(parents=True)
    calls = []

    def draw(rng, colour, shape, size):
        if not calls:  # another process draws the whole world while this one is at its first image
            calls.append(1)
            monkeypatch.setattr(shapes.os, "getpid", lambda: 4_000_000)
            shapes.generate(tmp_path, seed=0, counts=SMALL)
            monkeypatch.undo()
        return shapes.draw_item(rng, colour, shape, size)

    out = shapes.write_world(
        tmp_path, shapes.FOLDER, shapes.SPLIT_FILE, shapes.VERSION, draw, 0, SMALL,
        shapes.CLASSES, shapes.SIZE,
    )  # fmt: skip
    assert calls and tree_digests(out) == tree_digests(small_world)
    assert sorted(p.name for p in tmp_path.iterdir()) == [shapes.FOLDER]


def test_worlds_drawn_by_several_processes_are_the_same_bytes(small_world, tmp_path):
    """Each image is drawn from its own seed, so a world drawn by two worker processes is the
    one drawn in-process, byte for byte; a world as big as the shipped ones is drawn by one
    process per core (up to 8), a small one, or a render that cannot be pickled, in-process."""
    from nlp_cli.datasets import duo

    out = shapes.write_world(
        tmp_path, shapes.FOLDER, shapes.SPLIT_FILE, shapes.VERSION, shapes.draw_item, 0, SMALL,
        shapes.CLASSES, shapes.SIZE, workers=2,
    )  # fmt: skip
    assert tree_digests(out) == tree_digests(small_world)
    cores = len(os.sched_getaffinity(0))
    full = len(duo.CLASSES) * sum(duo.COUNTS.values())
    assert shapes._draw_workers(None, full, duo.render) == min(cores, 8)
    assert shapes._draw_workers(None, shapes.POOL_ABOVE - 1, duo.render) == 1
    assert shapes._draw_workers(4, full, lambda *a: None) == 1


def test_layout_and_split_file(small_world):
    assert (small_world / shapes.SPLIT_FILE).is_file()
    ds = datasets.get("shapes-easy").load(small_world)
    assert ds.name == "shapes-easy" and ds.root == (small_world / "images").absolute()
    assert len(ds.classnames) >= 20 and len(set(ds.classnames)) == len(ds.classnames)
    assert ds.classnames == list(shapes.CLASSES)
    for name in ds.classnames:
        colour, shape = name.split(" ")
        assert colour in shapes.COLOURS and shape in shapes.SHAPES
    for split, n in SMALL.items():
        assert sorted(ds.labels[split]) == sorted(list(range(len(ds.classnames))) * n)
        for path, y in zip(ds.paths[split], ds.labels[split], strict=True):
            assert path.startswith(shapes.folder_name(ds.classnames[y]) + "/")
            with Image.open(ds.root / path) as im:
                assert im.size == (64, 64) and im.mode == "RGB"
    listed = [p for s in ds.splits() for p in ds.paths[s]]
    assert len(set(listed)) == len(listed)


def test_images_vary_in_background_and_shape_colour(small_world):
    ds = datasets.get("shapes-easy").load(small_world)
    corners = set()
    for path in ds.paths["train"]:
        with Image.open(ds.root / path) as im:
            corners.add(im.getpixel((0, 0)))
    assert len(corners) > 0.9 * len(ds.paths["train"])


def test_download_shapes_offline_through_the_cli(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(shapes, "COUNTS", SMALL)
    r = cli("download", "shapes-easy", "--root", tmp_path)
    assert r.code == 0, r.stderr
    folder = Path(r.stdout.strip())
    assert folder == tmp_path / "shapes-easy" and datasets.get("shapes-easy").present(folder)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*.png")}
    assert len(before) == 25 * sum(SMALL.values())
    again = cli("download", "shapes-easy", "--root", tmp_path)
    assert again.code == 0 and again.stdout == r.stdout
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.png")} == before
    listing = cli("download", "--list", "--json", "--root", tmp_path)
    assert '"present": true' in listing.stdout.split('"shapes-easy"')[1].split("}")[0]


def test_shipped_model_loads_by_name_and_knows_the_world():
    loaded = clip_model.load("tiny-shapes-easy")
    path = clip_model.BUILTIN["tiny-shapes-easy"]
    assert path.stat().st_size < 10e6
    state = torch.load(path, map_location="cpu")
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert loaded.identity["name"] == "tiny-shapes-easy"
    assert loaded.identity["input_resolution"] == 64
    classes = list(shapes.CLASSES)
    images, labels = [], []
    for y, name in enumerate(classes):
        colour, shape = name.split(" ")
        for i in range(4):
            rng = random.Random(shapes.item_seed("test-zero-shot", y, i))
            images.append(loaded.preprocess(shapes.draw_item(rng, colour, shape)))
            labels.append(y)
    with torch.no_grad():
        feats = F.normalize(loaded.model.encode_image(torch.stack(images)).float(), dim=-1)
    protos = clip_model.hand_prompt_features(loaded.model, classes)
    acc = (feats @ protos.T).argmax(1).eq(torch.tensor(labels)).float().mean().item()
    assert acc > 5 / len(classes), f"zero-shot {acc:.2f} is not well above chance"


def test_embed_reads_shapes_with_the_builtin_model(cli, small_world, tmp_path):
    r = cli("embed", str(small_world), "--model", "tiny-shapes-easy", "--out", tmp_path / "f.st")
    assert r.code == 0, r.stderr
    art = artifacts.load(r.stdout.strip(), "features")
    assert art.classnames == list(shapes.CLASSES)
    assert art.tensors["test.labels"].tolist() == sorted(range(25))
    assert art.meta["model"]["name"] == "tiny-shapes-easy"


def test_pretraining_script_writes_a_loadable_checkpoint(tmp_path):
    pretrain = load_script("pretrain_tiny_clip")
    out = tmp_path / "m.pt"
    args = ["--seed", "3", "--out", str(out), "--steps", "2", "--per-combo", "1", "--grid", "3"]
    assert pretrain.main([*args, "--check-every", "2", "--check-per-class", "1"]) == 0
    loaded = clip_model.load(str(out))
    assert loaded.model.visual.input_resolution == 64
    assert type(loaded.model.visual).__name__ == "ModifiedResNet"
    fresh = pretrain.build(3)
    state = torch.load(out, map_location="cpu")
    moved = [k for k, v in fresh.state_dict().items() if not torch.equal(v.half(), state[k])]
    assert "token_embedding.weight" in moved and any(k.startswith("visual.") for k in moved)


def test_compact_text_encoder_equals_clip_encode_text():
    pretrain = load_script("pretrain_tiny_clip")
    model = pretrain.build(0).eval()
    tokens = clip_model.tokenize(["a red star", "a drawing of a blue cross on a plain background"])
    used = torch.unique(tokens)
    index = torch.zeros(model.vocab_size, dtype=torch.long)
    index[used] = torch.arange(len(used))
    table = model.token_embedding.weight[used]
    with torch.no_grad():
        got = pretrain.encode_text_short(model, tokens, table, index)
        want = model.encode_text(tokens)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
