"""Training: every loss trains, runs are deterministic and resumable, the CLI keeps its contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_features

from nlp_cli import artifacts, clip_model, losses
from nlp_cli import train as lib
from nlp_cli.errors import UsageError

HISTORY_KEYS = ("epoch", "lr", "loss", "loss_clean", "loss_noisy", "test_acc", "clean_frac")
FAST = {"epochs": 2, "n_ctx": 4, "batch_size": 32}


def make_labelset(features: Path, out: Path, rate: float = 0.4, partition: bool = False) -> Path:
    """Pair-flip noise on a features artifact's train split; optionally an oracle partition."""
    feats = artifacts.load(features)
    y = feats.tensors["train.labels"].long()
    n_cls = len(feats.classnames)
    flip = torch.rand(len(y), generator=torch.Generator().manual_seed(0)) < rate
    noisy = torch.where(flip, (y + 1) % n_cls, y)
    tensors = {
        "labels": noisy,
        "true_labels": y.clone(),
        "index": torch.arange(len(y)),
        "transition": torch.eye(n_cls, dtype=torch.float64),
    }
    meta = {
        "model": feats.meta["model"],
        "dataset": feats.meta["dataset"],
        "classnames": feats.classnames,
        "options": {"rate": rate},
        "upstream": {"features": feats.ref()},
    }
    kind = "labelset"
    if partition:
        kind = "partition"
        tensors |= {
            "clean": noisy == y,
            "pseudo_labels": y.clone(),
            "scores": (noisy == y).float(),
        }
    return artifacts.save(out, kind, tensors, meta)


@pytest.fixture
def labelset(tmp_path, features) -> Path:
    return make_labelset(features, tmp_path / "labels.safetensors")


@pytest.fixture
def partition(tmp_path, features) -> Path:
    return make_labelset(features, tmp_path / "part.safetensors", partition=True)


@pytest.mark.parametrize("loss", losses.list_losses())
def test_every_loss_trains(partition, loss):
    cfg = lib.make_config(loss=loss, lr=0.05, **FAST)
    data = lib.load_data(partition)
    res = lib.train_prompt(data, cfg)
    start = lib.train_prompt(data, lib.make_config(loss=loss, lr=0.05, **(FAST | {"epochs": 1})))
    assert torch.isfinite(res.ctx).all()
    assert not torch.equal(res.ctx, start.ctx)
    assert [h["epoch"] for h in res.history] == [1, 2]
    for h in res.history:
        assert set(h) == set(HISTORY_KEYS)
        assert 0.0 <= h["test_acc"] <= 1.0
        assert h["loss_clean"] is not None and h["loss_noisy"] is not None


def test_same_seed_same_ctx_bit_for_bit(labelset):
    cfg = lib.make_config(loss="dsoftmax", momentum=0.9, **FAST)
    a = lib.train_prompt(labelset, cfg)
    b = lib.train_prompt(labelset, cfg)
    c = lib.train_prompt(labelset, lib.make_config(loss="dsoftmax", momentum=0.9, seed=2, **FAST))
    assert torch.equal(a.ctx, b.ctx)
    assert a.history == b.history
    assert not torch.equal(a.ctx, c.ctx)


def test_class_chunks_train_the_same_prompt(labelset):
    """--class-chunk 2 (5 classes: chunks of 2, 2, 1, recomputed in backward) trains the prompt
    of one pass over all classes, to float32 rounding; the setting enters the run's options
    only when given."""
    whole = lib.train_prompt(labelset, lib.make_config(loss="ce", class_chunk=0, **FAST))
    chunked = lib.train_prompt(labelset, lib.make_config(loss="ce", class_chunk=2, **FAST))
    assert (chunked.ctx - whole.ctx).abs().max().item() <= 1e-6
    assert [h["test_acc"] for h in chunked.history] == [h["test_acc"] for h in whole.history]
    assert "class_chunk" not in lib.make_config(**FAST).options()
    assert lib.make_config(class_chunk=2, **FAST).options()["class_chunk"] == 2


