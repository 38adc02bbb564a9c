"""Gradient statistics against theory (DSPT Theorem 3.2) and the `analyze-grad` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_sym_labelset

from nlp_cli import analysis, artifacts, clip_model
from nlp_cli.prompt import PromptLearner, plain_text_features


def _confident(c: int = 10, n_clean: int = 40, n_noisy: int = 60, margin: float = 25.0, seed=0):
    """Logits that predict the true class with `margin`; noisy samples carry another label."""
    g = torch.Generator().manual_seed(seed)
    true = torch.randint(0, c, (n_clean + n_noisy,), generator=g)
    z = torch.randn(len(true), c, generator=g, dtype=torch.float64)
    z[torch.arange(len(true)), true] += margin
    labels = true.clone()
    shift = torch.randint(1, c, (n_noisy,), generator=g)
    labels[n_clean:] = (true[n_clean:] + shift) % c
    return z, labels, true


def test_confident_wrong_predictions_ce_near_two_dsoftmax_near_zero():
    z, labels, true = _confident()
    stats = analysis.gradient_stats(["ce", "dsoftmax"], z, labels, true).summary()
    assert stats["ce"]["noisy"]["n"] == 60 and stats["ce"]["clean"]["n"] == 40
    assert abs(stats["ce"]["noisy"]["mean"] - 2.0) < 1e-6
    assert stats["ce"]["noisy"]["median"] > 2.0 - 1e-6
    assert stats["dsoftmax"]["noisy"]["max"] < 1e-6
    assert stats["dsoftmax"]["noisy"]["mean"] < 1e-6 * stats["ce"]["noisy"]["mean"]


def test_moderate_confidence_keeps_dsoftmax_gradients_on_clean_samples():
    # Zero-shot-like logits: clean samples right with a small margin, noisy confidently wrong.
    z, labels, true = _confident(margin=2.0)
    z[40:] = 0.0
    z[torch.arange(40, 100), true[40:]] = 30.0
    stats = analysis.gradient_stats(["ce", "dsoftmax"], z, labels, true).summary()
    assert stats["dsoftmax"]["clean"]["mean"] > 1e3 * stats["dsoftmax"]["noisy"]["mean"]
    assert stats["ce"]["noisy"]["mean"] > stats["ce"]["clean"]["mean"]


def test_ce_mass_is_twice_one_minus_py():
    z, labels, _ = _confident(margin=1.0)
    p = torch.softmax(z, dim=1)[torch.arange(len(labels)), labels]
    torch.testing.assert_close(analysis.grad_mass("ce", z, labels), 2 * (1 - p))


def test_dsoftmax_mass_is_the_l1_norm_of_the_paper_gradient():
    z, labels, _ = _confident(margin=3.0, c=7)
    p = torch.softmax(z, dim=1)
    q = torch.softmax(p, dim=1)
    py = p[torch.arange(len(labels)), labels][:, None]
    delta = torch.nn.functional.one_hot(labels, 7).double()
    grad = p * ((q - delta) + (py - (p * q).sum(1, keepdim=True)))
    torch.testing.assert_close(analysis.grad_mass("dsoftmax", z, labels), grad.abs().sum(1))


def test_mass_of_one_sample_ignores_the_rest_of_the_batch():
    z, labels, _ = _confident(margin=1.0)
    full = analysis.grad_mass("select", z, labels)
    alone = torch.stack(
        [analysis.grad_mass("select", z[i : i + 1], labels[i : i + 1])[0] for i in range(5)]
    )
    torch.testing.assert_close(full[:5], alone)


def test_summarize_matches_numpy():
    v = torch.rand(101, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s = analysis.summarize(v)
    a = v.numpy()
    assert s["n"] == 101
    assert s["mean"] == pytest.approx(a.mean())
    assert s["median"] == pytest.approx(np.median(a))
    assert s["p90"] == pytest.approx(np.percentile(a, 90))
    assert s["max"] == pytest.approx(a.max())
    assert analysis.summarize(torch.empty(0)) == {
        "n": 0,
        "mean": None,
        "median": None,
        "p90": None,
        "max": None,
    }


def test_histogram_matches_numpy():
    v = torch.rand(500, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2
    counts, edges = analysis.histogram(v, 8, 0.0, 2.0)
    ref, ref_edges = np.histogram(v.numpy(), bins=8, range=(0.0, 2.0))
    assert counts == ref.tolist()
    np.testing.assert_allclose(edges, ref_edges)


# --- the command ---------------------------------------------------------------------------


def _labelset(tmp_path, features, rate=0.5, seed=0, name="labels.safetensors"):
    path = make_sym_labelset(features, tmp_path / name, rate, seed)
    ls = artifacts.load(path, "labelset")
    return path, ls.tensors["labels"], ls.tensors["true_labels"]


def _partition(tmp_path, labels_path):
    ls = artifacts.load(labels_path, "labelset")
    clean = ls.tensors["labels"] == ls.tensors["true_labels"]
    tensors = {
        **ls.tensors,
        "clean": clean,
        "pseudo_labels": ls.tensors["true_labels"].clone(),
        "scores": clean.float(),
    }
    meta = {k: ls.meta[k] for k in ("model", "dataset", "classnames")}
    meta.update(
        {
            "upstream": {"labelset": ls.ref(), "features": ls.meta["upstream"]["features"]},
            "method": "oracle",
            "options": {},
            "key": "oracle",
        }
    )
    return artifacts.save(tmp_path / "part.safetensors", "partition", tensors, meta)


def test_cli_json_has_exactly_the_documented_keys(cli, tmp_path, features, tiny_clip):
    ls, labels, true = _labelset(tmp_path, features)
    r = cli("analyze-grad", ls, "--loss", "ce,dsoftmax,gce", "--model", tiny_clip, "--json")
    assert r.code == 0, r.stderr
    data = json.loads(r.stdout)
    assert list(data) == ["ce", "dsoftmax", "gce"]
    for groups in data.values():
        assert set(groups) == {"clean", "noisy"}
        for g in groups.values():
            assert set(g) == {"n", "mean", "median", "p90", "max"}
    n_noisy = int((labels != true).sum())
    assert data["ce"]["noisy"]["n"] == n_noisy
    assert data["ce"]["clean"]["n"] == len(labels) - n_noisy
    # The stderr table and histograms.
    assert "gradient mass" in r.stderr and "p90" in r.stderr and "correct" in r.stderr
    assert "█" in r.stderr


def test_cli_matches_library_at_the_hand_prompt(cli, tmp_path, features, tiny_clip):
    ls, labels, true = _labelset(tmp_path, features)
    r = cli("analyze-grad", ls, "--loss", "ce", "--model", tiny_clip, "--json")
    loaded = clip_model.load(str(tiny_clip))
    feats = artifacts.load(features)
    text = clip_model.hand_prompt_features(loaded.model, feats.classnames)
    image = feats.tensors["train.features"].float()
    image = image / image.norm(dim=1, keepdim=True)
    logits = loaded.logit_scale * image @ text.T
    want = analysis.gradient_stats(["ce"], logits, labels, true).summary()
    got = json.loads(r.stdout)
    for g in ("clean", "noisy"):
        for k in ("mean", "median", "p90", "max"):
            assert got["ce"][g][k] == pytest.approx(want["ce"][g][k], rel=1e-5)


def test_cli_writes_json_file_and_hits_the_cache(cli, tmp_path, features, tiny_clip, nlp_home):
    ls, _, _ = _labelset(tmp_path, features)
    r = cli("analyze-grad", ls, "--model", tiny_clip)
    assert r.code == 0, r.stderr
    path = r.stdout.strip()
    assert r.stdout.count("\n") == 1 and path.startswith(str(nlp_home / "artifacts" / "analysis"))
    saved = json.loads(open(path).read())
    as_json = json.loads(cli("analyze-grad", ls, "--model", tiny_clip, "--json").stdout)
    assert saved == as_json
    again = cli("analyze-grad", "--model", tiny_clip, stdin=f"{ls}\n")
    assert again.code == 0 and again.stdout.strip() == path and "cache hit" in again.stderr


def test_cli_refuses_unknown_loss_and_missing_partition(cli, tmp_path, features, tiny_clip):
    ls, _, _ = _labelset(tmp_path, features)
    r = cli("analyze-grad", ls, "--loss", "ce,dsoftmx", "--model", tiny_clip)
    assert r.code == 2 and "did you mean 'dsoftmax'" in r.stderr and r.stderr.count("\n") == 1
    r = cli("analyze-grad", ls, "--loss", "nlprompt", "--model", tiny_clip)
    assert r.code == 2 and "partition" in r.stderr and r.stdout == ""
    r = cli("analyze-grad", ls, "--knob", "gce.q=2", "--loss", "gce", "--model", tiny_clip)
    assert r.code == 2 and "q must lie in" in r.stderr


def test_cli_needs_a_resolvable_model(cli, tmp_path, tiny_clip):
    import shutil

    from conftest import make_features

    gone = shutil.copy(tiny_clip, tmp_path / "moved-away.pt")
    feats = make_features(tmp_path / "feats.safetensors", gone)
    ls, _, _ = _labelset(tmp_path, feats)
    Path(gone).unlink()
    r = cli("analyze-grad", ls)
    assert r.code == 1 and "--model" in r.stderr and r.stderr.count("\n") == 1


def test_cli_nlprompt_uses_the_partition(cli, tmp_path, features, tiny_clip):
    ls, labels, true = _labelset(tmp_path, features)
    part = _partition(tmp_path, ls)
    r = cli("analyze-grad", part, "--loss", "nlprompt,ce", "--model", tiny_clip, "--json")
    assert r.code == 0, r.stderr
    data = json.loads(r.stdout)
    # With an oracle partition, noisy samples get MAE, whose mass 2·p_y(1 − p_y) ≤ 1/2.
    assert data["nlprompt"]["noisy"]["max"] <= 0.5 + 1e-9
    assert data["nlprompt"]["clean"] == data["ce"]["clean"]


def _prompt_file(tmp_path, features, tiny_clip, ctx, cfg, classnames=None):
    feats = artifacts.load(features)
    meta = {
        "model": feats.model,
        "dataset": feats.meta["dataset"],
        "classnames": classnames or feats.classnames,
        "prompt": cfg,
        "loss": "ce",
        "history": [],
        "options": {},
        "upstream": {"features": feats.ref()},
        "key": "p",
    }
    return artifacts.save(tmp_path / "prompt.safetensors", "prompt", {"ctx": ctx}, meta)


def test_cli_prompt_initialised_from_hand_words_equals_hand_prompt(
    cli, tmp_path, features, tiny_clip
):
    ls, _, _ = _labelset(tmp_path, features)
    loaded = clip_model.load(str(tiny_clip))
    classnames = artifacts.load(features).classnames
    learner = PromptLearner(loaded.model, classnames, ctx_init="a photo of a")
    cfg = {"n_ctx": learner.n_ctx, "csc": False, "position": "end", "ctx_init": "a photo of a"}
    pf = _prompt_file(tmp_path, features, tiny_clip, learner.ctx.detach(), cfg)
    hand = json.loads(cli("analyze-grad", ls, "--model", tiny_clip, "--json").stdout)
    r = cli("analyze-grad", ls, "--prompt", pf, "--model", tiny_clip, "--json")
    assert r.code == 0, r.stderr
    got = json.loads(r.stdout)
    for loss in ("ce", "dsoftmax"):
        for g in ("clean", "noisy"):
            assert got[loss][g]["mean"] == pytest.approx(hand[loss][g]["mean"], rel=1e-4)


def test_cli_prompt_random_ctx_uses_plain_text_features(cli, tmp_path, features, tiny_clip):
    ls, labels, true = _labelset(tmp_path, features)
    loaded = clip_model.load(str(tiny_clip))
    feats = artifacts.load(features)
    g = torch.Generator().manual_seed(5)
    learner = PromptLearner(loaded.model, feats.classnames, n_ctx=4, csc=True, generator=g)
    cfg = {"n_ctx": 4, "csc": True, "position": "end", "ctx_init": None}
    pf = _prompt_file(tmp_path, features, tiny_clip, learner.ctx.detach(), cfg)
    data = analysis.prepare(ls, pf, str(tiny_clip))
    with torch.no_grad():
        text = plain_text_features(loaded.model, learner)
    text = text / text.norm(dim=1, keepdim=True)
    image = feats.tensors["train.features"].float()
    image = image / image.norm(dim=1, keepdim=True)
    torch.testing.assert_close(data.logits, loaded.logit_scale * image @ text.T)


def test_cli_refuses_a_prompt_for_other_classes(cli, tmp_path, features, tiny_clip):
    ls, _, _ = _labelset(tmp_path, features)
    cfg = {"n_ctx": 4, "csc": False, "position": "end", "ctx_init": None}
    width = clip_model.load(str(tiny_clip)).model.ln_final.weight.shape[0]
    others = [f"other {i}" for i in range(5)]
    pf = _prompt_file(tmp_path, features, tiny_clip, torch.zeros(4, width), cfg, others)
    r = cli("analyze-grad", ls, "--prompt", pf, "--model", tiny_clip)
    assert r.code == 1 and "other classes" in r.stderr and r.stderr.count("\n") == 1


def test_cli_plot_without_matplotlib_is_one_line(cli, tmp_path, features, tiny_clip):
    try:
        import matplotlib  # noqa: F401

        pytest.skip("matplotlib is installed; the missing-dependency path cannot be shown")
    except ImportError:
        pass
    ls, _, _ = _labelset(tmp_path, features)
    r = cli("analyze-grad", ls, "--model", tiny_clip, "--plot", tmp_path / "g.png")
    assert r.code == 1 and "matplotlib" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "g.png").exists()


def test_cli_refuses_another_clip_model(cli, tmp_path, features):
    ls, _, _ = _labelset(tmp_path, features)
    other = clip_model.save_checkpoint(clip_model.build_tiny(seed=1), tmp_path / "other.pt")
    r = cli("analyze-grad", ls, "--model", other)
    assert r.code == 1 and "differs from the one" in r.stderr and r.stderr.count("\n") == 1


def test_epochs_follows_training_and_matches_the_trained_prompt(cli, tmp_path, features):
    labels = tmp_path / "labels.safetensors"
    assert cli("corrupt", features, "--sym", "0.4", "--seed", "1", "--out", labels).code == 0
    r = cli("analyze-grad", labels, "--loss", "ce,dsoftmax", "--epochs", "2", "--json")
    assert r.code == 0, r.stderr
    result = json.loads(r.stdout)
    assert list(result) == ["ce", "dsoftmax"]
    for name in result:
        assert [e["epoch"] for e in result[name]["epochs"]] == [1, 2]
        assert result[name]["epochs"][-1]["noisy"] == result[name]["noisy"]
        assert result[name]["noisy"]["n"] == 40 and result[name]["clean"]["n"] == 60
    assert "per epoch" in r.stderr

    prompt = tmp_path / "ce.safetensors"
    trained = cli(
        "train",
        labels,
        "--loss",
        "ce",
        "--protocol",
        "dspt",
        "--epochs",
        "2",
        "--seed",
        "1",
        "--out",
        prompt,
    )
    assert trained.code == 0, trained.stderr
    at = json.loads(
        cli("analyze-grad", labels, "--loss", "ce", "--prompt", prompt, "--json").stdout
    )
    for group in ("clean", "noisy"):
        for key in ("mean", "median", "max"):
            assert at["ce"][group][key] == pytest.approx(result["ce"][group][key], rel=1e-3)


def test_epochs_and_prompt_together_are_refused(cli, tmp_path, features):
    labels = tmp_path / "labels.safetensors"
    cli("corrupt", features, "--sym", "0.4", "--out", labels)
    r = cli("analyze-grad", labels, "--epochs", "1", "--prompt", labels)
    assert r.code == 2 and "--epochs" in r.stderr and r.stdout == ""
