"""`nlp embed`: features as CLIP computes them, CoOp's augmented views, odd images, resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA
from PIL import Image

from nlp_cli import artifacts, clip_model, datasets
from nlp_cli import embed as embed_mod
from nlp_cli.embed import EmbedOptions, embed, rrc_params
from nlp_cli.errors import NlpError

MINI = SHARED_DATA / "mini"
REPO = Path(__file__).resolve().parents[1]


def write_images(root: Path, classes: list[str], n: int = 5) -> None:
    """Textured images of varied sizes (a uniform image would make every crop look the same)."""
    g = torch.Generator().manual_seed(len(str(root)))
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            w, h = 20 + 7 * i, 31 + 3 * k
            pixels = torch.randint(0, 256, (h * w * 3,), generator=g, dtype=torch.uint8)
            Image.frombytes("RGB", (w, h), bytes(pixels.tolist())).save(root / c / f"{i}.png")


@pytest.fixture
def user_data(tmp_path) -> Path:
    write_images(tmp_path / "data" / "train", ["cat", "dog"], n=5)
    write_images(tmp_path / "data" / "test", ["cat", "dog"], n=2)
    return tmp_path / "data"


@pytest.mark.skipif(not MINI.is_dir(), reason="shared data absent")
@pytest.mark.parametrize(
    "name,src,counts",
    [("caltech101", "caltech-101", (30, 10, 20)), ("eurosat", "eurosat", (60, 20, 40))],
)
def test_done_when_mini(cli, tiny_clip, tmp_path, name, src, counts):
    root = tmp_path / "root"
    assert cli("download", name, "--from", MINI / src, "--root", root).code == 0
    r = cli("embed", name, "--model", tiny_clip, "--root", root)
    assert r.code == 0, r.stderr
    art = artifacts.load(r.stdout.strip(), "features")
    got = tuple(len(art.tensors[f"{s}.labels"]) for s in ("train", "val", "test"))
    assert got == counts
    assert art.tensors["train.features"].dtype == torch.float16
    assert art.tensors["train.features"].shape[1] == 32
    split = datasets.load(name, root)
    assert art.classnames == split.classnames
    assert art.meta["dataset"] == name and art.meta["upstream"] == {}
    assert art.meta["model"] == clip_model.load(str(tiny_clip)).identity
    assert art.meta["paths"]["train"] == split.paths["train"]
    assert art.tensors["train.labels"].tolist() == split.labels["train"]
    assert Path(art.meta["root"]) == split.root
    again = cli("embed", name, "--model", tiny_clip, "--root", root)
    assert again.stdout == r.stdout and "cache hit" in again.stderr


def test_features_equal_clip_encode_image(user_data, tiny_clip):
    ds = datasets.load(str(user_data))
    res = embed(ds, str(tiny_clip), EmbedOptions(batch_size=3))
    art = artifacts.load(res.path, "features")
    loaded = clip_model.load(str(tiny_clip))
    ref = torch.stack(
        [loaded.preprocess(Image.open(ds.root / p).convert("RGB")) for p in ds.paths["test"]]
    )
    with torch.no_grad():
        want = loaded.model.encode_image(ref)
    torch.testing.assert_close(art.tensors["test.features"].float(), want, atol=2e-3, rtol=2e-3)
    assert art.meta["classnames"] == ["cat", "dog"] and "train.views" not in art.tensors


@pytest.mark.parametrize("size", [(32, 32), (500, 40), (40, 500), (3, 3), (224, 180)])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_random_resized_crop_matches_torchvision(size, seed):
    from torchvision.transforms import RandomResizedCrop

    img = Image.new("RGB", size)
    for _ in range(3):
        torch.manual_seed(seed)
        want = RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])
        got = rrc_params(size[0], size[1], torch.Generator().manual_seed(seed))
        assert got == want
        seed += 100


@pytest.mark.slow
def test_views_are_seeded_and_independent_of_batching(user_data, tiny_clip, tmp_path):
    ds = datasets.load(str(user_data))
    a = embed(ds, str(tiny_clip), EmbedOptions(views=2, batch_size=1), tmp_path / "a.st")
    b = embed(ds, str(tiny_clip), EmbedOptions(views=2, batch_size=4, workers=2), tmp_path / "b.st")
    c = embed(ds, str(tiny_clip), EmbedOptions(views=2, seed=5), tmp_path / "c.st")
    va, vb, vc = (artifacts.load(r.path).tensors for r in (a, b, c))
    assert va["train.views"].shape == (2, 10, 32)
    torch.testing.assert_close(va["train.views"], vb["train.views"], atol=1e-3, rtol=1e-3)
    assert not torch.allclose(va["train.views"].float(), vc["train.views"].float(), atol=1e-2)
    assert not torch.allclose(va["train.views"][0].float(), va["train.features"].float(), atol=1e-2)
    assert "test.views" not in va


def odd_images(root: Path) -> None:
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir(parents=True)
    Image.new("L", (33, 17), 90).save(root / "a" / "gray.jpg")
    Image.new("CMYK", (40, 40), (10, 200, 30, 5)).save(root / "a" / "cmyk.jpg")
    Image.new("RGBA", (8, 60), (1, 2, 3, 100)).save(root / "a" / "rgba.png")
    Image.new("P", (50, 51), 3).save(root / "a" / "palette.png")
    Image.new("RGB", (1, 37), (9, 9, 9)).save(root / "b" / "thin.png")
    Image.new("I;16", (30, 30), 1000).save(root / "b" / "deep.png")
    Image.new("RGB", (64, 48), (200, 9, 9)).save(root / "b" / "ok.bmp")
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")


def test_odd_images_and_a_broken_one(cli, tiny_clip, tmp_path):
    odd_images(tmp_path / "odd" / "train")
    write_images(tmp_path / "odd" / "test", ["a", "b"], n=1)
    r = cli("embed", tmp_path / "odd", "--model", tiny_clip)
    assert r.code == 1 and "broken.jpg" in r.stderr and "--skip-bad" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("embed", tmp_path / "odd", "--model", tiny_clip, "--skip-bad", "--views", "1")
    assert r.code == 0, r.stderr
    assert "skipped 1" in r.stderr
    art = artifacts.load(r.stdout.strip())
    assert art.meta["skipped"] == {"train": ["train/b/broken.jpg"]}
    assert len(art.meta["paths"]["train"]) == 7 == len(art.tensors["train.labels"])
    assert art.tensors["train.views"].shape[:2] == (1, 7)
    assert torch.isfinite(art.tensors["train.features"].float()).all()


def test_usage_errors(cli, tiny_clip, user_data, tmp_path):
    r = cli("embed", user_data, "--model", tiny_clip, "--views", "-1")
    assert r.code == 2
    r = cli("embed", "dtd", "--model", tiny_clip, "--root", tmp_path)
    assert r.code == 1 and "nlp download dtd" in r.stderr


def test_interrupted_run_resumes_per_shard(user_data, tiny_clip, tmp_path, monkeypatch):
    ds = datasets.load(str(user_data))
    opts = EmbedOptions(batch_size=2, shard_size=4)
    ref = artifacts.load(embed(ds, str(tiny_clip), opts, tmp_path / "ref.st").path).tensors

    written = []
    real_save = artifacts.atomic_path

    def failing_atomic_path(path):
        if str(path).endswith(".safetensors") and ".work" in str(path) and len(written) == 2:
            raise KeyboardInterrupt
        written.append(path)
        return real_save(path)

    monkeypatch.setattr(embed_mod.artifacts, "atomic_path", failing_atomic_path)
    out = tmp_path / "resumed.st"
    with pytest.raises(KeyboardInterrupt):
        embed(ds, str(tiny_clip), opts, out)
    monkeypatch.setattr(embed_mod.artifacts, "atomic_path", real_save)
    assert not out.exists()
    work = next(tmp_path.glob(".resumed.st.*.work"))
    assert len(list(work.glob("*.safetensors"))) == 2

    progress = []
    res = embed(ds, str(tiny_clip), opts, out, on_progress=lambda d, t: progress.append((d, t)))
    assert progress[0] == (8, 14)  # two shards of 4 were already done
    got = artifacts.load(res.path).tensors
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k])
    assert not work.exists()


def test_cuda_request_without_cuda_fails_cleanly(user_data, tiny_clip):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(NlpError, match="CUDA is not available"):
        embed(datasets.load(str(user_data)), str(tiny_clip), EmbedOptions(device="cuda"))


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_match_one_process(user_data, tiny_clip, tmp_path):
    ds = datasets.load(str(user_data))
    one = embed(ds, str(tiny_clip), EmbedOptions(views=1, shard_size=3), tmp_path / "one.st")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "nlp_cli", "embed", str(user_data), "--model", str(tiny_clip), "--views", "1",
        "--shard-size", "3", "--out", str(tmp_path / "two.st"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines() == [str(tmp_path / "two.st")]
    a = artifacts.load(one.path).tensors
    b = artifacts.load(tmp_path / "two.st").tensors
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-3, rtol=2e-3)
