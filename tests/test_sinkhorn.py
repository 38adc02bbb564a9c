"""The log-domain Sinkhorn and PromptOT's solver choice against POT (the independent reference).

POT's `sinkhorn_log` runs here on torch tensors (its torch backend: the same iterations as on
NumPy arrays, several times faster); `solver="pot"` itself runs POT on NumPy.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from nlp_cli import purify as P
from nlp_cli.errors import NlpError

ot = pytest.importorskip("ot")


def clip_like(n=2000, c=101, d=512, seed=0):
    """Raw features with CLIP-like cosine similarities: about 0.2 to every class prompt and 0.09
    more to the right one (zero-shot accuracy about 55 % at C = 101)."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    own = torch.nn.functional.normalize(torch.randn(c, d, generator=g), dim=1)
    y = torch.arange(c).repeat(n // c + 1)[:n]
    y = y[torch.randperm(n, generator=g)]
    noise = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    image = 0.33 * shared + 0.11 * own[y] + 0.94 * noise
    return 3.0 * image, 0.6 * shared + 0.8 * own, y


def pot_log(M, reg, max_iter=1000, stop_thr=1e-6):
    n, c = M.shape
    a = torch.full((n,), 1 / n, dtype=torch.float64)
    b = torch.full((c,), 1 / c, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan, log = ot.bregman.sinkhorn_log(
            a, b, M, reg, numItermax=max_iter, stopThr=stop_thr, log=True
        )
    return plan, int(log["niter"]) + 1, float(log["err"][-1])


def assert_matches_pot(res, M, reg):
    ref, iterations, error = pot_log(M, reg)
    assert res.iterations == iterations
    assert res.converged == (error < 1e-6)
    assert res.error == pytest.approx(error, rel=1e-6, abs=1e-12)
    assert torch.isfinite(res.coupling).all()
    # POT's stopping rule measures the L2 norm of the column marginal's error.
    assert float((res.coupling.sum(0) - ref.sum(0)).norm()) < 1e-9
    assert float((res.coupling - ref).norm()) < 1e-9 * float(ref.norm())
    top2 = ref.topk(2, dim=1).values
    tie = (top2[:, 0] - top2[:, 1]) <= 1e-9 * top2[:, 0]
    assert int(tie.sum()) <= 2
    same = res.coupling.argmax(1) == ref.argmax(1)
    assert bool(same[~tie].all())


@pytest.mark.parametrize("reg", [0.01, 0.001, 0.0005])
def test_log_domain_matches_pot_sinkhorn_log(reg):
    image, text, _ = clip_like(n=300)
    M = P.promptot_cost(image, text, 100.0)
    res = P.sinkhorn(M, reg=reg, log_domain=True)
    assert res.log_domain and not res.fell_back
    assert_matches_pot(res, M, reg)


@pytest.mark.slow
@pytest.mark.parametrize("reg", [0.01, 0.001, 0.0005])
def test_auto_rule_matches_pot_sinkhorn_log_at_2000_x_101(reg):
    image, text, y = clip_like()
    M = P.promptot_cost(image, text, 100.0)
    res = P.sinkhorn(M, reg=reg)
    assert res.log_domain == (reg < 0.01)
    assert_matches_pot(res, M, reg)
    # Not a degenerate partition: as many right pseudo-labels as zero-shot gets.
    zero_shot = float((P.class_logits(image, text, 1.0).argmax(1) == y).double().mean())
    assert float((res.coupling.argmax(1) == y).double().mean()) > zero_shot - 0.02


@pytest.mark.parametrize(("n", "c", "scale", "reg", "stop"), [(200, 10, 20.0, 0.01, 311)])
def test_log_domain_stops_where_pot_does(n, c, scale, reg, stop):
    image, text, _ = clip_like(n=n, c=c)
    M = P.promptot_cost(image, text, scale)
    res = P.sinkhorn(M, reg=reg, log_domain=True)
    assert res.converged and res.iterations == stop
    assert_matches_pot(res, M, reg)


def test_log_domain_batches_and_general_marginals():
    g = torch.Generator().manual_seed(3)
    M = torch.rand(2, 60, 7, generator=g, dtype=torch.float64)
    a = torch.rand(60, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(7, generator=g, dtype=torch.float64) + 0.1
    a, b = a / a.sum(), b / b.sum()
    # stop_thr 0: a batch stops on its worst member, so equal iteration counts need no stop.
    res = P.sinkhorn(M, a, b, reg=0.002, max_iter=300, stop_thr=0.0, log_domain=True)
    for k in range(2):
        one = P.sinkhorn(M[k], a, b, reg=0.002, max_iter=300, stop_thr=0.0, log_domain=True)
        torch.testing.assert_close(res.coupling[k], one.coupling, rtol=1e-9, atol=1e-15)
        ref = ot.bregman.sinkhorn_log(a, b, M[k], 0.002, numItermax=300, stopThr=0.0, warn=False)
        torch.testing.assert_close(one.coupling, ref, rtol=1e-7, atol=1e-15)
    torch.testing.assert_close(res.coupling.sum(-1), a.expand(2, -1), rtol=1e-12, atol=0)


def test_a_zero_marginal_entry_takes_the_exact_half_steps():
    g = torch.Generator().manual_seed(4)
    M = torch.rand(30, 5, generator=g, dtype=torch.float64)
    a = torch.full((30,), 1 / 29, dtype=torch.float64)
    a[7] = 0.0
    b = torch.full((5,), 0.2, dtype=torch.float64)
    res = P.sinkhorn(M, a, b, reg=0.01, log_domain=True)
    assert torch.isfinite(res.coupling).all() and float(res.coupling[7].max()) < 1e-300
    ref = ot.bregman.sinkhorn_log(a, b, M, 0.01, numItermax=1000, stopThr=1e-6)
    torch.testing.assert_close(res.coupling, ref, rtol=1e-7, atol=1e-15)


def test_scaling_breakdown_falls_back_to_the_log_domain(monkeypatch):
    image, text, _ = clip_like(n=300)
    M = P.promptot_cost(image, text, 100.0)
    monkeypatch.setattr(P, "LOG_DOMAIN_SPAN", 1e9)  # the a-priori rule now says "scaling"
    res = P.sinkhorn(M, reg=0.0005)
    assert res.log_domain and res.fell_back
    assert_matches_pot(res, M, 0.0005)
    forced = P.sinkhorn(M, reg=0.0005, log_domain=False)  # POT's behaviour: last finite iterate
    assert not forced.log_domain and not forced.converged


def test_auto_rule_keeps_the_scaling_form_where_it_is_safe():
    image, text, _ = clip_like(n=300)
    M = P.promptot_cost(image, text, 100.0)
    assert P.cost_span(M, 1.0) <= 1.0  # the double softmax bounds the cost's spread by 1
    assert not P.needs_log_domain(M, 0.002) and P.needs_log_domain(M, 0.001)
    res = P.sinkhorn(M, reg=0.002)
    assert not res.log_domain
    assert_matches_pot(res, M, 0.002)


@pytest.mark.parametrize(
    ("reg", "method"), [(0.01, "sinkhorn"), (0.004, "sinkhorn"), (0.001, "sinkhorn_log")]
)
def test_pot_solver_runs_the_matching_method(reg, method):
    image, text, y = clip_like(n=250)
    labels = y.clone()
    labels[::4] = (labels[::4] + 1) % 101
    ours = P.purify("ot", image, text, labels, 100.0, reg=reg)
    theirs = P.purify("ot", image, text, labels, 100.0, reg=reg, solver="pot")
    assert theirs.info["pot_method"] == method and "pot_method" not in ours.info
    assert ours.info["log_domain"] == theirs.info["log_domain"] == (method == "sinkhorn_log")
    assert ours.info["iterations"] == theirs.info["iterations"]
    assert torch.equal(ours.pseudo_labels, theirs.pseudo_labels)
    assert torch.equal(ours.clean, theirs.clean)
    assert ours.info["cost_span"] == pytest.approx(
        P.cost_span(P.promptot_cost(image, text, 100), reg)
    )


def test_a_plan_without_mass_or_with_nan_never_becomes_a_partition(monkeypatch):
    image, text, y = clip_like(n=200)
    M = P.promptot_cost(image, text, 100.0)
    # NLPrompt's own call at REG_E = 0.001: plain ot.sinkhorn on the raw cost. exp(−M/reg)
    # is all zeros, POT stops at its first iteration and the plan is empty.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = torch.from_numpy(ot.sinkhorn(ot.unif(200), ot.unif(101), M.numpy(), 0.001))
    assert float(reference.abs().sum()) == 0.0
    with pytest.raises(NlpError, match=r"reg=0.001 .* 200 of 200 rows .* hint:"):
        P.check_plan(reference, 0.001, "sinkhorn")
    nan = P.sinkhorn(M, reg=0.001).coupling.clone()
    nan[3, 5] = float("nan")
    with pytest.raises(NlpError, match=r"reg=0.001 \(torch\): .* 1 NaN/inf entries.* hint:"):
        P.check_plan(nan, 0.001, "torch")
    P.check_plan(P.sinkhorn(M, reg=0.0005).coupling, 0.0005, "torch")
    real = P._promptot_solve

    def broken(*args, **kwargs):  # a solver that lets one NaN potential through
        solved, span = real(*args, **kwargs)
        solved.u[3] = float("nan")
        return solved, span

    monkeypatch.setattr(P, "_promptot_solve", broken)
    with pytest.raises(NlpError, match=r"^PromptOT at reg=0.001 \(torch\): the transport plan"):
        P.purify("ot", image, text, y, 100.0, reg=0.001)


def pot_potentials(M, reg, log_domain):
    """POT's u and v on cost M: sinkhorn_log's log_u/log_v, or sinkhorn_knopp's scalings on
    the column-shifted cost (the K = exp(−(M − column min)/reg) that our scaling form uses)."""
    n, c = M.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if log_domain:
            a = torch.full((n,), 1 / n, dtype=torch.float64)
            b = torch.full((c,), 1 / c, dtype=torch.float64)
            _, log = ot.bregman.sinkhorn_log(a, b, M, reg, numItermax=1000, stopThr=1e-6, log=True)
            return log["log_u"], log["log_v"]
        shifted = (M - M.amin(dim=0)).numpy()
        _, log = ot.sinkhorn(ot.unif(n), ot.unif(c), shifted, reg, stopThr=1e-6, log=True)
        return torch.from_numpy(log["u"]), torch.from_numpy(log["v"])


@pytest.mark.parametrize("reg", [0.01, 0.001])
def test_potentials_match_pots(reg):
    image, text, _ = clip_like(n=300)
    M = P.promptot_cost(image, text, 100.0)
    res = P.sinkhorn(M, reg=reg)
    assert res.log_domain == (reg < 0.002)
    u, v = pot_potentials(M, reg, res.log_domain)
    # Log domain: potentials of size up to ~4000 (f/reg), equal to ~1e-10 absolute.
    tol = dict(rtol=1e-9, atol=1e-9) if res.log_domain else dict(rtol=1e-11, atol=0.0)
    torch.testing.assert_close(res.u, u, **tol)
    torch.testing.assert_close(res.v, v, **tol)


@pytest.mark.parametrize(("reg", "log_domain"), [(0.01, False), (0.001, True)])
def test_promptot_streams_chunks_and_blocks_to_the_written_recipe_and_pot(
    monkeypatch, reg, log_domain
):
    # Chunks of 64 feature rows and blocks of 64 samples: several of both, ragged last ones.
    monkeypatch.setattr(P, "_CHUNK", 64)
    monkeypatch.setattr(P, "_BLOCK", 64 * 101)
    image, text, y = clip_like(n=300)
    labels = y.clone()
    labels[::3] = (labels[::3] + 1) % 101
    i = image.double() / image.double().norm(dim=1, keepdim=True)
    t = text.double() / text.double().norm(dim=1, keepdim=True)
    cost = -torch.log_softmax(torch.softmax(100.0 * i @ t.T, dim=1), dim=1)
    torch.testing.assert_close(P.promptot_cost(image, text, 100.0), cost, rtol=1e-14, atol=0.0)
    res = P.promptot(image, text, labels, 100.0, reg=reg, keep_coupling=True, budget=0.5)
    assert res.info["log_domain"] == log_domain
    if log_domain:
        ref, _, _ = pot_log(cost, reg)
    else:
        ref = torch.from_numpy(ot.sinkhorn(ot.unif(300), ot.unif(101), cost.numpy(), reg))
    torch.testing.assert_close(res.coupling, ref, rtol=1e-7, atol=1e-15)
    assert torch.equal(res.pseudo_labels, ref.argmax(1))
    assert torch.equal(res.clean, (ref.argmax(1) == labels) & P.budget_mask(ref, 0.5))
    share = ref.gather(1, labels[:, None]).squeeze(1) / ref.sum(1)
    torch.testing.assert_close(res.scores, share.float())
    streamed = P.promptot(image, text, labels, 100.0, reg=reg)
    assert streamed.coupling is None
    assert torch.equal(streamed.pseudo_labels, res.pseudo_labels)
    assert torch.equal(streamed.scores, res.scores)


def test_promptot_falls_back_to_the_log_domain_and_takes_float16_features(monkeypatch):
    image, text, y = clip_like(n=300)
    image16 = image.half()
    M = P.promptot_cost(image16.float(), text, 100.0)
    assert torch.equal(P.promptot_cost(image16, text, 100.0), M)  # upcast per chunk, exactly
    monkeypatch.setattr(P, "LOG_DOMAIN_SPAN", 1e9)  # the a-priori rule now says "scaling"
    res = P.promptot(image16, text, y, 100.0, reg=0.0005, keep_coupling=True)
    assert res.info["log_domain"] and res.info["log_domain_fallback"]
    ref, iterations, _ = pot_log(M, 0.0005)
    assert res.info["iterations"] == iterations
    torch.testing.assert_close(res.coupling, ref, rtol=1e-7, atol=1e-15)
    top2 = ref.topk(2, dim=1).values
    tie = (top2[:, 0] - top2[:, 1]) <= 1e-9 * top2[:, 0]  # one row here splits its mass evenly
    assert int(tie.sum()) <= 2
    assert bool((res.pseudo_labels == ref.argmax(1))[~tie].all())
