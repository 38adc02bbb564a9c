"""JoAPR: held to a transcription of yunncheng/JoAPR trainers/joapr.py (and sklearn's GMM).

Each test names what of the reference it writes out: warm-up penalty (`forward_backward_x`,
`NegEntropy`), the division (`eval_train`: CE + entropy, min-max, the last 5 epochs, the GMM,
the intersection and adaptive rules, the refurbishment weight), targets and mixup
(`forward_backward`), two loaders (`run_epoch`), the README's per-dataset table.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_features, make_sym_labelset

from nlp_cli import artifacts, joapr
from nlp_cli import train as lib
from nlp_cli.errors import UsageError
from nlp_cli.methods import joapr as method


def test_warmup_penalty_is_ce_plus_alpha1_negative_entropy():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 2])
    per = joapr.warmup_loss(z, y, 0.5)
    for i in range(3):
        p = torch.softmax(z[i], 0)
        want = -math.log(float(p[y[i]])) + 0.5 * float((p * p.log()).sum())
        assert per[i].item() == pytest.approx(want, rel=1e-6)
    # forward_backward_x: F.cross_entropy(output, y) + α₁ · NegEntropy()(output)
    probs = torch.softmax(z, dim=1)
    ref = F.cross_entropy(z, y) + 0.5 * torch.mean(torch.sum(probs.log() * probs, dim=1))
    assert per.mean().item() == pytest.approx(ref.item(), rel=1e-6)


def test_division_losses_are_scaled_ce_plus_entropy():
    z = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.2], [1.0, 2.0, 3.0]])
    y = torch.tensor([0, 0, 2, 1])
    probs = torch.softmax(z, dim=1)
    raw = F.cross_entropy(z, y, reduction="none") - torch.sum(probs.log() * probs, dim=1)
    want = (raw - raw.min()) / (raw.max() - raw.min())
    assert torch.allclose(joapr.division_losses(z, y), want, atol=1e-6)
    assert torch.equal(
        joapr.division_losses(torch.zeros(3, 2), torch.zeros(3).long()), torch.zeros(3)
    )


def test_losses_averaged_over_the_last_five_epochs():
    history = [torch.full((4,), float(e)) for e in range(7)]
    assert torch.equal(joapr.average_losses(history, 5), torch.full((4,), 4.0))  # mean of 2…6
    assert torch.equal(joapr.average_losses(history[:2], 5), torch.full((4,), 0.5))
    assert torch.equal(joapr.average_losses(history, 1), history[-1])


def _two_bumps(seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0.15, 0.05, 300), rng.normal(0.7, 0.1, 100)])
    x = (x - x.min()) / (x.max() - x.min())
    return torch.tensor(x, dtype=torch.float32), np.arange(400) >= 300


def test_gmm_is_sklearns_with_the_references_settings():
    from sklearn.mixture import GaussianMixture

    loss, noisy = _two_bumps()
    post, means, variances = joapr.fit_gmm(loss, seed=3)
    ref = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=3)
    x = loss.numpy().reshape(-1, 1)
    ref.fit(x)
    low = ref.means_.reshape(-1).argmin()
    assert np.allclose(post.numpy(), ref.predict_proba(x)[:, low])
    assert np.allclose(means, ref.means_.reshape(-1))
    assert np.allclose(variances, ref.covariances_.reshape(-1))
    assert ((post.numpy() > 0.5) == ~noisy).mean() > 0.97


def _reference_thres(mc, mn, sc, sn):
    """eval_train's lines, in torch, with `std_*` = the GMM's covariances as there."""
    mc, mn, sc, sn = (torch.tensor(v, dtype=torch.float64) for v in (mc, mn, sc, sn))
    a = sn**2 - sc**2
    b = 2 * ((mn * (sc**2)) - (mc * (sn**2)))
    c = ((mc * sn) ** 2) - ((mn * sc) ** 2) + 2 * ((sn * sc) ** 2) * torch.log((2 * sc) / sn + 1e-8)
    e = b**2 - 4 * a * c
    return ((-b + torch.sqrt(e)) / (2 * a + 1e-10)).item()


@pytest.mark.parametrize(
    "mc,vc,mn,vn", [(0.1, 0.01, 0.7, 0.04), (0.2, 0.003, 0.6, 0.05), (0.15, 0.02, 0.5, 0.021)]
)
def test_intersection_threshold_as_the_code_writes_it(mc, vc, mn, vn):
    want = _reference_thres(mc, mn, vc, vn)
    got = joapr.intersection_threshold(mc, vc, mn, vn)
    assert got == pytest.approx(want, rel=1e-9) or (math.isnan(got) and math.isnan(want))


def test_intersection_nan_marks_no_sample():
    # B² − 4AC < 0: torch.sqrt's NaN in the reference, and `loss < NaN` holds for no sample
    assert math.isnan(joapr.intersection_threshold(0.35, 0.18, 0.49, 0.25))
    assert math.isnan(_reference_thres(0.35, 0.49, 0.18, 0.25))


def test_clean_rule_is_the_union_of_intersection_and_adaptive_threshold():
    loss, _ = _two_bumps()
    post, means, variances = joapr.fit_gmm(loss, seed=5)
    lo, hi = int(np.argmin(means)), int(np.argmax(means))
    cut = joapr.intersection_threshold(means[lo], variances[lo], means[hi], variances[hi])
    # eval_train: noise_rate = (N − #(prob > thres)) / N; thres = noise_rate; prob > thres
    tau = (400 - int((post > 0.5).sum())) / 400
    both = joapr.divide(loss, 0.5, "both", seed=5)
    assert both.threshold == pytest.approx(tau)
    assert both.intersection == pytest.approx(cut)
    assert torch.equal(both.clean, (loss < cut) | (post > tau))
    assert torch.equal(joapr.divide(loss, 0.5, "intersection", seed=5).clean, loss < cut)
    assert torch.equal(joapr.divide(loss, 0.5, "adaptive", seed=5).clean, post > tau)
    fixed = joapr.divide(loss, 0.3, "fixed", seed=5)
    assert torch.equal(fixed.clean, post > 0.3) and fixed.threshold == 0.3
    assert joapr.adaptive_threshold(torch.tensor([0.9, 0.2, 0.6, 0.4]), 0.5) == 0.5


def test_refurbishment_weight_and_targets():
    post = torch.tensor([0.9, 0.6, 0.2], dtype=torch.float64)
    p_y = torch.tensor([0.7, 0.5, 0.1], dtype=torch.float64)
    assert torch.equal(joapr.refurbish_weight(post, p_y, first=True), post)
    assert torch.equal(joapr.refurbish_weight(post, p_y, first=False), post * p_y)
    y = torch.tensor([0, 2, 1])
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]], dtype=torch.float64)
    w = post * p_y
    got = joapr.refurbish(y, p, w, temperature=1.0)
    for i in range(3):
        for c in range(3):
            want = w[i] * (1.0 if c == y[i] else 0.0) + (1 - w[i]) * p[i, c]
            assert got[i, c].item() == pytest.approx(want.item(), abs=1e-12)
    # Dassl's sharpen_prob(p, temperature=2): p.pow(2) / p.pow(2).sum(1)
    sharp = joapr.refurbish(y, p, w, temperature=0.5)
    assert torch.allclose(sharp, got.pow(2) / got.pow(2).sum(1, keepdim=True))
    assert torch.allclose(joapr.sharpen(p, 0.5), p.pow(2) / p.pow(2).sum(1, keepdim=True))


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
    a = joapr.mix_lambdas(0.001, 50, seed=1, epoch=3)
    assert a == joapr.mix_lambdas(0.001, 50, seed=1, epoch=3)
    assert a != joapr.mix_lambdas(0.001, 50, seed=1, epoch=4)
    assert all(0.5 <= v <= 1.0 and not math.isnan(v) for v in a)


def _fake_run(n_clean, n_noisy, drop_last=True, bs=32):
    clean = torch.zeros(n_clean + n_noisy, dtype=torch.bool)
    clean[torch.randperm(len(clean), generator=torch.Generator().manual_seed(0))[:n_clean]] = True
    config = SimpleNamespace(batch_size=bs, drop_last=drop_last, seed=1)
    return SimpleNamespace(config=config, epoch_clean=clean, device="cpu", state={})


@pytest.mark.parametrize("n_clean,n_noisy", [(100, 50), (40, 130), (200, 20)])
def test_steps_are_32_clean_plus_32_noisy(n_clean, n_noisy):
    run = _fake_run(n_clean, n_noisy)
    method._two_loaders(run, epoch=0)
    per_side = [(n // 32) if n >= 32 else 1 for n in (n_clean, n_noisy)]
    assert run.steps == max(per_side)
    for batch, k in zip(run.batches, run.state["n_clean"], strict=True):
        want_x = 32 if n_clean >= 32 else n_clean
        want_u = 32 if n_noisy >= 32 else n_noisy
        assert k == want_x and len(batch) - k == want_u
        assert run.epoch_clean[batch[:k]].all() and not run.epoch_clean[batch[k:]].any()
        assert len(set(batch[:k].tolist())) == k
    # the longer side covers each of its samples at most once (drop_last drops the rest)
    longer = 0 if per_side[0] >= per_side[1] else 1
    seen = [
        b[: run.state["n_clean"][s]] if longer == 0 else b[run.state["n_clean"][s] :]
        for s, b in enumerate(run.batches)
    ]
    flat = torch.cat(seen).tolist()
    assert len(flat) == len(set(flat))


def test_an_empty_side_gives_batches_of_the_other_alone():
    run = _fake_run(70, 0, drop_last=False)
    method._two_loaders(run, epoch=0)
    assert run.steps == 3 and run.state["n_clean"] == [32, 32, 6]
    assert all(len(b) == k for b, k in zip(run.batches, run.state["n_clean"], strict=True))


def test_presets_are_the_readme_table():
    assert joapr.preset_for("caltech101", "sym", 0.25) == {
        "warmup": 1,
        "entropy": 0.5,
        "prior": 0.5,
    }
    assert joapr.preset_for("fgvc_aircraft", "pair", 0.75)["entropy"] == 0.5
    assert joapr.preset_for("fgvc_aircraft", "sym", 0.5) == {
        "warmup": 150,
        "entropy": 0.1,
        "prior": 1.0,
    }
    assert joapr.preset_for("eurosat", "pair", 0.5)["warmup"] == 10
    assert joapr.preset_for("eurosat", "sym", 0.5)["warmup"] == 1
    assert joapr.preset_for("oxford_flowers", "pair", 0.5)["warmup"] == 1
    assert joapr.preset_for("ucf101", "pair", 0.375)["warmup"] == 1
    assert joapr.preset_for("ucf101", "sym", 0.375)["warmup"] == 20
    assert joapr.preset_for("dtd", "pair", 0.75)["entropy"] == 0.1
    assert joapr.preset_for("dtd", "sym", 0.75)["entropy"] == 0.2
    assert joapr.preset_for("oxford_pets", "sym", 0.8)["entropy"] == 0.2  # nearest: 75 %
    assert joapr.preset_for("eurosat", None, None)["warmup"] == 10  # no noise: 12.5 %
    from nlp_cli.cli.train import JOAPR_PRESETS

    assert JOAPR_PRESETS == method.PRESET_CHOICES


@pytest.fixture
def noisy(tmp_path, tiny_clip):
    feats = make_features(
        tmp_path / "f.safetensors", tiny_clip, n_classes=10, n_train=24, signal=20.0
    )
    return make_sym_labelset(feats, tmp_path / "sym60.safetensors", 0.6)


RUN = {"epochs": 15, "n_ctx": 4, "batch_size": 16, "lr": 0.002, "ctx_init": "a photo of a"}


def test_preset_resolved_from_the_data(noisy):
    data = lib.load_data(noisy)
    jo = method.JoAPR()
    auto = jo.resolve(lib.make_config(method="joapr", **RUN), data)  # "synthetic": no row
    assert (auto.joapr_warmup, auto.joapr_entropy, auto.joapr_prior) == (1, 0.5, 1.0)
    euro = jo.resolve(lib.make_config(method="joapr", joapr_preset="eurosat", **RUN), data)
    # sym 60 % reads EuroSAT's 62.5 % column
    assert (euro.joapr_warmup, euro.joapr_entropy, euro.joapr_prior) == (1, 0.2, 1.0)
    cal = jo.resolve(lib.make_config(method="joapr", joapr_preset="caltech101", **RUN), data)
    assert cal.joapr_prior == 0.5
    mine = lib.make_config(method="joapr", joapr_preset="eurosat", joapr_warmup=2, **RUN)
    assert jo.resolve(mine, data).joapr_warmup == 2
    with pytest.raises(UsageError, match="warms up for 150"):
        jo.resolve(lib.make_config(method="joapr", joapr_preset="fgvc_aircraft", **RUN), data)


def test_joapr_beats_ce_on_sym60(noisy):
    ce = lib.train_prompt(noisy, lib.make_config(**RUN))
    jo = lib.train_prompt(noisy, lib.make_config(method="joapr", **RUN))
    assert torch.isfinite(jo.ctx).all()
    assert jo.config.joapr_warmup == 1 and jo.config.joapr_prior == 1.0
    last = lambda res: sum(h["test_acc"] for h in res.history[-3:]) / 3  # noqa: E731
    assert last(jo) > last(ce) + 0.1
    assert jo.history[0]["clean_frac"] is None
    assert all(0.0 < h["clean_frac"] <= 1.0 for h in jo.history[1:])
    assert any(h["clean_frac"] < 0.9 for h in jo.history[1:])
    assert all(h["loss_clean"] is not None and h["loss_noisy"] is not None for h in jo.history)
    plain = lib.train_prompt(noisy, lib.make_config(method="joapr", joapr_entropy=0.0, **RUN))
    assert plain.history[0] == ce.history[0]  # α₁ = 0: the warm-up is CE


def test_joapr_deterministic_batched_and_resumed(noisy, tmp_path):
    cfg = lib.make_config(method="joapr", joapr_warmup=1, **(RUN | {"epochs": 4}))
    a = lib.train_prompt(noisy, cfg)
    b = lib.train_prompt(noisy, cfg)
    assert torch.equal(a.ctx, b.ctx) and a.history == b.history
    c = lib.train_prompt(noisy, lib.make_config(method="joapr", seed=2, **(RUN | {"epochs": 4})))
    assert not torch.equal(a.ctx, c.ctx)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ce_cfg = lib.make_config(seed=3, **(RUN | {"epochs": 4}))
        other = lib.make_config(method="joapr", seed=2, joapr_views=1, **(RUN | {"epochs": 4}))
        many = lib.train_many([noisy, noisy, noisy], [cfg, ce_cfg, other])
        alone = lib.train_prompt(noisy, cfg)
        alone_other = lib.train_prompt(noisy, other)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(many[0].ctx, alone.ctx) and many[0].history == alone.history
    assert torch.equal(many[2].ctx, alone_other.ctx) and many[2].history == alone_other.history
    assert many[1].history[-1]["clean_frac"] is None
    # the loss history and the adaptive threshold travel in the checkpoint
    ckpt = tmp_path / "run.ckpt"

    def stop_after_three(rec):
        if rec["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lib.train_prompt(noisy, cfg, checkpoint=ckpt, run_key="k", on_epoch=stop_after_three)
    resumed = lib.train_prompt(noisy, cfg, checkpoint=ckpt, resume=True, run_key="k")
    assert resumed.info["resumed_at"] == 3
    assert torch.equal(resumed.ctx, a.ctx) and resumed.history == a.history


def test_run_keeps_the_last_five_division_losses(noisy, tmp_path):
    from nlp_cli.checkpoints import load_checkpoint

    small = RUN | {"epochs": 7, "batch_size": 32}
    for average, kept in ((5, 5), (1, 1)):
        ckpt = tmp_path / f"a{average}.ckpt"
        cfg = lib.make_config(method="joapr", joapr_warmup=0, joapr_average=average, **small)
        lib.train_prompt(noisy, cfg, checkpoint=ckpt, run_key="k")
        carry = load_checkpoint(ckpt)["carry"]
        assert len(carry["losses"]) == kept
        assert all(len(v) == 240 and float(v.min()) == 0.0 for v in carry["losses"])
        assert 0.0 <= carry["threshold"] <= 1.0


def test_joapr_views_average_cached_views(tmp_path, tiny_clip):
    plain = make_features(tmp_path / "f.safetensors", tiny_clip, n_classes=4, n_train=12)
    art = artifacts.load(plain)
    x = art.tensors["train.features"].float()
    g = torch.Generator().manual_seed(5)
    views = torch.stack([x + 0.5 * torch.randn(x.shape, generator=g) for _ in range(3)]).half()
    feats = artifacts.save(
        tmp_path / "fv.safetensors", "features", {**art.tensors, "train.views": views}, art.meta
    )
    ls = make_sym_labelset(feats, tmp_path / "sym.safetensors", 0.4)
    cfg = lib.make_config(method="joapr", joapr_views=2, **(RUN | {"epochs": 3}))
    a = lib.train_prompt(ls, cfg)
    assert a.history == lib.train_prompt(ls, cfg).history
    one = lib.train_prompt(ls, lib.make_config(method="joapr", **(RUN | {"epochs": 3})))
    assert not torch.equal(a.ctx, one.ctx)
    with pytest.raises(UsageError, match="augment views"):
        lib.make_config(method="joapr", joapr_views=2, augment="none")


def test_joapr_options_refused():
    with pytest.raises(UsageError, match="cross-entropy"):
        lib.make_config(method="joapr", loss="gce")
    with pytest.raises(UsageError, match="joapr-warmup"):
        lib.make_config(method="joapr", epochs=2, joapr_warmup=2)
    with pytest.raises(UsageError, match="joapr-prior"):
        lib.make_config(method="joapr", joapr_prior=-1.0)
    with pytest.raises(UsageError, match="joapr-rule"):
        lib.make_config(method="joapr", joapr_rule="median")
    with pytest.raises(UsageError, match="joapr-preset"):
        lib.make_config(method="joapr", joapr_preset="mnist")
    with pytest.raises(UsageError, match="unknown method"):
        lib.make_config(method="joaprr")
    assert "joapr_alpha" not in lib.make_config().options()
    opts = lib.make_config(method="joapr").options()
    assert opts["joapr_alpha"] == 0.001 and opts["joapr_rule"] == "both"


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
        "--joapr-rule",
        "adaptive",
        "--joapr-preset",
        "none",
    )
    res = cli(*args, "--json")
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    art = artifacts.load(summary["path"], "prompt")
    assert "joapr" in art.path.name
    assert art.meta["method"] == "joapr"
    assert art.meta["options"]["joapr_alpha"] == 2.0
    assert art.meta["options"]["joapr_rule"] == "adaptive"
    assert art.meta["options"]["joapr_warmup"] is None  # from the preset: recorded in config
    assert art.meta["config"]["joapr_warmup"] == 1
    assert art.meta["history"][1]["clean_frac"] is not None
    again = cli(*args)
    assert again.code == 0 and "cache hit" in again.stderr
    plain = cli("train", str(noisy), "--epochs", "2", "--n-ctx", "4")
    assert plain.code == 0 and plain.stdout.strip() != summary["path"]
    bad = cli("train", str(noisy), "--method", "joapr", "--loss", "gce")
    assert bad.code == 2 and bad.stderr.startswith("error:")