def test_resume_gives_the_uninterrupted_ctx(tmp_path, labelset):
    cfg = lib.make_config(
        loss="ce", epochs=4, momentum=0.9, weight_decay=5e-4, n_ctx=4, warmup_epochs=1
    )
    full = lib.train_prompt(labelset, cfg)
    ckpt = tmp_path / "run.ckpt"

    def stop_after_two(rec):
        if rec["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lib.train_prompt(labelset, cfg, checkpoint=ckpt, run_key="k", on_epoch=stop_after_two)
    assert ckpt.exists()
    resumed = lib.train_prompt(labelset, cfg, checkpoint=ckpt, resume=True, run_key="k")
    assert resumed.info["resumed_at"] == 2
    assert torch.equal(resumed.ctx, full.ctx)
    assert resumed.history == full.history
    other = lib.train_prompt(labelset, cfg, checkpoint=ckpt, resume=True, run_key="other")
    assert other.info["resumed_at"] == 0


def test_views_one_per_sample_per_epoch(tmp_path, tiny_clip):
    plain = make_features(tmp_path / "f.safetensors", tiny_clip)
    art = artifacts.load(plain)
    x = art.tensors["train.features"].float()
    g = torch.Generator().manual_seed(5)
    views = torch.stack([x + 0.5 * torch.randn(x.shape, generator=g) for _ in range(3)]).half()
    with_views = artifacts.save(
        tmp_path / "fv.safetensors", "features", {**art.tensors, "train.views": views}, art.meta
    )
    cfg = lib.make_config(loss="ce", **FAST)
    a = lib.train_prompt(with_views, cfg)
    assert torch.equal(a.ctx, lib.train_prompt(with_views, cfg).ctx)
    assert not torch.equal(a.ctx, lib.train_prompt(plain, cfg).ctx)


def test_protocols_and_schedule():
    # dspt = CoOp's vit_b16_ep50 with Dassl's defaults (tests/test_protocols.py holds the
    # presets to the reference transcription); the cosine restarts after the warm-up epoch
    d = lib.make_config("dspt")
    assert (d.epochs, d.lr, d.batch_size, d.n_ctx, d.momentum) == (50, 0.002, 32, 16, 0.9)
    assert d.lr_at(0) == 1e-5 and d.lr_at(1) == pytest.approx(0.002)
    assert d.lr_at(26) == pytest.approx(0.001)
    plain = lib.make_config("dspt", momentum=0.0, weight_decay=0.0, warmup_epochs=0)
    assert plain.lr_at(0) == pytest.approx(0.002) and plain.lr_at(25) == pytest.approx(0.001)
    n = lib.make_config("nlprompt", epochs=10)
    assert (n.momentum, n.weight_decay, n.warmup_epochs, n.epochs) == (0.9, 5e-4, 1, 10)
    assert n.lr_at(0) == 1e-5 and n.lr_at(1) == pytest.approx(0.002)
    assert n.lr_at(2) == pytest.approx(0.001 * (1 + 0.9510565))
    with pytest.raises(UsageError, match="did you mean"):
        lib.make_config("cop")
    with pytest.raises(UsageError, match="no knob"):
        lib.make_config(loss="ce", q=0.5)
    with pytest.raises(UsageError, match="lie in"):
        lib.make_config(loss="gce", q=2.0)


def test_zero_shot_targets_are_hand_prompt_predictions(labelset, tiny_clip):
    cfg = lib.make_config(loss="gce", targets="zero-shot", **FAST)
    data = lib.load_data(labelset)
    res = lib.train_prompt(data, cfg)
    model = clip_model.load(str(tiny_clip)).model
    hand = clip_model.hand_prompt_features(model, data.classnames)
    x = data.features.tensors["train.features"].float()
    pred = (x @ hand.T).argmax(dim=1)
    all_right = bool((pred == data.true_labels).all())
    assert (res.history[0]["loss_noisy"] is None) == all_right
    assert not torch.equal(res.ctx, lib.train_prompt(data, lib.make_config(loss="gce", **FAST)).ctx)


def test_nlprompt_needs_a_partition(labelset):
    with pytest.raises(UsageError, match="purify"):
        lib.train_prompt(labelset, lib.make_config(loss="nlprompt", **FAST))


def test_repurify_every_epoch(labelset):
    pytest.importorskip("nlp_cli.purify")
    cfg = lib.make_config(loss="nlprompt", repurify="epoch", **FAST)
    res = lib.train_prompt(labelset, cfg)
    assert all(0.0 <= h["clean_frac"] <= 1.0 for h in res.history)


def test_coop_checkpoint_roundtrip(tmp_path, cli, partition):
    r = cli(
        "train",
        partition,
        "--loss",
        "ce",
        "--epochs",
        "1",
        "--n-ctx",
        "4",
        "--export-coop",
        tmp_path / "model.pth.tar-1",
    )
    assert r.code == 0, r.stderr
    prompt = artifacts.load(r.stdout.strip())
    ctx, extra = lib.import_coop(tmp_path / "model.pth.tar-1")
    assert torch.equal(ctx, prompt.tensors["ctx"]) and extra["epoch"] == 1
    raw = torch.load(tmp_path / "model.pth.tar-1", weights_only=True)
    assert {"ctx", "token_prefix", "token_suffix"} <= set(raw["state_dict"])
    r2 = cli(
        "train",
        partition,
        "--loss",
        "ce",
        "--epochs",
        "1",
        "--n-ctx",
        "4",
        "--lr",
        "1e-12",
        "--init-from",
        tmp_path / "model.pth.tar-1",
    )
    assert r2.code == 0, r2.stderr
    again = artifacts.load(r2.stdout.strip())
    assert torch.allclose(again.tensors["ctx"], ctx, atol=1e-6)
    assert again.meta["upstream"]["init"]["kind"] == "coop"
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, tmp_path / "bad.pth")
    bad = cli("train", partition, "--init-from", tmp_path / "bad.pth", "--epochs", "1")
    assert bad.code == 1 and "no 'ctx'" in bad.stderr


