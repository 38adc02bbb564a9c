"""Properties that must hold for any input (hypothesis): losses stay finite, DSPT's bounds hold."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nlp_cli import losses

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Losses that depend on z only through softmax(z): adding a constant to every logit changes
# nothing, so their gradient sums to zero over the classes.
SHIFT_INVARIANT = ["ce", "mae", "gce", "dsoftmax", "ls", "nce", "bootstrap", "select", "nlprompt"]

EXTREME = [1e4, -1e4, 0.0, 1e-30, 88.0, -88.0, 709.0, 3.4e4]


@st.composite
def batches(draw, max_classes: int = 12, extreme: bool = True):
    """(logits [B, C], labels [B], clean [B]) with rows that are random, equal or extreme."""
    c = draw(st.integers(2, max_classes))
    b = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    rows = []
    for _ in range(b):
        kind = draw(st.sampled_from(["random", "equal", "extreme"] if extreme else ["random"]))
        if kind == "equal":
            rows.append([draw(st.sampled_from([0.0, 1e4, -1e4, 3.0]))] * c)
        elif kind == "extreme":
            rows.append([draw(st.sampled_from(EXTREME)) for _ in range(c)])
        else:
            bound = 1e4 if extreme else 50.0
            rows.append([draw(st.floats(-bound, bound, allow_nan=False)) for _ in range(c)])
    labels = [draw(st.integers(0, c - 1)) for _ in range(b)]
    clean = [draw(st.booleans()) for _ in range(b)]
    return (
        torch.tensor(rows, dtype=dtype),
        torch.tensor(labels, dtype=torch.long),
        torch.tensor(clean),
    )


@pytest.mark.parametrize("name", losses.list_losses())
@SETTINGS
@given(batch=batches())
def test_every_loss_and_its_gradient_are_finite_and_nonnegative(name, batch):
    z, y, clean = batch
    z = z.clone().requires_grad_(True)
    per = losses.per_sample_loss(name, z, y, clean)
    total = losses.batch_loss(name, z, y, clean)
    (grad,) = torch.autograd.grad(total, z)
    assert torch.isfinite(per).all() and torch.isfinite(total)
    assert torch.isfinite(grad).all()
    assert (per >= -1e-6).all()


@pytest.mark.parametrize("name", SHIFT_INVARIANT)
@SETTINGS
@given(batch=batches(extreme=False), shift=st.floats(-30, 30))
def test_softmax_losses_ignore_a_common_shift(name, batch, shift):
    z, y, clean = batch
    z = z.double().requires_grad_(True)
    moved = z.detach() + shift
    # adding the shift rounds the inputs themselves; a row whose argmax that moves is not the
    # loss's doing (select keeps samples by argmax)
    assume(torch.equal(z.detach().argmax(1), moved.argmax(1)))
    per = losses.per_sample_loss(name, z, y, clean)
    shifted = losses.per_sample_loss(name, moved, y, clean)
    torch.testing.assert_close(per.detach(), shifted, rtol=1e-9, atol=1e-9)
    (grad,) = torch.autograd.grad(per.sum(), z)
    assert grad.sum(dim=1).abs().max() < 1e-9


@SETTINGS
@given(batch=batches(max_classes=200))
def test_dsoftmax_stays_within_its_proven_bounds(batch):
    """DSPT: log(1 + (C−1)/e) ≤ L ≤ log(e + C − 1) for every logit vector."""
    z, y, _ = batch
    c = z.shape[1]
    lo, hi = math.log(1 + (c - 1) / math.e), math.log(math.e + c - 1)
    value = losses.per_sample_loss("dsoftmax", z.double(), y)
    assert (value >= lo - 1e-9).all() and (value <= hi + 1e-9).all(), (value, lo, hi)


@SETTINGS
@given(batch=batches(max_classes=50))
def test_dsoftmax_gradient_is_the_papers_and_its_mass_at_most_one(batch):
    """∂L/∂z_i = p_i[(q_i − δ_iy) + (p_y − Σ_j p_j q_j)], q = softmax(p); Σ_i |∂L/∂z_i| ≤ 1.

    The mass bound: ∂L/∂z = J (q − δ_y) with J = diag(p) − ppᵀ, whose columns have L1 norm
    2p_j(1 − p_j) ≤ 1/2, and ‖q − δ_y‖₁ = 2(1 − q_y) < 2 (CE's mass can reach 2).
    """
    z, y, _ = batch
    z = z.double().requires_grad_(True)
    (grad,) = torch.autograd.grad(losses.per_sample_loss("dsoftmax", z, y).sum(), z)
    p = torch.softmax(z.detach(), dim=1)
    q = torch.softmax(p, dim=1)
    delta = torch.nn.functional.one_hot(y, z.shape[1]).double()
    py = p.gather(1, y[:, None])
    want = p * ((q - delta) + (py - (p * q).sum(1, keepdim=True)))
    torch.testing.assert_close(grad, want, rtol=1e-7, atol=1e-12)
    assert (grad.abs().sum(dim=1) <= 1 + 1e-9).all()


# --- noise models (SPEC §3) and PromptOT's couplings -------------------------------------------


@st.composite
def label_sets(draw):
    """(labels [N], C): every class present at least `min_per_class` times."""
    c = draw(st.integers(2, 12))
    per = draw(st.integers(1, 8))
    extra = draw(st.lists(st.integers(0, c - 1), max_size=60))
    labels = [k for k in range(c) for _ in range(per)] + extra
    perm = draw(st.permutations(range(len(labels))))
    return torch.tensor([labels[i] for i in perm], dtype=torch.long), c


@pytest.mark.parametrize("kind", ["sym", "pair"])
@SETTINGS
@given(data=label_sets(), rate=st.floats(0.0, 0.999), seed=st.integers(0, 2**31 - 1))
def test_noise_flips_exactly_round_rn_and_keeps_a_clean_sample_per_class(kind, data, rate, seed):
    from nlp_cli import noise
    from nlp_cli.errors import UsageError

    labels, c = data
    n = len(labels)
    try:
        index, result, _ = noise.corrupt(kind, labels, c, seed=seed, rate=rate)
    except UsageError as e:
        assert "leaves no clean sample" in str(e)
        # Class quotas are floor(r·n_c) or one more: only a class that one more would empty
        # can be the reason.
        counts = torch.bincount(labels, minlength=c).double()
        assert ((rate * counts).floor() + 1 >= counts).any()
        return
    noisy = result.labels
    assert torch.equal(index, torch.arange(n))
    changed = noisy != labels
    assert int(changed.sum()) == round(rate * n)
    assert ((noisy >= 0) & (noisy < c)).all()
    if kind == "pair":
        assert torch.equal(noisy[changed], (labels[changed] + 1) % c)
    counts = torch.bincount(labels, minlength=c)
    flipped = torch.bincount(labels[changed], minlength=c)
    floor = (rate * counts.double()).floor().long()
    assert ((flipped == floor) | (flipped == floor + 1)).all()  # every class near rate r
    clean_left = torch.bincount(labels[~changed], minlength=c)
    assert (clean_left[counts > 0] >= 1).all()
    again = noise.corrupt(kind, labels, c, seed=seed, rate=rate)[1].labels
    assert torch.equal(noisy, again)  # same seed, same labels, bit for bit


@SETTINGS
@given(data=label_sets(), seed=st.integers(0, 2**31 - 1))
def test_transition_matrix_rows_are_distributions(data, seed):
    from nlp_cli import noise

    labels, c = data
    noisy = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    t = noise.transition_matrix(labels, noisy, c)
    assert t.shape == (c, c) and (t >= 0).all()
    torch.testing.assert_close(t.sum(dim=1), torch.ones(c, dtype=torch.float64))


@st.composite
def ot_problems(draw):
    n = draw(st.integers(1, 60))
    c = draw(st.integers(2, 10))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1.0, 20.0, 100.0]))
    g = torch.Generator().manual_seed(seed)
    image, text = torch.randn(n, 16, generator=g), torch.randn(c, 16, generator=g)
    return image, text, scale


@SETTINGS
@given(
    problem=ot_problems(),
    reg=st.sampled_from([1e-3, 1e-2, 0.1, 1.0]),
    log=st.sampled_from([None, True, False]),
)
def test_sinkhorn_coupling_keeps_its_marginals(problem, reg, log):
    """Rows always carry exactly 1/N (the last half-step fits them); columns carry 1/C to the
    stopping threshold whenever the solver reports convergence (always at reg = 1 here: the
    cost's spread is below 1, so the kernel is well conditioned).
    PromptOT's reg = 0.01 may stop at max_iter, as POT does: the plan is still a valid one."""
    from nlp_cli import purify

    image, text, scale = problem
    m = purify.promptot_cost(image, text, scale)
    n, c = m.shape
    if log is False and reg < 0.01:
        log = None  # the scaling solver underflows there; None picks the log domain
    res = purify.sinkhorn(m, reg=reg, log_domain=log)
    plan = res.coupling
    assert torch.isfinite(plan).all() and (plan >= 0).all()
    torch.testing.assert_close(plan.sum(dim=1), torch.full((n,), 1 / n, dtype=plan.dtype))
    col_err = float((plan.sum(dim=0) - 1 / c).norm())
    if reg >= 1.0:
        assert res.converged
    if res.converged:
        assert col_err < 1e-6 * 1.01
