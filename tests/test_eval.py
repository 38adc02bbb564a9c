"""Metrics against plain reference loops; `nlp eval` on trained and zero-shot prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_features
from hypothesis import given, settings
from hypothesis import strategies as st

from nlp_cli import artifacts, clip_model, metrics


def _reference(pred: list[int], target: list[int], n: int) -> dict[str, float]:
    recalls, f1s = [], []
    for c in range(n):
        tp = sum(p == c and t == c for p, t in zip(pred, target, strict=True))
        support = sum(t == c for t in target)
        predicted = sum(p == c for p in pred)
        if support:
            recalls.append(tp / support)
        if support or predicted:
            prec = tp / predicted if predicted else 0.0
            rec = tp / support if support else 0.0
            f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return {
        "acc1": sum(p == t for p, t in zip(pred, target, strict=True)) / len(target),
        "mean_per_class_recall": sum(recalls) / len(recalls),
        "macro_f1": sum(f1s) / len(f1s),
    }


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 6).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(
                st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), min_size=1, max_size=40
            ),
        )
    )
)
def test_metrics_match_reference(case):
    n, pairs = case
    pred = torch.tensor([p for p, _ in pairs])
    target = torch.tensor([t for _, t in pairs])
    got = metrics.summary(pred, target, [f"c{i}" for i in range(n)])
    ref = _reference(pred.tolist(), target.tolist(), n)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v)
    assert got["n"] == len(pairs)


def test_per_class_acc_marks_absent_classes():
    got = metrics.summary(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), ["a", "b", "c"])
    assert got["per_class_acc"] == {"a": 0.5, "b": 1.0, "c": None}


def test_zero_shot_eval_matches_hand_prompt(cli, features, tiny_clip):
    r = cli("eval", "--zero-shot", features, "--json", "--split", "val")
    assert r.code == 0, r.stderr
    m = json.loads(r.stdout)
    feats = artifacts.load(features)
    model = clip_model.load(str(tiny_clip)).model
    hand = clip_model.hand_prompt_features(model, feats.classnames)
    pred = (feats.tensors["val.features"].float() @ hand.T).argmax(dim=1)
    assert m["acc1"] == pytest.approx(float((pred == feats.tensors["val.labels"]).float().mean()))
    assert m["split"] == "val" and m["n"] == len(pred) and "last5_mean_acc" not in m
    assert "acc1" in r.stderr


def test_eval_writes_metrics_file_and_refuses_other_classes(cli, features, tmp_path, tiny_clip):
    t = cli("train", features, "--epochs", "1", "--n-ctx", "4")
    assert t.code == 0, t.stderr
    e = cli("eval", t.stdout.strip())
    assert e.code == 0, e.stderr
    written = json.loads(open(e.stdout.strip()).read())
    assert set(written) >= {
        "acc1",
        "mean_per_class_recall",
        "macro_f1",
        "per_class_acc",
        "split",
        "n",
        "last5_mean_acc",
    }
    other = make_features(tmp_path / "other.safetensors", tiny_clip, n_classes=4)
    bad = cli("eval", t.stdout.strip(), "--features", other)
    assert bad.code == 1 and "other classes" in bad.stderr and bad.stdout == ""
    same = make_features(tmp_path / "same.safetensors", tiny_clip, seed=3)
    ok = cli("eval", t.stdout.strip(), "--features", same, "--json")
    assert ok.code == 0 and json.loads(ok.stdout)["features"] == str(same.resolve())
    clip2 = clip_model.save_checkpoint(clip_model.build_tiny(seed=9), tmp_path / "clip2.pt")
    other_model = make_features(tmp_path / "m2.safetensors", clip2)
    bad2 = cli("eval", t.stdout.strip(), "--features", other_model)
    assert bad2.code == 1 and "another CLIP model" in bad2.stderr
    nosplit = cli("eval", t.stdout.strip(), "--split", "holdout")
    assert nosplit.code == 2 and "no holdout split" in nosplit.stderr


def test_plot_draws_the_prompt_history(cli, features, tmp_path):
    pytest.importorskip("matplotlib")
    prompt = tmp_path / "p.safetensors"
    assert cli("train", features, "--epochs", "2", "--out", prompt).code == 0
    png = tmp_path / "curves.png"
    r = cli("eval", prompt, "--plot", png, "--json")
    assert r.code == 0, r.stderr
    assert png.read_bytes()[:4] == b"\x89PNG" and "acc1" in json.loads(r.stdout)
    r = cli("eval", "--zero-shot", features, "--plot", png)
    assert r.code == 2 and "PROMPT" in r.stderr and r.stdout == ""


def test_untrained_context_is_the_training_init(cli, features, tmp_path):
    """`eval --untrained FEATS --seed S` scores the context `nlp train --seed S` starts from."""
    r = cli("eval", "--untrained", features, "--seed", "3", "--json")
    assert r.code == 0, r.stderr
    untrained = json.loads(r.stdout)
    assert untrained["untrained_seed"] == 3
    out = tmp_path / "still.safetensors"
    # an lr so small that no update survives float32 rounding: the prompt stays the init
    r = cli("train", features, "--seed", "3", "--epochs", "1", "--lr", "1e-300", "--out", out)
    assert r.code == 0, r.stderr
    still = json.loads(cli("eval", out, "--json").stdout)
    assert still["acc1"] == untrained["acc1"]
    assert cli("eval", "--untrained", features, "--zero-shot", features).code == 2


def test_eval_json_carries_the_resolved_config_and_environment(cli, features, tmp_path):
    out = tmp_path / "p.safetensors"
    r = cli("train", features, "--protocol", "coop", "--epochs", "2", "--n-ctx", "4", "--out", out)
    assert r.code == 0, r.stderr
    m = json.loads(cli("eval", out, "--json").stdout)
    assert m["protocol"] == "coop"
    assert m["config"]["momentum"] == 0.9 and m["config"]["precision"] == "fp32"
    assert m["environment"]["device"] == "cpu" and m["environment"]["torch"]
    assert m["environment"]["threads"] >= 1


def test_runs_of_one_train_call_say_a_shared_warning_once(cli, features):
    """Two seeds under a paper protocol on features without augmented views: the warning about
    the views concerns the features both runs read, so it is printed once, not once per run."""
    r = cli(
        "train", features, "--protocol", "coop", "--epochs", "1", "--n-ctx", "4", "--seed", "1,2"
    )
    assert r.code == 0, r.stderr
    assert len(r.stdout.split()) == 2
    assert r.stderr.count("holds only center crops") == 1


def test_metrics_as_clip_benchmark_writes_them_and_the_aggregate(cli, features, tmp_path):
    import csv
    import io

    out = tmp_path / "p.safetensors"
    assert cli("train", features, "--epochs", "1", "--n-ctx", "4", "--out", out).code == 0
    a, b = tmp_path / "m" / "a.json", tmp_path / "m" / "b.json"
    assert cli("eval", out, "--out", a).code == 0
    assert cli("eval", "--zero-shot", features, "--out", b).code == 0
    m = json.loads(a.read_text())
    assert set(m["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert m["metrics"]["acc1"] == m["acc1"] <= m["acc5"] <= 1.0  # today's keys still there
    assert (m["dataset"], m["task"]) == ("synthetic", "prompt_classification")
    assert json.loads(b.read_text())["task"] == "zeroshot_classification"
    r = cli("aggregate", tmp_path / "m")
    assert r.code == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert {row["task"] for row in rows} == {"prompt_classification", "zeroshot_classification"}
    assert float(rows[0]["acc1"]) == json.loads(a.read_text())["acc1"]


def test_eval_of_several_prompts_is_each_prompt_alone_one_line_each(cli, features, tmp_path):
    """`nlp eval P1 P2` (one process, one model load) prints what `nlp eval P1` and `nlp eval
    P2` print, one line each in the order given; a bad PROMPT among them fails the whole call
    with nothing on stdout, and --out / --plot take one PROMPT."""
    t = cli("train", features, "--epochs", "1", "--n-ctx", "4", "--loss", "ce,mae")
    assert t.code == 0, t.stderr
    first, second = t.stdout.split()
    alone = [json.loads(cli("eval", p, "--json").stdout) for p in (second, first)]
    both = cli("eval", second, first, "--json")
    assert both.code == 0, both.stderr
    assert [json.loads(line) for line in both.stdout.splitlines()] == alone
    assert [Path(m["prompt"]).name for m in alone] == [Path(second).name, Path(first).name]
    paths = cli("eval", first, second)
    assert paths.code == 0, paths.stderr
    files = paths.stdout.split()
    assert len(files) == 2
    for path, want in zip(files, alone[::-1], strict=True):
        assert json.loads(open(path).read())["acc1"] == want["acc1"]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a prompt")
    r = cli("eval", first, str(bad), "--json")
    assert r.code != 0 and r.stdout == "" and "bad.safetensors" in r.stderr
    r = cli("eval", first, second, "--out", str(tmp_path / "m.json"))
    assert r.code != 0 and "--out takes one PROMPT, got 2" in r.stderr
    assert not (tmp_path / "m.json").exists()