def test_cli_pipe_train_eval(cli, partition, nlp_home):
    r = cli("train", "--loss", "nlprompt", "--epochs", "2", "--n-ctx", "4", stdin=f"{partition}\n")
    assert r.code == 0, r.stderr
    path = Path(r.stdout.strip())
    assert r.stdout.count("\n") == 1 and path.exists() and path.is_relative_to(nlp_home)
    assert not path.with_name(path.name + ".ckpt").exists()
    prompt = artifacts.load(path, "prompt")
    assert prompt.meta["loss"] == "nlprompt" and len(prompt.meta["history"]) == 2
    assert prompt.meta["upstream"]["partition"]["digest"] == artifacts.file_digest(partition)
    again = cli("train", partition, "--loss", "nlprompt", "--epochs", "2", "--n-ctx", "4")
    assert again.stdout == r.stdout and "cache hit" in again.stderr
    e = cli("eval", "--json", stdin=r.stdout)
    assert e.code == 0, e.stderr
    m = json.loads(e.stdout)
    assert m["acc1"] == pytest.approx(prompt.meta["history"][-1]["test_acc"])
    assert m["last5_mean_acc"] == pytest.approx(
        sum(h["test_acc"] for h in prompt.meta["history"]) / 2
    )


def test_cli_config_file_and_flags(tmp_path, cli, labelset):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("loss: gce\nepochs: 1\nn-ctx: 4\nq: 0.5\nbatch_size: 64\n")
    r = cli("train", labelset, "--config", cfg, "--q", "0.3")
    assert r.code == 0, r.stderr
    meta = artifacts.read_meta(r.stdout.strip())
    assert meta["knobs"] == {"q": 0.3} and meta["options"]["batch_size"] == 64
    cfg.write_text("lossy: gce\n")
    bad = cli("train", labelset, "--config", cfg)
    assert bad.code == 2 and bad.stderr.startswith("error:") and "lossy" in bad.stderr


