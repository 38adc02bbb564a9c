"""--augment online: fresh CoOp crops through the frozen image encoder every epoch."""

import pytest
import torch
from conftest import make_image_folder

from nlp_cli import artifacts, clip_model
from nlp_cli import train as lib
from nlp_cli.embed import OnlineViews


@pytest.fixture
def image_features(cli, tiny_clip, tmp_path):
    make_image_folder(tmp_path / "imgs")
    out = tmp_path / "feats.safetensors"
    r = cli("embed", tmp_path / "imgs", "--model", tiny_clip, "--out", out)
    assert r.code == 0, r.stderr
    return out


def test_online_views_are_fresh_each_epoch_and_reproducible(image_features, tiny_clip):
    feats = artifacts.load(image_features, "features")
    model = clip_model.load(str(tiny_clip)).model
    online = OnlineViews(feats.meta, model, torch.arange(18))
    a0 = online.epoch(1, 0, torch.device("cpu"))
    again = online.epoch(1, 0, torch.device("cpu"))
    a1 = online.epoch(1, 1, torch.device("cpu"))
    assert a0.shape == (18, feats.tensors["train.features"].shape[1])
    assert torch.equal(a0, again) and not torch.allclose(a0, a1)
    centre = feats.tensors["train.features"].float()
    centre = centre / centre.norm(dim=-1, keepdim=True)
    assert not torch.allclose(a0, centre, atol=1e-3)


def test_train_with_online_augmentation(cli, image_features, tmp_path):
    out = tmp_path / "p.safetensors"
    args = ("--epochs", "2", "--n-ctx", "4", "--batch-size", "4", "--augment", "online")
    r = cli("train", image_features, *args, "--out", out)
    assert r.code == 0, r.stderr
    meta = artifacts.read_meta(out)
    assert meta["options"]["augment"] == "online" and len(meta["history"]) == 2
    data = lib.load_data(image_features)
    cfg = lib.make_config(epochs=2, n_ctx=4, batch_size=4, augment="online")
    again = lib.train_prompt(data, cfg)
    assert torch.equal(again.ctx, artifacts.load(out, "prompt").tensors["ctx"])


def test_online_augmentation_needs_the_images(cli, features):
    r = cli("train", features, "--epochs", "1", "--augment", "online")
    assert r.code == 1 and "needs the training images" in r.stderr
    assert r.stderr.count("\n") == 1
