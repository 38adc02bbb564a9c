"""Purifiers against POT and the written PromptOT recipe; detection metrics; `nlp purify`."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, make_sym_labelset

from nlp_cli import artifacts, detection
from nlp_cli import purify as P
from nlp_cli.errors import UsageError

ot = pytest.importorskip("ot")


def problem(n=300, c=8, d=24, noise=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(c, d, generator=g)
    y = torch.arange(c).repeat(n // c + 1)[:n]
    image = 2 * text[y] / text[y].norm(dim=1, keepdim=True) + noise * torch.randn(n, d, generator=g)
    return image * 3.7, text * 0.5, y  # raw scales: promptot must normalise


def pot(M, reg, method):
    n, c = M.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.from_numpy(ot.sinkhorn(ot.unif(n), ot.unif(c), M.numpy(), reg, method=method))


@pytest.mark.parametrize("reg", [0.5, 0.05, 0.01])
def test_sinkhorn_matches_pot(reg):
    image, text, _ = problem()
    M = P.promptot_cost(image, text, 100.0)
    res = P.sinkhorn(M, reg=reg)
    assert not res.log_domain
    ref = pot(M, reg, "sinkhorn")
    assert torch.allclose(res.coupling, ref, rtol=1e-6, atol=1e-12)
    assert torch.allclose(res.coupling.sum(1), torch.full((300,), 1 / 300, dtype=torch.float64))
    if res.converged:
        assert torch.allclose(res.coupling.sum(0), torch.full((8,), 1 / 8, dtype=torch.float64))


def test_small_reg_goes_log_domain_and_matches_sinkhorn_log():
    image, text, _ = problem(n=200)
    M = P.promptot_cost(image, text, 100.0)
    reg = 0.001
    assert not torch.isfinite(1 / torch.exp(-(M - M.amin()) / reg)).all()  # plain underflows
    res = P.sinkhorn(M, reg=reg)
    assert res.log_domain
    assert torch.isfinite(res.coupling).all()
    ref = pot(M, reg, "sinkhorn_log")
    assert torch.allclose(res.coupling, ref, rtol=1e-5, atol=1e-12)
    assert torch.allclose(res.coupling.sum(1), torch.full((200,), 1 / 200, dtype=torch.float64))
    forced = P.sinkhorn(M, reg=0.05, log_domain=True)
    assert torch.allclose(forced.coupling, pot(M, 0.05, "sinkhorn"), rtol=1e-6, atol=1e-12)


def test_sinkhorn_converges_to_both_marginals_and_batches():
    g = torch.Generator().manual_seed(1)
    M = torch.rand(2, 50, 6, generator=g, dtype=torch.float64)
    a = torch.rand(50, generator=g, dtype=torch.float64) + 0.1
    a = a / a.sum()
    b = torch.full((6,), 1 / 6, dtype=torch.float64)
    res = P.sinkhorn(M, a, b, reg=0.1, stop_thr=1e-10, max_iter=5000)
    assert res.converged
    assert torch.allclose(res.coupling.sum(-1), a.expand(2, -1), atol=1e-9)
    assert torch.allclose(res.coupling.sum(-2), b.expand(2, -1), atol=1e-9)
    single = P.sinkhorn(M[1], a, b, reg=0.1, stop_thr=1e-10, max_iter=5000)
    assert torch.allclose(res.coupling[1], single.coupling, atol=1e-12)
    ref = ot.sinkhorn(a.numpy(), b.numpy(), M[1].numpy(), 0.1, stopThr=1e-10, numItermax=5000)
    assert np.allclose(single.coupling.numpy(), ref, atol=1e-12)


def test_promptot_follows_the_recipe_and_pot_solver_agrees():
    image, text, y = problem(n=240, noise=0.8)
    noisy = y.clone()
    noisy[::3] = (noisy[::3] + 1) % 8
    res = P.promptot(image, text, noisy, 50.0, keep_coupling=True)
    # The written recipe, step by step.
    i = image.double() / image.double().norm(dim=1, keepdim=True)
    t = text.double() / text.double().norm(dim=1, keepdim=True)
    cost = -torch.log_softmax(torch.softmax(50.0 * i @ t.T, dim=1), dim=1)
    plan = pot(cost, 0.01, "sinkhorn")
    assert torch.allclose(res.coupling, plan, rtol=1e-6, atol=1e-12)
    assert torch.equal(res.pseudo_labels, plan.argmax(1))
    assert torch.equal(res.clean, plan.argmax(1) == noisy)
    share = plan.gather(1, noisy[:, None]).squeeze(1) / plan.sum(1)
    assert torch.allclose(res.scores, share.float())
    via_pot = P.purify("ot", image, text, noisy, 50.0, solver="pot")
    assert torch.equal(via_pot.clean, res.clean)
    assert torch.equal(via_pot.pseudo_labels, res.pseudo_labels)
    assert via_pot.info["solver"] == "pot"


def test_purifiers_find_the_flipped_labels():
    image, text, y = problem(n=400, noise=0.3)
    noisy = y.clone()
    noisy[::4] = (noisy[::4] + 3) % 8
    for name in P.list_purifiers():
        res = P.purify(name, image, text, noisy, 100.0)
        det = detection.detection_metrics(res.clean, res.scores, noisy, y)
        assert det["auroc"] > 0.9, name
        assert det["recall"] > 0.8, name
        assert res.clean.dtype == torch.bool and res.scores.dtype == torch.float32


def test_registry_errors():
    image, text, y = problem(n=16)
    with pytest.raises(UsageError, match="did you mean 'gmm'"):
        P.purify("gm", image, text, y, 100.0)
    with pytest.raises(UsageError, match="no option 'reg'"):
        P.purify("zeroshot", image, text, y, 100.0, reg=0.1)


def test_gmm_separates_two_loss_groups():
    g = torch.Generator().manual_seed(0)
    loss = torch.cat([torch.rand(300, generator=g) * 0.3, 3 + torch.rand(100, generator=g)])
    post, info = P.gmm_clean_posterior(loss)
    assert bool((post[:300] > 0.5).all()) and bool((post[300:] < 0.5).all())
    assert abs(info["weights"][int(np.argmin(info["means"]))] - 0.75) < 0.01


def brute_auroc(scores, positive):
    pos, neg = scores[positive], scores[~positive]
    wins = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    return float(wins.mean())


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pairwise_count_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (60,), generator=g).double()
    positive = torch.rand(60, generator=g) < 0.3
    assert detection.auroc(scores, positive) == pytest.approx(brute_auroc(scores, positive))
    assert detection.auroc(scores, torch.zeros(60, dtype=torch.bool)) is None


def test_detection_metrics_counts():
    labels = torch.tensor([0, 1, 1, 2, 0, 1])
    true = torch.tensor([0, 1, 0, 2, 1, 1])  # samples 2 and 4 are noisy
    clean = torch.tensor([True, False, False, True, True, True])  # flags 1 and 2
    scores = torch.tensor([0.9, 0.2, 0.1, 0.8, 0.3, 0.7])
    d = detection.detection_metrics(clean, scores, labels, true)
    assert (d["precision"], d["recall"], d["n_noisy"], d["n_flagged"]) == (0.5, 0.5, 2, 2)
    assert d["f1"] == pytest.approx(0.5)
    assert d["auroc"] == pytest.approx(brute_auroc(-scores.double(), labels != true))


def test_cli_pipe_report_and_cache(cli, features, tmp_path):
    ls = cli("corrupt", features, "--sym", "0.5", "--seed", "1").stdout
    r = cli("purify", "--json", "--report", tmp_path / "r.csv", stdin=ls)
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    part = artifacts.load(summary["path"], "partition")
    lab = artifacts.load(ls.strip(), "labelset")
    for k in ("labels", "true_labels", "index", "transition"):
        assert torch.equal(part.tensors[k], lab.tensors[k])
    det = part.meta["detection"]
    assert det == summary["detection"] and det["n_noisy"] == 50 and det["auroc"] > 0.9
    assert "precision" in r.stderr and "AUROC" in r.stderr
    assert part.meta["purifier"]["reg"] == 0.01 and part.meta["method"] == "ot"
    assert part.meta["upstream"]["labelset"]["digest"] == lab.digest
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert len(rows) == int((~part.tensors["clean"]).sum())
    scores = [float(row["score"]) for row in rows]
    assert scores == sorted(scores)
    feats = artifacts.load(features, "features")
    first = rows[0]
    assert first["path"] == feats.meta["paths"]["train"][int(first["index"])]
    assert (
        first["given_label"]
        == feats.classnames[
            int(lab.tensors["labels"][lab.tensors["index"].tolist().index(int(first["index"]))])
        ]
    )
    again = cli("purify", ls.strip())
    assert again.code == 0 and "cache hit" in again.stderr
    assert again.stdout.strip() == summary["path"]
    for method in ("zeroshot", "gmm"):
        r = cli("purify", ls.strip(), "--method", method)
        assert r.code == 0, r.stderr
        assert artifacts.read_meta(r.stdout.strip())["method"] == method


def test_cli_purify_errors(cli, features, tmp_path, tiny_clip):
    ls = cli("corrupt", features, "--sym", "0.2").stdout.strip()
    for args, needle in [
        (["--method", "otx"], "did you mean 'ot'"),
        (["--reg", "0"], "--reg must be positive"),
        (["--solver", "numpy"], "unknown --solver"),
        (["--method", "gmm", "--reg", "0.1"], "apply to --method ot"),
    ]:
        r = cli("purify", ls, *args)
        assert r.code == 2 and needle in r.stderr and r.stdout == ""
    r = cli("purify", features)
    assert r.code == 1 and "labelset or partition is expected" in r.stderr
    other = tmp_path / "other.pt"
    from nlp_cli import clip_model

    clip_model.save_checkpoint(clip_model.build_tiny(seed=1), other)
    r = cli("purify", ls, "--model", other)
    assert r.code == 1 and "differs" in r.stderr


MINI = SHARED_DATA / "mini" / "eurosat"


@pytest.mark.skipif(not MINI.is_dir(), reason="shared data absent")
def test_done_when_mini_eurosat_corrupt_then_purify(cli, tiny_clip, tmp_path):
    root = tmp_path / "root"
    assert cli("download", "eurosat", "--from", MINI, "--root", root).code == 0
    feats = cli("embed", "eurosat", "--model", tiny_clip, "--root", root)
    assert feats.code == 0, feats.stderr
    ls = cli("corrupt", "--sym", "0.5", "--seed", "1", stdin=feats.stdout)
    assert ls.code == 0, ls.stderr
    r = cli("purify", "--json", stdin=ls.stdout)
    assert r.code == 0, r.stderr
    det = json.loads(r.stdout)["detection"]
    assert det["n_noisy"] == 30 and det["n"] == 60
    assert set(det) >= {"precision", "recall", "f1", "auroc"}


def test_cli_prompt_file_gives_the_prototypes(cli, features, tiny_clip, tmp_path):
    from nlp_cli import clip_model
    from nlp_cli.prompt import PromptLearner

    ls = cli("corrupt", features, "--sym", "0.4").stdout.strip()
    feats = artifacts.load(features)
    loaded = clip_model.load(str(tiny_clip))
    learner = PromptLearner(loaded.model, feats.classnames, ctx_init="a photo of a")
    meta = {
        "model": feats.model,
        "dataset": feats.meta["dataset"],
        "classnames": feats.classnames,
        "prompt": {
            "n_ctx": learner.n_ctx,
            "csc": False,
            "position": "end",
            "ctx_init": "a photo of a",
        },
        "options": {},
        "upstream": {"features": feats.ref()},
        "key": "p",
    }
    pf = artifacts.save(tmp_path / "p.safetensors", "prompt", {"ctx": learner.ctx.detach()}, meta)
    hand = artifacts.load(cli("purify", ls).stdout.strip(), "partition")
    r = cli("purify", ls, "--prompt", pf)
    assert r.code == 0, r.stderr
    got = artifacts.load(r.stdout.strip(), "partition")
    assert got.path != hand.path and got.meta["upstream"]["prompt"][
        "digest"
    ] == artifacts.file_digest(pf)
    assert torch.equal(got.tensors["clean"], hand.tensors["clean"])
    assert torch.allclose(got.tensors["scores"], hand.tensors["scores"], atol=1e-4)
    other = dict(meta, classnames=[*feats.classnames[:-1], "zebra"])
    bad = artifacts.save(
        tmp_path / "bad.safetensors", "prompt", {"ctx": learner.ctx.detach()}, other
    )
    r = cli("purify", ls, "--prompt", bad)
    assert r.code == 1 and "other classes" in r.stderr


def test_curriculum_budget_follows_nlprompts_schedule():
    # begin + (t/T)·(1 − begin) (linear) or begin + (1 − e^(−4t/T))·(1 − begin) (exp) while
    # t < T, then 1; T = 0 (NLPrompt's default) is no curriculum.
    assert P.curriculum_budget(0, 10) == pytest.approx(0.3)
    assert P.curriculum_budget(5, 10) == pytest.approx(0.65)
    assert P.curriculum_budget(9, 10, begin=0.5) == pytest.approx(0.95)
    assert P.curriculum_budget(5, 10, mode="exp") == pytest.approx(0.3 + (1 - np.exp(-2)) * 0.7)
    assert P.curriculum_budget(10, 10) == P.curriculum_budget(0, 0) == 1.0
    with pytest.raises(UsageError, match="unknown curriculum mode 'cosine'"):
        P.curriculum_budget(1, 10, mode="cosine")


@pytest.mark.parametrize("budget", [0.3, 0.55])
def test_budget_keeps_the_rows_most_sure_of_their_argmax_as_candidates(budget):
    image, text, y = problem(n=240, noise=0.8)
    noisy = y.clone()
    noisy[::3] = (noisy[::3] + 1) % 8
    M = P.promptot_cost(image, text, 100.0).numpy()
    a, b = ot.unif(240), ot.unif(8)
    # NLPrompt's call: the class side carries the mass `budget`. Its plan is the balanced one
    # (the scalings absorb the factor); its stopping test can then never pass.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ot.sinkhorn(a, b * budget, M, 0.01, numItermax=200, stopThr=1e-6)
        balanced = ot.sinkhorn(a, b, M, 0.01, numItermax=200, stopThr=0.0)
    assert np.allclose(theirs, balanced, rtol=1e-9, atol=0)
    plan = torch.from_numpy(theirs)
    # Their rule: the int(N·budget) rows with the largest entry. Rows sum to 1/N, so that is
    # the least mass off the largest entry (a sum that does not round every sure row to 1/N).
    k = int(240 * budget)
    largest = plan.max(dim=1).values
    off = plan.sort(dim=1).values[:, :-1].sum(dim=1)
    assert torch.allclose(largest + off, torch.full((240,), 1 / 240, dtype=torch.float64))
    selected = torch.zeros(240, dtype=torch.bool)
    selected[off.argsort(stable=True)[:k]] = True
    threshold = largest[selected].min()
    assert bool((largest[~selected] <= threshold * (1 + 1e-12)).all())
    want = selected & (plan.argmax(dim=1) == noisy)
    res = P.purify("ot", image, text, noisy, 100.0, budget=budget, max_iter=200, stop_thr=0.0)
    assert torch.equal(res.clean, want)
    assert torch.equal(res.pseudo_labels, plan.argmax(dim=1))
    assert (res.info["budget"], res.info["selected"]) == (budget, k)
    assert torch.equal(P.budget_mask(plan, budget), selected)


def test_budget_one_is_no_budget_and_the_range_is_checked():
    image, text, y = problem(n=120)
    full = P.purify("ot", image, text, y, 100.0, budget=1.0)
    plain = P.purify("ot", image, text, y, 100.0)
    assert torch.equal(full.clean, plain.clean) and full.info["selected"] == 120
    assert "budget" not in plain.info
    for bad in (0.0, 1.5):
        with pytest.raises(UsageError, match="budget must lie in"):
            P.purify("ot", image, text, y, 100.0, budget=bad)


def test_a_partition_from_another_algorithm_version_is_recomputed(features, tmp_path, monkeypatch):
    from nlp_cli import stages

    ls = make_sym_labelset(features, tmp_path / "ls.safetensors")
    target = tmp_path / "part.safetensors"
    current = P.ALGORITHM_VERSION
    monkeypatch.setattr(P, "ALGORITHM_VERSION", current + 1)
    newer = stages.make_partition(ls, out=target)
    assert not newer.cache_hit
    assert artifacts.read_meta(target)["purifier"]["algorithm_version"] == current + 1
    monkeypatch.setattr(P, "ALGORITHM_VERSION", current)
    again = stages.make_partition(ls, out=target)
    assert not again.cache_hit
    assert artifacts.read_meta(target)["purifier"]["algorithm_version"] == current
    assert stages.make_partition(ls, out=target).cache_hit  # the same version is served
    # A partition as an nlp without versions wrote it: its key held only the label set and the
    # options, and its verdict (all clean here) is not what the current purifier gives.
    part = artifacts.load(target, "partition")
    old_key = artifacts.cache_key(
        "partition", {"labelset": artifacts.load(ls).digest}, {"method": "ot"}
    )
    purifier = {k: v for k, v in part.meta["purifier"].items() if k != "algorithm_version"}
    meta = {**part.meta, "key": old_key, "purifier": purifier}
    tensors = {**part.tensors, "clean": torch.ones_like(part.tensors["clean"])}
    artifacts.save(target, "partition", tensors, meta)
    recomputed = stages.make_partition(ls, out=target)
    assert not recomputed.cache_hit
    fresh = artifacts.load(target, "partition")
    assert torch.equal(fresh.tensors["clean"], part.tensors["clean"])
    assert not bool(fresh.tensors["clean"].all())
    assert fresh.meta["purifier"]["algorithm_version"] == current
