"""Every loss against its written formula (float64 references), plus the DSPT theorems."""

from __future__ import annotations

import math

import pytest
import torch

from nlp_cli import losses
from nlp_cli.errors import UsageError

ALL = [
    "ce",
    "mae",
    "gce",
    "dsoftmax",
    "ls",
    "logitnorm",
    "logitclip",
    "nce",
    "bootstrap",
    "bootstrap-hard",
    "logitclip-code",
    "square",
    "select",
    "nlprompt",
]


# Straightforward float64 references, written from SPEC §2 without the library's tricks.
def _softmax(z):
    e = torch.exp(z - z.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def _onehot(y, c):
    return torch.eye(c, dtype=torch.float64)[y]


def _ce_ref(z, y):
    return -torch.log(_softmax(z)[torch.arange(len(y)), y])


def _py(z, y):
    return _softmax(z)[torch.arange(len(y)), y]


def reference(name, z, y, clean=None, **k):
    c = z.shape[1]
    if name == "ce":
        return _ce_ref(z, y)
    if name == "mae":
        return k.get("scale", 1.0) * (1 - _py(z, y))
    if name == "gce":
        # the GCE reference code: softmax, clamp(min=1e-7, max=1), then the power
        q = k.get("q", 0.7)
        return (1 - _py(z, y).clamp(1e-7, 1.0) ** q) / q
    if name == "dsoftmax":
        return _ce_ref(_softmax(z), y)
    if name == "ls":
        eps = k.get("eps", 0.2)
        t = (1 - eps) * _onehot(y, c) + eps / c
        return -(t * torch.log(_softmax(z))).sum(1)
    if name == "logitnorm":
        tau = k.get("tau", 1.0)
        return _ce_ref(z / (tau * (z.norm(dim=1, keepdim=True) + 1e-7)), y)
    if name == "logitclip":
        tau = k.get("tau", 10.0)
        n = z.norm(dim=1, keepdim=True)
        return _ce_ref(torch.where(n > tau, z * tau / n, z), y)
    if name == "nce":
        return -torch.log(_py(z, y)) / -torch.log(_softmax(z)).sum(1)
    if name == "bootstrap":
        beta = k.get("beta", 0.95)
        p = _softmax(z)
        t = beta * _onehot(y, c) + (1 - beta) * p.detach()
        return -(t * torch.log(p)).sum(1)
    if name == "bootstrap-hard":
        beta = k.get("beta", 0.8)
        p = _softmax(z)
        t = beta * _onehot(y, c) + (1 - beta) * _onehot(p.argmax(1), c)
        return -(t * torch.log(p)).sum(1)
    if name == "logitclip-code":
        # hongxin001/LogitClip algorithms/clip.py, transcribed: delta = 1/temp,
        # norms = ‖z‖ + 1e-7, clip where norms > temp, z/norms·delta there
        temp = k.get("temp", 1.0)
        norms = z.norm(dim=1, keepdim=True) + 1e-7
        return _ce_ref(torch.where(norms > temp, z / norms * (1 / temp), z), y)
    if name == "square":
        s = k.get("scale", 1.0)
        u = s * z / (z.norm(dim=1, keepdim=True) + 1e-7)
        return ((u - _onehot(y, c)) ** 2).sum(1)
    if name == "select":
        keep = (z.argmax(1) == y).double()
        return _ce_ref(z, y) * keep
    if name == "nlprompt":
        return torch.where(clean, _ce_ref(z, y), 1 - _py(z, y))
    raise AssertionError(name)


def _batch(b=12, c=7, scale=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(b, c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (b,), generator=g)
    clean = torch.rand(b, generator=g) > 0.5
    return z, y, clean


def test_registry_has_all_fourteen():
    assert losses.list_losses() == ALL
    for name in ALL:
        spec = losses.get(name)
        assert spec.name == name and spec.doc and callable(spec.fn)
        assert spec.needs_partition == (name == "nlprompt")


def test_documented_defaults():
    assert losses.get("gce").defaults == {"q": 0.7}
    assert losses.get("ls").defaults == {"eps": 0.2}
    assert losses.get("logitnorm").defaults == {"tau": 1.0}
    assert losses.get("logitclip").defaults == {"tau": 10.0}
    assert losses.get("bootstrap").defaults == {"beta": 0.95}
    assert losses.get("mae").defaults == {"scale": 1.0}
    assert losses.get("ce").defaults == {}


def test_unknown_loss_suggests_a_name():
    with pytest.raises(UsageError, match="did you mean 'dsoftmax'"):
        losses.get("dsoftmx")


def test_unknown_and_bad_knobs_are_usage_errors():
    z, y, _ = _batch()
    with pytest.raises(UsageError, match="no knob 'q'"):
        losses.per_sample_loss("ce", z, y, q=0.5)
    with pytest.raises(UsageError, match=r"q must lie in \(0, 1\]"):
        losses.per_sample_loss("gce", z, y, q=0.0)
    with pytest.raises(UsageError, match="tau"):
        losses.batch_loss("logitclip", z, y, tau=-1)


def test_nlprompt_needs_a_partition():
    z, y, _ = _batch()
    with pytest.raises(UsageError, match="partition"):
        losses.batch_loss("nlprompt", z, y)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("c", [2, 7, 101])
def test_value_and_gradient_match_the_formula(name, c):
    z, y, clean = _batch(c=c, seed=c)
    # Spread the norms so logitclip sees rows on both sides of τ.
    z = z * torch.linspace(0.2, 3.0, len(z), dtype=torch.float64)[:, None]
    z1 = z.clone().requires_grad_(True)
    z2 = z.clone().requires_grad_(True)
    got = losses.per_sample_loss(name, z1, y, clean)
    want = reference(name, z2, y, clean)
    assert got.shape == (len(y),) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    w = torch.rand(len(y), dtype=torch.float64)
    (g1,) = torch.autograd.grad((got * w).sum(), z1)
    (g2,) = torch.autograd.grad((want * w).sum(), z2)
    torch.testing.assert_close(g1, g2, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize(
    "name,knobs",
    [
        ("mae", {"scale": 2.0}),
        ("gce", {"q": 0.3}),
        ("ls", {"eps": 0.5}),
        ("logitnorm", {"tau": 0.04}),
        ("logitclip", {"tau": 2.0}),
        ("bootstrap", {"beta": 0.8}),
        ("square", {"scale": 3.0}),
    ],
)
def test_knobs_override_defaults(name, knobs):
    z, y, _ = _batch(c=10)
    got = losses.per_sample_loss(name, z, y, **knobs)
    torch.testing.assert_close(got, reference(name, z, y, **knobs), rtol=1e-9, atol=1e-9)
    assert not torch.allclose(got, losses.per_sample_loss(name, z, y))


def test_mae_scale_two_is_the_l1_form():
    z, y, _ = _batch(c=9)
    l1 = (_onehot(y, 9) - _softmax(z)).abs().sum(1)
    torch.testing.assert_close(losses.per_sample_loss("mae", z, y, scale=2.0), l1)


def test_gce_with_q_one_is_mae():
    z, y, _ = _batch()
    torch.testing.assert_close(
        losses.per_sample_loss("gce", z, y, q=1.0), losses.per_sample_loss("mae", z, y)
    )


def test_bootstrap_gradient_treats_p_as_a_constant():
    z, y, _ = _batch(c=5)
    z = z.requires_grad_(True)
    (g,) = torch.autograd.grad(losses.per_sample_loss("bootstrap", z, y, beta=0.8).sum(), z)
    torch.testing.assert_close(g, 0.8 * (_softmax(z.detach()) - _onehot(y, 5)))


@pytest.mark.parametrize("name", [n for n in ALL if n != "select"])
def test_batch_loss_is_the_mean(name):
    z, y, clean = _batch()
    torch.testing.assert_close(
        losses.batch_loss(name, z, y, clean), reference(name, z, y, clean).mean()
    )


def test_select_drops_disagreeing_samples_and_averages_the_kept():
    z = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    y = torch.tensor([0, 0, 2, 0])
    kept = torch.tensor([True, False, True, True])
    per = losses.per_sample_loss("select", z, y)
    ce = losses.per_sample_loss("ce", z, y)
    assert per[1] == 0
    torch.testing.assert_close(per[kept], ce[kept])
    torch.testing.assert_close(losses.batch_loss("select", z, y), ce[kept].mean())


def test_select_with_nothing_kept_is_zero_with_zero_gradient():
    z = torch.tensor([[0.0, 3.0], [0.0, 1.0]], requires_grad=True)
    y = torch.tensor([0, 0])
    loss = losses.batch_loss("select", z, y)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_nlprompt_is_ce_on_clean_and_one_minus_py_on_noisy():
    z, y, _ = _batch(b=6)
    clean = torch.tensor([True, True, False, False, True, False])
    got = losses.batch_loss("nlprompt", z, y, clean)
    want = (_ce_ref(z, y)[clean].sum() + (1 - _py(z, y))[~clean].sum()) / 6
    torch.testing.assert_close(got, want)


def test_half_precision_logits_are_computed_in_float32():
    z, y, _ = _batch()
    out = losses.per_sample_loss("dsoftmax", z.half(), y)
    assert out.dtype == torch.float32


def _extreme_batches():
    g = torch.Generator().manual_seed(3)
    for c in (2, 5, 101):
        signs = torch.randint(0, 2, (6, c), generator=g).float() * 2 - 1
        yield c, 1e4 * signs
        yield c, torch.full((6, c), 7.0)
        yield c, torch.zeros(6, c)
        big = torch.zeros(6, c)
        big[:, 0] = 1e4
        yield c, big
        yield c, -big


@pytest.mark.parametrize("name", ALL)
def test_extreme_logits_give_finite_loss_and_gradient(name):
    for c, z in _extreme_batches():
        b = z.shape[0]
        y = torch.arange(b) % c
        clean = torch.arange(b) % 2 == 0
        z = z.clone().requires_grad_(True)
        per = losses.per_sample_loss(name, z, y, clean)
        loss = losses.batch_loss(name, z, y, clean)
        (g,) = torch.autograd.grad(loss, z)
        assert torch.isfinite(per).all(), (name, c, z)
        assert torch.isfinite(loss), (name, c)
        assert torch.isfinite(g).all(), (name, c)


# DSPT (arXiv 2605.00591): gradient formula, suppression and bounds of the double softmax.
def _dspt_gradient(z, y):
    p = _softmax(z)
    q = _softmax(p)
    delta = _onehot(y, z.shape[1])
    py = p[torch.arange(len(y)), y][:, None]
    return p * ((q - delta) + (py - (p * q).sum(1, keepdim=True)))


@pytest.mark.parametrize("c", [2, 3, 10, 101])
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_dsoftmax_gradient_is_the_paper_formula(c, scale):
    z, y, _ = _batch(b=16, c=c, scale=scale, seed=c)
    z = z.requires_grad_(True)
    (g,) = torch.autograd.grad(losses.per_sample_loss("dsoftmax", z, y).sum(), z)
    torch.testing.assert_close(g, _dspt_gradient(z.detach(), y), rtol=1e-9, atol=1e-12)


def test_dsoftmax_gradient_vanishes_for_confident_wrong_predictions():
    c = 10
    y = torch.tensor([0])
    masses = []
    for margin in (0.0, 2.0, 5.0, 10.0, 20.0, 40.0):
        z = torch.zeros(1, c, dtype=torch.float64)
        z[0, 3] = margin  # ŷ = 3 ≠ y
        z.requires_grad_(True)
        (g,) = torch.autograd.grad(losses.per_sample_loss("dsoftmax", z, y).sum(), z)
        masses.append(g.abs().sum().item())
    assert all(a > b for a, b in zip(masses[1:], masses[2:], strict=False))
    assert masses[-1] < 1e-12
    # CE keeps pushing with full force: Σ|p − onehot| → 2.
    z = torch.zeros(1, c, dtype=torch.float64)
    z[0, 3] = 40.0
    z.requires_grad_(True)
    (g,) = torch.autograd.grad(losses.per_sample_loss("ce", z, y).sum(), z)
    assert abs(g.abs().sum().item() - 2.0) < 1e-12


@pytest.mark.parametrize("c", [2, 3, 10, 101, 1000])
def test_dsoftmax_bounds(c):
    lo, hi = math.log(1 + (c - 1) / math.e), math.log(math.e + c - 1)
    z, y, _ = _batch(b=256, c=c, scale=5.0, seed=c)
    values = losses.per_sample_loss("dsoftmax", z, y)
    assert (values >= lo - 1e-12).all() and (values <= hi + 1e-12).all()
    # Adversarial logits approach each bound: a certain right and a certain wrong prediction.
    right = torch.zeros(1, c, dtype=torch.float64)
    right[0, 0] = 1e4
    wrong = torch.zeros(1, c, dtype=torch.float64)
    wrong[0, 1] = 1e4
    y0 = torch.tensor([0])
    at_lo = losses.per_sample_loss("dsoftmax", right, y0).item()
    at_hi = losses.per_sample_loss("dsoftmax", wrong, y0).item()
    assert abs(at_lo - lo) < 1e-12 and abs(at_hi - hi) < 1e-12
    assert lo - 1e-12 <= at_lo <= at_hi <= hi + 1e-12


def test_dsoftmax_bounds_for_101_classes_are_the_papers():
    assert round(math.log(1 + 100 / math.e), 2) == 3.63
    assert round(math.log(math.e + 100), 2) == 4.63


def test_logitclip_code_and_the_paper_rule_coincide_at_one():
    z, y, _ = _batch(scale=6.0)
    a = losses.per_sample_loss("logitclip", z, y, tau=1.0)
    b = losses.per_sample_loss("logitclip-code", z, y, temp=1.0)
    assert torch.allclose(a, b, atol=1e-6)
    far = losses.per_sample_loss("logitclip-code", z, y, temp=10.0)
    assert not torch.allclose(far, losses.per_sample_loss("logitclip", z, y, tau=10.0))


def test_gce_is_flat_below_the_clamp():
    z = torch.tensor([[0.0, 40.0, 40.0]], dtype=torch.float64, requires_grad=True)
    loss = losses.per_sample_loss("gce", z, torch.tensor([0]))
    loss.sum().backward()
    assert torch.all(z.grad == 0)
    assert float(loss.detach()) == pytest.approx((1 - 1e-7**0.7) / 0.7)