def test_cli_errors_are_one_line(cli, labelset, features):
    for args, code in [
        (("train", labelset, "--loss", "dsoftmx"), 2),
        (("train", features, "--loss", "nlprompt", "--epochs", "1"), 2),
        (("train", labelset, "--loss", "ce", "--eps", "0.1"), 2),
        (("train", features.with_name("missing.safetensors")), 1),
        (("train", labelset, "--class-token-position", "side"), 2),
        (("train", labelset, "--class-chunk", "-1"), 2),
    ]:
        r = cli(*args)
        assert r.code == code, (args, r.stderr)
        assert r.stdout == "" and r.stderr.count("\n") == 1 and r.stderr.startswith("error:")


def test_clean_features_input_has_no_noisy_group(features):
    res = lib.train_prompt(features, lib.make_config(loss="ce", **FAST))
    assert all(h["loss_noisy"] is None and h["loss_clean"] is not None for h in res.history)


def test_pipe_corrupt_purify_train_eval(cli, features):
    pytest.importorskip("nlp_cli.purify")
    labels = cli("corrupt", features, "--sym", "0.5", "--seed", "1")
    assert labels.code == 0, labels.stderr
    part = cli("purify", stdin=labels.stdout)
    assert part.code == 0, part.stderr
    prompt = cli("train", "--loss", "nlprompt", "--epochs", "2", "--n-ctx", "4", stdin=part.stdout)
    assert prompt.code == 0, prompt.stderr
    meta = artifacts.read_meta(prompt.stdout.strip())
    assert meta["upstream"]["partition"]["path"] == str(Path(part.stdout.strip()).resolve())
    clean = artifacts.load(part.stdout.strip()).tensors["clean"].float().mean().item()
    assert all(h["clean_frac"] == pytest.approx(clean) for h in meta["history"])
    ev = cli("eval", "--json", stdin=prompt.stdout)
    assert ev.code == 0, ev.stderr
    assert 0.0 <= json.loads(ev.stdout)["acc1"] <= 1.0
    again = cli(
        "train",
        labels.stdout.strip(),
        "--loss",
        "nlprompt",
        "--repurify",
        "epoch",
        "--epochs",
        "2",
        "--n-ctx",
        "4",
    )
    assert again.code == 0, again.stderr
    hist = artifacts.read_meta(again.stdout.strip())["history"]
    assert all(0.0 < h["clean_frac"] <= 1.0 for h in hist)


def test_cli_nlprompt_purifies_a_label_set_first(cli, labelset, tmp_path):
    """NLPrompt is PromptOT plus training: on a label set, `nlp train` purifies it first, with
    the hand prompt as `nlp purify` would, and trains on that partition (cached as an artifact)."""
    from nlp_cli import artifacts

    out = tmp_path / "p.safetensors"
    r = cli("train", labelset, "--loss", "nlprompt", "--epochs", "1", "--n-ctx", "4", "--out", out)
    assert r.code == 0, r.stderr
    assert "purified first" in r.stderr
    prompt = artifacts.load(out, "prompt")
    part = artifacts.load(prompt.meta["upstream"]["partition"]["path"], "partition")
    piped = tmp_path / "piped.safetensors"
    assert cli("purify", labelset, "--out", piped).code == 0
    same = artifacts.load(piped, "partition")
    assert torch.equal(part.tensors["clean"], same.tensors["clean"])
    again = cli(
        "train", labelset, "--loss", "nlprompt", "--epochs", "1", "--n-ctx", "4", "--out", out
    )
    assert again.code == 0 and "cache hit" in again.stderr


def test_a_collapse_to_chance_is_warned_with_its_epoch():
    from nlp_cli.stages.train import collapse

    rising = [{"epoch": e, "test_acc": a} for e, a in enumerate([0.2, 0.5, 0.7, 0.72], 1)]
    assert collapse(rising, 10) is None
    fallen = [*rising, {"epoch": 5, "test_acc": 0.11}, {"epoch": 6, "test_acc": 0.1}]
    line = collapse(fallen, 10)
    assert "epoch 5" in line and "72.0% in epoch 4" in line and "chance 10.0%" in line
    never_up = [{"epoch": e, "test_acc": 0.1} for e in range(1, 5)]
    assert collapse(never_up, 10) is None  # at chance throughout: nothing collapsed
