"""Multi-run training: R prompts in one process equal the same runs trained one by one."""

from __future__ import annotations

import json

import pytest
import torch
from test_train import make_labelset

from nlp_cli import train as lib
from nlp_cli.errors import UsageError

FAST = {"epochs": 2, "n_ctx": 4, "batch_size": 16}


@pytest.fixture
def one_thread():
    # Bit-identity holds when the CPU kernels do not split work across threads: with several
    # threads a kernel may partition R·C rows differently from C rows, and round differently.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def three_runs(tmp_path, features):
    """Mixed runs over one features file: other seeds, losses, label sets, partitions, sizes."""
    labels = make_labelset(features, tmp_path / "l.safetensors", rate=0.4)
    part = make_labelset(features, tmp_path / "p.safetensors", rate=0.2, partition=True)
    datas = [labels, part, features]
    configs = [
        lib.make_config(loss="dsoftmax", seed=1, momentum=0.9, **FAST),
        lib.make_config(loss="nlprompt", seed=2, lr=0.01, **FAST),
        lib.make_config(loss="gce", seed=3, **(FAST | {"epochs": 3, "batch_size": 7})),
    ]
    return datas, configs


def test_batched_runs_equal_runs_alone(three_runs, one_thread):
    datas, configs = three_runs
    seen: list[tuple[int, int]] = []
    many = lib.train_many(datas, configs, on_epoch=lambda r, rec: seen.append((r, rec["epoch"])))
    for data, config, got in zip(datas, configs, many, strict=True):
        alone = lib.train_prompt(data, config)
        assert torch.equal(got.ctx, alone.ctx)
        assert got.history == alone.history
    assert sorted(seen) == [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2), (2, 3)]
    assert not torch.equal(many[0].ctx, many[1].ctx)


def test_batched_runs_close_with_threads(three_runs):
    datas, configs = three_runs
    many = lib.train_many(datas, configs)
    for data, config, got in zip(datas, configs, many, strict=True):
        alone = lib.train_prompt(data, config)
        assert (got.ctx - alone.ctx).abs().max().item() <= 1e-6
        assert [h["test_acc"] for h in got.history] == [h["test_acc"] for h in alone.history]


def test_repurify_and_zero_shot_runs_batch(tmp_path, features, one_thread):
    labels = make_labelset(features, tmp_path / "l.safetensors", rate=0.4)
    configs = [
        lib.make_config(loss="nlprompt", repurify="epoch", seed=4, **FAST),
        lib.make_config(loss="gce", targets="zero-shot", seed=5, **FAST),
    ]
    many = lib.train_many([labels, labels], configs)
    for config, got in zip(configs, many, strict=True):
        alone = lib.train_prompt(labels, config)
        assert torch.equal(got.ctx, alone.ctx)
        assert got.history == alone.history


def test_runs_that_cannot_share_a_pass_are_refused(tmp_path, features, tiny_clip):
    from conftest import make_features

    other = make_features(tmp_path / "other.safetensors", tiny_clip, seed=3)
    cfg = lib.make_config(**FAST)
    with pytest.raises(UsageError, match="same features"):
        lib.train_many([features, other], [cfg, cfg])
    with pytest.raises(UsageError, match="same n_ctx"):
        lib.train_many([features, features], [cfg, lib.make_config(**(FAST | {"n_ctx": 5}))])
    with pytest.raises(UsageError, match="one configuration per"):
        lib.train_many([features], [cfg, cfg])


def test_cli_trains_a_list_of_losses_and_seeds(cli, features, tmp_path):
    labels = make_labelset(features, tmp_path / "l.safetensors", rate=0.4)
    r = cli(
        "train", labels, "--loss", "ce,dsoftmax", "--seed", "1,2", "--epochs", "1", "--n-ctx", "4"
    )
    assert r.code == 0, r.stderr
    paths = r.stdout.split()
    assert len(paths) == 4 and len(set(paths)) == 4
    from nlp_cli import artifacts

    metas = [artifacts.read_meta(p) for p in paths]
    assert sorted((m["loss"], m["options"]["seed"]) for m in metas) == [
        ("ce", 1),
        ("ce", 2),
        ("dsoftmax", 1),
        ("dsoftmax", 2),
    ]
    single = cli(
        "train", labels, "--loss", "dsoftmax", "--seed", "2", "--epochs", "1", "--n-ctx", "4"
    )
    assert single.stdout.strip() in paths
    assert "cache hit" in single.stderr
    again = cli(
        "train",
        labels,
        "--loss",
        "ce,dsoftmax",
        "--seed",
        "1,2",
        "--epochs",
        "1",
        "--n-ctx",
        "4",
        "--json",
    )
    assert again.code == 0 and again.stderr.count("cache hit") == 4
    assert [run["path"] for run in json.loads(again.stdout)["runs"]] == paths


def test_cli_trains_several_inputs(cli, features, tmp_path):
    a = make_labelset(features, tmp_path / "a.safetensors", rate=0.2)
    b = make_labelset(features, tmp_path / "b.safetensors", rate=0.4)
    r = cli("train", a, b, "--epochs", "1", "--n-ctx", "4")
    assert r.code == 0, r.stderr
    assert len(r.stdout.split()) == 2
    bad = cli("train", a, b, "--epochs", "1", "--out", tmp_path / "x.safetensors")
    assert bad.code == 2 and bad.stderr.startswith("error:") and "--out" in bad.stderr
    outs = [tmp_path / "pa.safetensors", tmp_path / "pb.safetensors"]
    zipped = cli(
        "train",
        a,
        b,
        "--zip",
        "--loss",
        "ce,mae",
        "--seed",
        "3",
        "--epochs",
        "1",
        "--n-ctx",
        "4",
        "--out",
        outs[0],
        "--out",
        outs[1],
    )
    assert zipped.code == 0, zipped.stderr
    assert zipped.stdout.split() == [str(p) for p in outs]
    from nlp_cli import artifacts

    assert [artifacts.read_meta(p)["loss"] for p in outs] == ["ce", "mae"]
