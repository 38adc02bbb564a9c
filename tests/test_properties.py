"""Properties that must hold for any input (hypothesis): losses stay finite, DSPT's bounds hold."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
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
    per = losses.per_sample_loss(name, z, y, clean)
    shifted = losses.per_sample_loss(name, z.detach() + shift, y, clean)
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
