"""JoAPR: targets, mixup and penalty match their written formulas; a run beats CE under noise."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import make_features, make_sym_labelset

from nlp_cli import artifacts, joapr
from nlp_cli import train as lib
from nlp_cli.errors import UsageError


def test_refurbish_matches_formula():
    y = torch.tensor([0, 2, 1])
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]], dtype=torch.float64)
    w = torch.tensor([0.9, 0.6, 0.2], dtype=torch.float64)
    got = joapr.refurbish(y, p, w, temperature=1.0)
    for i in range(3):
        for c in range(3):
            want = w[i] * (1.0 if c == y[i] else 0.0) + (1 - w[i]) * p[i, c]
            assert got[i, c].item() == pytest.approx(want.item(), abs=1e-12)
    sharp = joapr.refurbish(y, p, w, temperature=0.5)
    for i in range(3):
        assert torch.allclose(sharp[i], got[i] ** 2 / (got[i] ** 2).sum())
    assert torch.allclose(sharp.sum(dim=1), torch.ones(3, dtype=torch.float64))


def test_prior_penalty_is_kl_from_uniform():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    mean = torch.softmax(z, dim=1).mean(dim=0)
    want = sum((1 / 3) * math.log((1 / 3) / float(m)) for m in mean)
    assert joapr.prior_penalty(z).item() == pytest.approx(want, rel=1e-6)
    assert joapr.prior_penalty(torch.zeros(4, 3)).item() == pytest.approx(0.0, abs=1e-7)


def test_mixup_matches_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    t = torch.softmax(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=1)
    perm = torch.tensor([2, 0, 3, 1])
    lam = 0.7
    xm, tm = joapr.mixup(x, t, lam, perm)
    for i in range(4):
        j = int(perm[i])
        v = lam * x[i] + (1 - lam) * x[j]
        assert torch.allclose(xm[i], v / v.norm())
        assert torch.allclose(tm[i], lam * t[i] + (1 - lam) * t[j])
    z = torch.randn(4, 3, generator=g, dtype=torch.float64)
    want = torch.stack([-(tm[i] * torch.log_softmax(z[i], 0)).sum() for i in range(4)])
    assert torch.allclose(joapr.soft_ce(z, tm).double(), want, atol=1e-6)


def test_lambdas_seeded_and_at_least_half():
    a = joapr.mix_lambdas(4.0, 50, seed=1, epoch=3)
    assert a == joapr.mix_lambdas(4.0, 50, seed=1, epoch=3)
    assert a != joapr.mix_lambdas(4.0, 50, seed=1, epoch=4)
    assert all(0.5 <= v <= 1.0 for v in a)


def test_partition_finds_high_loss_samples():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(5).repeat(20)
    logits = torch.randn(100, 5, generator=g)
    logits[torch.arange(100), y] += 6.0
    flipped = torch.arange(100) % 4 == 0
    logits[flipped, y[flipped]] -= 12.0
    w = joapr.partition(logits, y)
    assert ((w > 0.5) == ~flipped).float().mean() > 0.95


@pytest.fixture
def noisy(tmp_path, tiny_clip):
    feats = make_features(
        tmp_path / "f.safetensors", tiny_clip, n_classes=10, n_train=24, signal=20.0
    )
    return make_sym_labelset(feats, tmp_path / "sym60.safetensors", 0.6)


RUN = {"epochs": 15, "n_ctx": 4, "batch_size": 16, "lr": 0.002, "ctx_init": "a photo of a"}


def test_joapr_beats_ce_on_sym60(noisy):
    ce = lib.train_prompt(noisy, lib.make_config(**RUN))
    jo = lib.train_prompt(noisy, lib.make_config(method="joapr", **RUN))
    assert torch.isfinite(jo.ctx).all()
    assert jo.history[0] == ce.history[0]
    last = lambda res: sum(h["test_acc"] for h in res.history[-3:]) / 3  # noqa: E731
    assert last(jo) > last(ce) + 0.1
    assert jo.history[0]["clean_frac"] is None
    assert all(0.0 < h["clean_frac"] < 1.0 for h in jo.history[1:])
    assert all(h["loss_clean"] is not None and h["loss_noisy"] is not None for h in jo.history)


def test_joapr_deterministic_and_batched(noisy):
    cfg = lib.make_config(method="joapr", **(RUN | {"epochs": 3}))
    a = lib.train_prompt(noisy, cfg)
    b = lib.train_prompt(noisy, cfg)
    assert torch.equal(a.ctx, b.ctx) and a.history == b.history
    c = lib.train_prompt(noisy, lib.make_config(method="joapr", seed=2, **(RUN | {"epochs": 3})))
    assert not torch.equal(a.ctx, c.ctx)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ce_cfg = lib.make_config(seed=3, **(RUN | {"epochs": 3}))
        many = lib.train_many([noisy, noisy], [cfg, ce_cfg])
        alone = lib.train_prompt(noisy, cfg)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(many[0].ctx, alone.ctx)
    assert many[0].history == alone.history
    assert many[1].history[-1]["clean_frac"] is None


def test_joapr_options_refused():
    with pytest.raises(UsageError, match="cross-entropy"):
        lib.make_config(method="joapr", loss="gce")
    with pytest.raises(UsageError, match="joapr-warmup"):
        lib.make_config(method="joapr", epochs=2, joapr_warmup=2)
    with pytest.raises(UsageError, match="joapr-prior"):
        lib.make_config(method="joapr", joapr_prior=-1.0)
    with pytest.raises(UsageError, match="unknown method"):
        lib.make_config(method="joaprr")
    assert "joapr_alpha" not in lib.make_config().options()
    assert lib.make_config(method="joapr").options()["joapr_alpha"] == 4.0


def test_cli_method_joapr(cli, nlp_home, noisy):
    args = (
        "train",
        str(noisy),
        "--method",
        "joapr",
        "--epochs",
        "2",
        "--n-ctx",
        "4",
        "--joapr-alpha",
        "2",
    )
    res = cli(*args, "--json")
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    art = artifacts.load(summary["path"], "prompt")
    assert "joapr" in art.path.name
    assert art.meta["method"] == "joapr"
    assert art.meta["options"]["joapr_alpha"] == 2.0
    assert art.meta["history"][1]["clean_frac"] is not None
    again = cli(*args)
    assert again.code == 0 and "cache hit" in again.stderr
    plain = cli("train", str(noisy), "--epochs", "2", "--n-ctx", "4")
    assert plain.code == 0 and plain.stdout.strip() != summary["path"]
    bad = cli("train", str(noisy), "--method", "joapr", "--loss", "gce")
    assert bad.code == 2 and bad.stderr.startswith("error:")
