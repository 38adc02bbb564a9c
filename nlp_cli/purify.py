"""Purifiers: split a noisily labelled training set into clean and noisy samples.

Each purifier is registered by name and maps (image features, class text features, given
labels, logit scale) to a `PartitionResult`. `promptot` is NLPrompt's PromptOT as the public
NLPrompt code computes it (docs: SPEC §2), with NLPrompt's curriculum budget as an option
(`budget_mask`, `curriculum_budget`); `sinkhorn` is the entropic OT solver behind it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from nlp_cli.errors import NlpError, UsageError
from nlp_cli.registry import Registry, first_doc_line

SOLVERS = ("torch", "pot")
# The purifiers' arithmetic, as a number that a partition records (and its cache key holds): a
# partition made under another number is recomputed, not served from cache. Raise it whenever
# a purifier can give other numbers than before for the same inputs. 1: no number recorded;
# 2: PromptOT's log domain streams its iterations (plans equal to ~1e-12, not bit for bit).
ALGORITHM_VERSION = 2
# Above this span of a column of the cost divided by reg, exp(-M/reg) leaves float64's range
# (exp(-708) is its smallest normal number), so the scaling iterations would divide by zero.
LOG_DOMAIN_SPAN = 600.0
# Progress of an iterative solver: (iterations done, the most it may take, the current error),
# called where the error is computed anyway (every 10th Sinkhorn iteration): no extra
# synchronisation with the device.
Progress = Callable[[int, int, float], None]


@dataclass
class PartitionResult:
    """A purifier's verdict on every sample."""

    clean: torch.Tensor  # bool [N]: True = the given label is believed right
    pseudo_labels: torch.Tensor  # int64 [N]: the label the purifier would give
    scores: torch.Tensor  # float32 [N]: confidence that the given label is right
    coupling: torch.Tensor | None = None  # float64 [N, C] transport plan (ot only)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PurifierSpec:
    """A registered purifier: its function, default options and one-line description."""

    name: str
    fn: Callable[..., PartitionResult]
    defaults: dict[str, Any]
    doc: str
    reports: bool = False  # takes `on_progress`


_REGISTRY: Registry[PurifierSpec] = Registry("purifier")


def register(name: str, **defaults: Any) -> Callable[[Callable[..., PartitionResult]], Any]:
    """Decorator adding a purifier to the registry under `name`."""

    def wrap(fn: Callable[..., PartitionResult]) -> Callable[..., PartitionResult]:
        reports = "on_progress" in inspect.signature(fn).parameters
        spec = PurifierSpec(name, fn, dict(defaults), first_doc_line(fn), reports)
        _REGISTRY.add(name, spec)
        return fn

    return wrap


def list_purifiers() -> list[str]:
    """Names of all registered purifiers, in registration order."""
    return _REGISTRY.names()


def get(name: str) -> PurifierSpec:
    """The purifier called `name`; UsageError for an unknown name."""
    return _REGISTRY.get(name)


def purify(
    name: str,
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: float,
    on_progress: Progress | None = None,
    **options: Any,
) -> PartitionResult:
    """Run the purifier `name`; options it does not know are a UsageError. A purifier with an
    iterative solver reports through `on_progress(iteration, max_iterations, error)`."""
    spec = get(name)
    unknown = [k for k in options if k not in spec.defaults]
    if unknown:
        have = ", ".join(spec.defaults) or "none"
        raise UsageError(f"purifier {name!r} has no option {unknown[0]!r} (its options: {have})")
    opts = {**spec.defaults, **{k: v for k, v in options.items() if v is not None}}
    _check_inputs(image_feats, text_feats, labels)
    hooks = {"on_progress": on_progress} if on_progress is not None and spec.reports else {}
    result = spec.fn(image_feats, text_feats, labels, logit_scale, **opts, **hooks)
    result.info.setdefault("method", name)
    result.info.setdefault("options", opts)
    return result


def _check_inputs(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> None:
    if image.dim() != 2 or text.dim() != 2 or image.shape[1] != text.shape[1]:
        raise ValueError(
            f"features must be [N, D] and [C, D], got {tuple(image.shape)} and {tuple(text.shape)}"
        )
    if labels.shape != (image.shape[0],):
        raise ValueError(f"labels must be [N] = [{image.shape[0]}], got {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= text.shape[0]):
        raise ValueError(f"labels must lie in [0, {text.shape[0]})")


# Feature rows per chunk when forming logits or the cost: each chunk is upcast to float64 on its
# own (8 MiB at D = 512), so no N × D float64 copy of the features is ever made. Chunks that start
# on multiples of 1024 rows fall on the matrix product's own row blocking: on the x86 CPU builds
# measured, the logits come out bit for bit as from one product over all rows.
_CHUNK = 2048


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _logit_chunks(image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: float):
    """(start, s · norm(I[start:start + _CHUNK]) · norm(T)ᵀ in float64), chunk after chunk."""
    text_t = _unit_rows(text_feats).T
    scale = float(logit_scale)
    for s in range(0, image_feats.shape[0], _CHUNK):
        yield s, scale * _unit_rows(image_feats[s : s + _CHUNK]) @ text_t


def _gather_rows(chunks, n: int, c: int, device: torch.device) -> torch.Tensor:
    out = torch.empty((n, c), dtype=torch.float64, device=device)
    for s, z in chunks:
        out[s : s + z.shape[0]] = z
    return out


def class_logits(
    image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: float
) -> torch.Tensor:
    """s · norm(I) · norm(T)ᵀ in float64 [N, C], for raw features of any float dtype."""
    chunks = _logit_chunks(image_feats, text_feats, logit_scale)
    return _gather_rows(chunks, image_feats.shape[0], text_feats.shape[0], image_feats.device)


def class_probs(
    image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: float
) -> torch.Tensor:
    """softmax(`class_logits`) in float64 [N, C], without an N × C buffer of logits."""
    chunks = (
        (s, z.softmax(dim=-1)) for s, z in _logit_chunks(image_feats, text_feats, logit_scale)
    )
    return _gather_rows(chunks, image_feats.shape[0], text_feats.shape[0], image_feats.device)


def _cost_chunks(image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: float):
    # The cost stays float64: its rounding reaches the plan multiplied by 1/reg (exp(−M/reg)).
    # Formed in float32 (errors ~5e-6 in M), entries of the plan moved by up to 1e-3 (relative)
    # at reg 0.01 and 1e-2 at reg 0.001 (at 20 000 × 101), so the partition would no longer
    # be POT's to tight tolerance; float64 per chunk costs only the chunk.
    for s, z in _logit_chunks(image_feats, text_feats, logit_scale):
        # The public NLPrompt code takes log_softmax of the probabilities: a double softmax.
        yield s, z.softmax(dim=-1).log_softmax(dim=-1).neg_()


def promptot_cost(
    image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: float
) -> torch.Tensor:
    """PromptOT's cost M = −log_softmax(softmax(s·I·Tᵀ)), float64 [N, C]."""
    chunks = _cost_chunks(image_feats, text_feats, logit_scale)
    return _gather_rows(chunks, image_feats.shape[0], text_feats.shape[0], image_feats.device)


def _cost_t(image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: float):
    """PromptOT's cost stored as Mt = [C, N] float64, with its column minima and maxima [C]."""
    n, c, device = image_feats.shape[0], text_feats.shape[0], image_feats.device
    Mt = torch.empty((c, n), dtype=torch.float64, device=device)
    lo = torch.full((c,), math.inf, dtype=torch.float64, device=device)
    hi = torch.full((c,), -math.inf, dtype=torch.float64, device=device)
    finite = torch.ones((), dtype=torch.bool, device=device)
    for s, m in _cost_chunks(image_feats, text_feats, logit_scale):
        Mt[:, s : s + m.shape[0]] = m.T
        lo = torch.minimum(lo, m.amin(dim=0))
        hi = torch.maximum(hi, m.amax(dim=0))
        finite &= torch.isfinite(m).all()
    if not bool(finite):
        raise NlpError("PromptOT: the cost has NaN/inf entries; check the features for NaN/inf")
    return Mt, lo, hi


@dataclass
class SinkhornResult:
    """A transport plan and how the solver got there."""

    coupling: torch.Tensor
    iterations: int
    error: float
    log_domain: bool
    converged: bool
    fell_back: bool = False  # the scaling form broke down and the log domain took over
    # Scaling form: the scalings of K = exp(−(M − column minimum)/reg) (plan = u_i K_ij v_j);
    # log domain: the dual potentials f/reg, g/reg (plan = exp(−M_ij/reg + u_i + v_j)).
    u: torch.Tensor | None = None
    v: torch.Tensor | None = None


def sinkhorn(
    M: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    reg: float = 0.01,
    max_iter: int = 1000,
    stop_thr: float = 1e-6,
    log_domain: bool | None = None,
    on_progress: Progress | None = None,
) -> SinkhornResult:
    """Entropic OT plan for cost M [..., N, C] and marginals a [N], b [C] (uniform by default).

    The iterations and the stopping rule (L2 error of the column marginal, checked after the
    1st, 11th, 21st, … iteration) are POT's `sinkhorn_knopp` / `sinkhorn_log`; a leading batch
    dimension solves several problems at once. `log_domain=None` picks the log domain when
    exp(−M/reg) would underflow (`needs_log_domain`), and also when the scaling form meets a
    non-finite value on the way; `False` keeps the scaling form and, like POT, stops at the
    last finite iterate. `on_progress(iteration, max_iter, error)` hears each error check (a
    fallback to the log domain counts its iterations from 1 again).
    """
    if reg <= 0:
        raise ValueError("reg must be positive")
    if max_iter < 1:
        raise ValueError("max_iter must be at least 1")
    M = M.double()
    n, c = M.shape[-2], M.shape[-1]
    a, b = _marginals(n, c, M.device, a, b)
    auto = log_domain is None
    if auto:
        log_domain = needs_log_domain(M, reg)
    fell_back = False
    if not log_domain:
        Kt = _kernel_into(M.transpose(-1, -2).contiguous(), M.amin(dim=-2), reg)
        u, v, it, err, converged, finite = _sinkhorn_scaling(
            Kt, a, b, max_iter, stop_thr, on_progress
        )
        if finite or not auto:
            plan = Kt.mul_(v.unsqueeze(-1)).mul_(u.unsqueeze(-2)).transpose(-1, -2)
            return SinkhornResult(plan, it, err, False, converged, u=u, v=v)
        del Kt
        fell_back = True
    # −M/reg, made once; it then becomes the plan in place (M's layout, [B, N, C]).
    L = M.reshape(-1, n, c) / -reg
    u, v, it, err, converged = _sinkhorn_log(
        L.transpose(1, 2), a, b, max_iter, stop_thr, on_progress
    )
    plan = L.add_(u.unsqueeze(-1)).add_(v.unsqueeze(-2)).clamp_min_(_LOG_FLOOR).exp_()
    u, v = u.reshape(M.shape[:-1]), v.reshape(M.shape[:-2] + (c,))
    return SinkhornResult(plan.reshape(M.shape), it, err, True, converged, fell_back, u, v)


def _marginals(n, c, device, a=None, b=None):
    a = torch.full((n,), 1.0 / n, dtype=torch.float64, device=device) if a is None else a.double()
    b = torch.full((c,), 1.0 / c, dtype=torch.float64, device=device) if b is None else b.double()
    return a, b


def cost_span(M: torch.Tensor, reg: float) -> float:
    """The largest spread of a column of M [..., N, C], divided by reg."""
    return float((M.amax(dim=-2) - M.amin(dim=-2)).amax()) / reg


def needs_log_domain(M: torch.Tensor, reg: float) -> bool:
    """Whether the scaling form of Sinkhorn would leave float64's range on cost M at reg.

    The scaling form works on K = exp(−(M − column minimum)/reg): past a span of
    `LOG_DOMAIN_SPAN` (exp(−708) is float64's smallest normal number, and the scalings u, v
    need some room too) entries of K underflow and Kᵀu can reach zero.
    """
    return cost_span(M, reg) > LOG_DOMAIN_SPAN


def _kernel_into(Mt: torch.Tensor, lo: torch.Tensor, reg: float) -> torch.Tensor:
    """Mt [..., C, N] ← K = exp(−(M − column minimum lo)/reg), in place."""
    # Adding a constant to a column of M rescales v and leaves the plan, and every iterate
    # of u, unchanged (v is updated first); a zero minimum per column keeps exp(−M/reg) in
    # float64's range. Row shifts would be as harmless at convergence, but they change
    # where the (uniform) starting u sits, so unconverged plans would differ from POT's.
    return Mt.sub_(lo.unsqueeze(-1)).div_(-reg).exp_()


def _sinkhorn_scaling(Kt, a, b, max_iter, stop_thr, on_progress=None):
    """POT's `sinkhorn_knopp` iterations on K stored as Kt = [..., C, N]: u, v and how it went."""
    # K is kept as [C, N]: both products then run over contiguous rows (3-4x faster on CPU).
    n, c = Kt.shape[-1], Kt.shape[-2]
    u = torch.full(Kt.shape[:-2] + (n,), 1.0 / n, dtype=Kt.dtype, device=Kt.device)
    v = torch.full(Kt.shape[:-1], 1.0 / c, dtype=Kt.dtype, device=Kt.device)
    err, it, converged, finite = math.inf, 0, False, True
    for it in range(max_iter):  # noqa: B007 - the last index is reported
        u_prev, v_prev = u, v
        v = b / _times(Kt, u)
        u = a / _times_t(Kt, v)
        # One reduction instead of POT's four checks: a zero in Kᵀu makes v infinite.
        if not math.isfinite(float(u.sum() + v.sum())):
            u, v, finite = u_prev, v_prev, False
            break
        if it % 10 == 0:
            err = float((v * _times(Kt, u) - b).norm(dim=-1).max())
            if on_progress is not None:
                on_progress(it + 1, max_iter, err)
            if err < stop_thr:
                converged = True
                break
    return u, v, it + 1, err, converged, finite


# Entries of the cost per block in the log domain: a block of about 1 MiB stays in cache, so
# each pass reads the cost once and no temporary of its size is made.
_BLOCK = 1 << 17
# Log-plan entries below this are stored as exp(_LOG_FLOOR) ≈ 1e-304 rather than as 0 or a
# subnormal number: they weigh nothing next to a row or column sum (≥ min(a)·min(b)), and
# subnormal inputs and results slow exp and every later product down several times.
_LOG_FLOOR = -700.0


def _step(c: int) -> int:
    """Samples per block of the cost, for C classes."""
    return max(1, _BLOCK // c)


def _sinkhorn_log(Lt, a, b, max_iter, stop_thr, on_progress=None):
    """POT's `sinkhorn_log` on the dual potentials u = f/reg [B, N], v = g/reg [B, C], for
    Lt = −Mᵀ/reg [B, C, N] (any strides); returns u, v and how it went.

    POT's updates are v = log b − logsumexp_i(−M/reg + u) and u = log a − logsumexp_j(−M/reg
    + v). The first iteration computes them so, with the maximum as the shift. From then on
    the current potentials are a better shift: −M/reg + u + v is the log of the current plan,
    whose entries are at most 1, and (for marginals of total mass 1) whose column sums after
    a u-update are at least min(a)·b_j and row sums after a v-update at least min(b)·a_i.
    So after v += log b/s (s the column sums of the plan) an iteration is one pass over the
    cost, a block of samples at a time: one exponential per entry of E = exp(−M/reg + u + v),
    E's row sums r (u += log a/r, rows are independent) and the column sums of the plan with
    the new u, E·(a/r), for the next v-update and the stopping rule. No N × C buffer is made.
    A half-step whose sums come out zero or non-finite (zeros in a or b) is redone with the
    max-shifted logsumexp.
    """
    step = _step(Lt.shape[-2])
    log_a, log_b = a.log(), b.log()
    u = Lt.new_zeros(Lt.shape[0], Lt.shape[-1])
    v = log_b - _lse_samples(Lt, u, step)
    u, col, _ = _u_update(Lt, u, v, a, log_a, step, exact=True)
    it, err, converged = 1, math.inf, False
    while True:
        if (it - 1) % 10 == 0:
            err = float((col - b).norm(dim=-1).max())
            if on_progress is not None:
                on_progress(it, max_iter, err)
            if err < stop_thr:
                converged = True
                break
        if it == max_iter:
            break
        w = b / col
        if _positive_finite(w):
            v = v + w.log()
            new_u, new_col, ok = _u_update(Lt, u, v, a, log_a, step, exact=False)
            if not ok:
                new_u, new_col, _ = _u_update(Lt, u, v, a, log_a, step, exact=True)
        else:
            v = log_b - _lse_samples(Lt, u, step)
            new_u, new_col, _ = _u_update(Lt, u, v, a, log_a, step, exact=True)
        u, col = new_u, new_col
        it += 1
    return u, v, it, err, converged


def _positive_finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all() and (x > 0).all())


def _blocks(n: int, rows: int) -> range:
    return range(0, n, rows)


def _u_update(Lt, u, v, a, log_a, step, exact):
    """u's half-step for v, block by block, and the column sums [B, C] of the plan after it;
    with exact=False also whether every row sum came out positive and finite."""
    new_u = torch.empty_like(u)
    col = torch.zeros_like(v)
    ok = torch.ones((), dtype=torch.bool, device=u.device)
    for s in _blocks(Lt.shape[-1], step):
        block = Lt[..., s : s + step]
        if exact:
            part = log_a[s : s + step] - torch.logsumexp(block + v.unsqueeze(-1), dim=1)
            e = _log_plan(block, part, v)
            col += e.sum(dim=2)
        else:
            e = _log_plan(block, u[:, s : s + step], v)
            fit = a[s : s + step] / e.sum(dim=1)
            ok &= torch.isfinite(fit).all() & (fit > 0).all()
            part = u[:, s : s + step] + fit.log()
            col += torch.bmm(e, fit.unsqueeze(-1)).squeeze(-1)
        new_u[:, s : s + step] = part
    return new_u, col, bool(ok)


def _lse_samples(Lt, u, step):
    """logsumexp over i of −M_ij/reg + u_i, [B, C]."""
    out = Lt.new_full(Lt.shape[:2], -math.inf)
    for s in _blocks(Lt.shape[-1], step):
        block = Lt[..., s : s + step] + u[:, None, s : s + step]
        out = torch.logaddexp(out, torch.logsumexp(block, dim=2))
    return out


def _log_plan(Lt_block, u_block, v):
    """exp(max(−M/reg + u + v, _LOG_FLOOR)) for a block [..., C, k] of Lt = −Mᵀ/reg."""
    block = (Lt_block + u_block.unsqueeze(-2)).add_(v.unsqueeze(-1))
    return block.clamp_min_(_LOG_FLOOR).exp_()


def _times(Kt: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Kᵀu for K stored as Kt = [..., C, N]."""
    return (Kt @ u.unsqueeze(-1)).squeeze(-1)


def _times_t(Kt: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Kv for K stored as Kt = [..., C, N]."""
    return (v.unsqueeze(-2) @ Kt).squeeze(-2)


def _pot_plan(M: torch.Tensor, reg: float, max_iter: int, stop_thr: float, method: str):
    """POT's plan with `method` ("sinkhorn" or "sinkhorn_log"), its iteration count and last
    marginal error, and whether it ran without POT's "numerical errors" stop."""
    import warnings

    import ot

    n, c = M.shape
    a, b = ot.unif(n), ot.unif(c)
    if method == "sinkhorn":
        # The column shift that keeps our scaling form in range (see _kernel_into):
        # plain `ot.sinkhorn` on the raw cost underflows for reg below about 0.0065.
        M = M - M.amin(dim=0, keepdim=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan, log = ot.sinkhorn(
            a, b, M.numpy(), reg, method=method, numItermax=max_iter, stopThr=stop_thr, log=True
        )
    finite = not any("numerical errors" in str(w.message) for w in caught)
    errs = log.get("err") or [math.inf]
    return torch.from_numpy(plan), int(log.get("niter", max_iter)) + 1, float(errs[-1]), finite


def _verdict(coupling_or_probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Pseudo-labels (row argmax), clean mask and the row-normalised mass on the given label."""
    pseudo = coupling_or_probs.argmax(dim=-1)
    rows = coupling_or_probs.sum(dim=-1).clamp_min(torch.finfo(torch.float64).tiny)
    scores = coupling_or_probs.gather(1, labels.long().unsqueeze(1)).squeeze(1) / rows
    return pseudo.long(), pseudo == labels.long(), scores.float()


@dataclass
class _PlanRows:
    """What a partition needs from each row of a plan, gathered block by block."""

    pseudo: torch.Tensor  # int64 [N]: row argmax
    total: torch.Tensor  # float64 [N]: row sum
    own: torch.Tensor  # float64 [N]: the entry at the given label
    rest: torch.Tensor | None  # float64 [N]: the row's mass off its argmax (for a budget)
    bad: int  # NaN/inf entries


def _plan_rows(blocks, labels: torch.Tensor, n: int, want_rest: bool) -> _PlanRows:
    """Row statistics of a plan given as (start, block [C, k]) pairs that cover its N rows."""
    labels = labels.long()
    device = labels.device
    pseudo = torch.empty(n, dtype=torch.int64, device=device)
    total = torch.empty(n, dtype=torch.float64, device=device)
    own = torch.empty(n, dtype=torch.float64, device=device)
    rest = torch.empty(n, dtype=torch.float64, device=device) if want_rest else None
    bad = torch.zeros((), dtype=torch.int64, device=device)
    for s, p in blocks:
        e = s + p.shape[1]
        top = p.argmax(dim=0)
        pseudo[s:e] = top
        total[s:e] = p.sum(dim=0)
        own[s:e] = p.gather(0, labels[None, s:e]).squeeze(0)
        if rest is not None:
            rest[s:e] = p.scatter(0, top.unsqueeze(0), 0.0).sum(dim=0)
        bad += (~torch.isfinite(p)).sum()
    return _PlanRows(pseudo, total, own, rest, int(bad))


def _column_blocks(Pt: torch.Tensor):
    """(start, block) pairs over the columns of Pt = [C, N], a plan stored transposed."""
    step = _step(Pt.shape[0])
    return ((s, Pt[:, s : s + step]) for s in _blocks(Pt.shape[1], step))


def _plan_errors(bad: int, empty: int, n: int, reg: float, solver: str) -> None:
    hint = "hint: leave log_domain unset so that the log-domain solver takes over, or raise --reg"
    if bad:
        raise NlpError(
            f"PromptOT at reg={reg:g} ({solver}): the transport plan has {bad} NaN/inf "
            f"entries, so it cannot give a partition; {hint}"
        )
    if empty:
        raise NlpError(
            f"PromptOT at reg={reg:g} ({solver}): {empty} of {n} rows of the "
            f"transport plan are zero (exp(−M/reg) underflowed), so their pseudo-labels "
            f"would be arbitrary; {hint}"
        )


def check_plan(plan: torch.Tensor, reg: float, solver: str) -> None:
    """NlpError unless every entry of the plan is finite and every row carries mass."""
    bad = int((~torch.isfinite(plan)).sum())
    empty = int((plan.sum(dim=-1) <= 0).sum())
    _plan_errors(bad, empty, plan.shape[0], reg, solver)


def budget_mask(coupling: torch.Tensor, budget: float) -> torch.Tensor:
    """NLPrompt's curriculum selection: the int(N·budget) rows most sure of their argmax.

    The reference (`curriculum_structure_aware_PL` in qunovo/NLPrompt's utils.py) gives the
    class side of the transport the total mass `budget` (b = budget/C) and keeps as candidates
    the rows whose largest coupling entry is among the int(N·budget) largest; a candidate is
    clean when its plan argmax equals its label, every other sample is noisy. Scaling one
    marginal by a constant does not change Sinkhorn's plan (the scalings absorb the factor),
    so the plan here is the balanced one; only the reference's stopping test, which compares
    column sums of total 1 with b of total `budget`, then never passes: it runs max_iter
    iterations, or stops at POT's numerical-error check once its v, shrunk by `budget` per
    iteration, leaves float64's range (after 533 iterations at budget 0.3 in one test).
    Every row of the plan sums to 1/N, so "largest entry" is "least mass outside the argmax",
    which is what is ranked here: at logit scale 100 most rows of a PromptOT plan are one-hot
    to float precision, and their largest entries all round to 1/N, a tie the reference breaks
    by rounding noise. Exact ties keep the earlier row. The reference caps the budget at the
    float sum of a, which can fall a rounding error short of 1; here budget 1 keeps every row.
    """
    top = coupling.argmax(dim=1, keepdim=True)
    return _budget_rows(coupling.scatter(1, top, 0.0).sum(dim=1), budget)


def _budget_rows(rest: torch.Tensor, budget: float) -> torch.Tensor:
    """The int(N·budget) rows with the least mass `rest` off their argmax (see budget_mask)."""
    n = rest.shape[0]
    k = int(n * min(float(budget), 1.0))
    order = torch.argsort(rest, stable=True)
    mask = torch.zeros(n, dtype=torch.bool, device=rest.device)
    mask[order[:k]] = True
    return mask


CURRICULUM_MODES = ("linear", "exp")


def curriculum_budget(epoch: int, epochs: int, begin: float = 0.3, mode: str = "linear") -> float:
    """The budget NLPrompt's curriculum gives epoch `epoch` (0-based) of an `epochs`-epoch ramp.

    Reference: `curriculum_scheduler` in qunovo/NLPrompt's utils.py, called in `before_epoch`
    with CURRICLUM_EPOCH = `epochs`, BEGIN_RATE = `begin` and CURRICLUM_MODE = `mode` (their
    defaults: 0, i.e. off, 0.3 and "linear"). During the ramp the budget moves from `begin`
    towards 1 by the share t/T of the way (linear) or 1 − exp(−4·t/T) (exp, which is 98 % of the
    way at the last ramp epoch); from epoch T on it is 1.
    """
    if mode not in CURRICULUM_MODES:
        raise UsageError(
            f"unknown curriculum mode {mode!r}: choose from {', '.join(CURRICULUM_MODES)}"
        )
    if epoch >= epochs:
        return 1.0
    share = epoch / epochs
    ratio = share if mode == "linear" else 1.0 - math.exp(-4.0 * share)
    return begin + ratio * (1.0 - begin)


@dataclass
class _Solved:
    """PromptOT's Sinkhorn without its plan: the stored [C, N] buffer (K for the scaling form,
    −M/reg for the log domain) and the scalings or potentials that make the plan from it."""

    buffer: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    iterations: int
    error: float
    log_domain: bool
    converged: bool
    fell_back: bool

    def blocks(self):
        """(start, plan block [C, k]) pairs, the same entries as `plan_into_buffer` gives."""
        for s, blk in _column_blocks(self.buffer):
            u = self.u[s : s + blk.shape[1]]
            if self.log_domain:
                yield s, _log_plan(blk, u, self.v)
            else:
                yield s, (blk * self.v.unsqueeze(-1)).mul_(u)

    def plan_into_buffer(self) -> torch.Tensor:
        """The plan [N, C] (a transposed view), made in place of the buffer."""
        if self.log_domain:
            self.buffer.add_(self.u).add_(self.v.unsqueeze(-1)).clamp_min_(_LOG_FLOOR).exp_()
        else:
            self.buffer.mul_(self.v.unsqueeze(-1)).mul_(self.u)
        return self.buffer.T


def _promptot_solve(
    image_feats, text_feats, logit_scale, reg, max_iter, stop_thr, log_domain, on_progress=None
) -> tuple[_Solved, float]:
    """`sinkhorn`'s iterations and solver choice on PromptOT's cost, formed from the features in
    chunks into one [C, N] float64 buffer; no N × C plan is made. Also the cost span / reg.

    A fall-back from a broken-down scaling form forms the cost again, as K replaced it.
    """
    Mt, lo, hi = _cost_t(image_feats, text_feats, logit_scale)
    span = float((hi - lo).amax()) / reg
    n, c = Mt.shape[1], Mt.shape[0]
    a, b = _marginals(n, c, Mt.device)
    auto = log_domain is None
    use_log = span > LOG_DOMAIN_SPAN if auto else bool(log_domain)
    fell_back = False
    if not use_log:
        Kt = _kernel_into(Mt, lo, reg)
        del Mt
        u, v, it, err, converged, finite = _sinkhorn_scaling(
            Kt, a, b, max_iter, stop_thr, on_progress
        )
        if finite or not auto:
            return _Solved(Kt, u, v, it, err, False, converged, False), span
        del Kt
        Mt, _, _ = _cost_t(image_feats, text_feats, logit_scale)
        fell_back = True
    Lt = Mt.div_(-reg)
    u, v, it, err, converged = _sinkhorn_log(Lt.unsqueeze(0), a, b, max_iter, stop_thr, on_progress)
    return _Solved(Lt, u[0], v[0], it, err, True, converged, fell_back), span


@register(
    "ot", reg=0.01, max_iter=1000, stop_thr=1e-6, solver="torch", log_domain=None, budget=None
)
def promptot(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: float,
    reg: float = 0.01,
    max_iter: int = 1000,
    stop_thr: float = 1e-6,
    solver: str = "torch",
    log_domain: bool | None = None,
    budget: float | None = None,
    keep_coupling: bool = False,
    on_progress: Progress | None = None,
) -> PartitionResult:
    """PromptOT: optimal transport from images to text prototypes; clean ⇔ plan argmax = label.

    Features are raw (normalised here) and may be float16, 32 or 64. The score of a sample is
    the share of its row of the plan that goes to its given label. `solver="pot"` runs POT's
    `sinkhorn_log` where ours would run in the log domain, else its `sinkhorn`. `budget`
    (0 < budget ≤ 1, default off) is NLPrompt's curriculum: only the `budget_mask` rows can be
    clean. Memory with the torch solver: one N × C float64 buffer (the cost, or K) and blocks;
    the plan is made only with `keep_coupling`, in that buffer. POT needs several N × C arrays.
    `on_progress` follows the torch solver's iterations (POT's loop reports nothing).
    """
    if solver not in SOLVERS:
        raise UsageError(f"unknown OT solver {solver!r}: choose from {', '.join(SOLVERS)}")
    if reg <= 0:
        raise UsageError(f"--reg must be positive, got {reg:g}")
    if budget is not None and not 0 < budget <= 1:
        raise UsageError(f"the curriculum budget must lie in (0, 1], got {budget:g}")
    n = image_feats.shape[0]
    want_rest = budget is not None
    plan = None
    if solver == "pot":
        Mt, lo, hi = _cost_t(image_feats, text_feats, logit_scale)
        span = float((hi - lo).amax()) / reg
        use_log = span > LOG_DOMAIN_SPAN if log_domain is None else bool(log_domain)
        method = "sinkhorn_log" if use_log else "sinkhorn"
        plan, iterations, error, finite = _pot_plan(Mt.T, reg, max_iter, stop_thr, method)
        fell_back = log_domain is None and not finite and not use_log
        if fell_back:
            use_log, method = True, "sinkhorn_log"
            plan, iterations, error, finite = _pot_plan(Mt.T, reg, max_iter, stop_thr, method)
        del Mt
        converged = error < stop_thr
        rows = _plan_rows(_column_blocks(plan.T), labels, n, want_rest)
        where = method
    else:
        sol, span = _promptot_solve(
            image_feats, text_feats, logit_scale, reg, max_iter, stop_thr, log_domain, on_progress
        )
        iterations, error, use_log = sol.iterations, sol.error, sol.log_domain
        converged, fell_back = sol.converged, sol.fell_back
        rows = _plan_rows(sol.blocks(), labels, n, want_rest)
        where = solver
    _plan_errors(rows.bad, int((rows.total <= 0).sum()), n, reg, where)
    if keep_coupling and plan is None:
        plan = sol.plan_into_buffer()
    pseudo = rows.pseudo
    clean = pseudo == labels.long()
    scores = (rows.own / rows.total.clamp_min(torch.finfo(torch.float64).tiny)).float()
    info: dict[str, Any] = {"solver": solver, "cost_span": span}
    if solver == "pot":
        info["pot_method"] = method
    info.update(
        log_domain=use_log,
        log_domain_fallback=fell_back,
        iterations=iterations,
        marginal_error=error,
        converged=converged,
    )
    if budget is not None:
        selected = _budget_rows(rows.rest, budget)
        clean = clean & selected
        info.update(budget=float(budget), selected=int(selected.sum()))
    return PartitionResult(clean, pseudo, scores, plan if keep_coupling else None, info)


@register("zeroshot")
def zeroshot(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: float,
) -> PartitionResult:
    """Zero-shot: a label is noisy when the prototypes' prediction differs from it."""
    probs = class_logits(image_feats, text_feats, logit_scale).softmax(dim=-1)
    pseudo, clean, scores = _verdict(probs, labels)
    return PartitionResult(clean, pseudo, scores)


@register("gmm", max_iter=100, tol=1e-6, reg_covar=5e-4)
def gmm(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: float,
    max_iter: int = 100,
    tol: float = 1e-6,
    reg_covar: float = 5e-4,
) -> PartitionResult:
    """Small-loss split: a two-component Gaussian mixture on the per-sample CE loss (JoAPR)."""
    logits = class_logits(image_feats, text_feats, logit_scale)
    loss = torch.nn.functional.cross_entropy(logits, labels.long(), reduction="none")
    post, info = gmm_clean_posterior(loss, max_iter=max_iter, tol=tol, reg_covar=reg_covar)
    return PartitionResult(post > 0.5, logits.argmax(dim=-1).long(), post.float(), info=info)


def gmm_clean_posterior(
    loss: torch.Tensor, max_iter: int = 100, tol: float = 1e-6, reg_covar: float = 5e-4
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Posterior of the low-loss component of a 1-D two-Gaussian mixture fitted by EM.

    Losses are min-max scaled to [0, 1] first (as DivideMix and JoAPR do), so `reg_covar`
    has a fixed meaning.
    """
    x = loss.detach().double().flatten()
    if x.numel() == 0:
        return x.float(), {"means": [], "iterations": 0}
    span = float(x.max() - x.min())
    x = (x - x.min()) / span if span > 0 else torch.zeros_like(x)
    mu = torch.quantile(x, torch.tensor([0.1, 0.9], dtype=x.dtype))
    var = torch.full((2,), float(x.var(unbiased=False)) + reg_covar, dtype=x.dtype)
    w = torch.full((2,), 0.5, dtype=x.dtype)
    prev, it = -math.inf, 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the last index is reported
        log_p = w.log() - 0.5 * (2 * math.pi * var).log() - 0.5 * (x.unsqueeze(1) - mu) ** 2 / var
        norm = torch.logsumexp(log_p, dim=1, keepdim=True)
        resp = (log_p - norm).exp()
        ll = float(norm.mean())
        nk = resp.sum(dim=0).clamp_min(1e-12)
        w = nk / nk.sum()
        mu = (resp * x.unsqueeze(1)).sum(dim=0) / nk
        var = (resp * (x.unsqueeze(1) - mu) ** 2).sum(dim=0) / nk + reg_covar
        if abs(ll - prev) < tol:
            break
        prev = ll
    log_p = w.log() - 0.5 * (2 * math.pi * var).log() - 0.5 * (x.unsqueeze(1) - mu) ** 2 / var
    resp = (log_p - torch.logsumexp(log_p, dim=1, keepdim=True)).exp()
    low = int(mu.argmin())
    return resp[:, low], {"means": mu.tolist(), "weights": w.tolist(), "iterations": it}


# Confident learning (cleanlab), appended after the OT, zero-shot and GMM purifiers.
CLEANLAB_FILTERS = (
    "low_self_confidence",
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_normalized_margin",
)


@register("cleanlab", filter_by="low_self_confidence")
def confident_learning(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: float,
    filter_by: str = "low_self_confidence",
) -> PartitionResult:
    """Confident learning (cleanlab) on the prototypes' probabilities; noisy ⇔ a label issue.

    The default `low_self_confidence` flags as many samples as cleanlab's `num_label_issues`
    estimates, those with the lowest p(given label); the score is that probability. Other
    `filter_by` values are cleanlab's `find_label_issues` rules.
    """
    from nlp_cli import label_issues

    if filter_by not in CLEANLAB_FILTERS:
        raise UsageError(
            f"unknown cleanlab filter {filter_by!r}: choose from {', '.join(CLEANLAB_FILTERS)}"
        )
    probs = class_logits(image_feats, text_feats, logit_scale).softmax(dim=-1)
    scores = label_issues.self_confidence(probs, labels)
    num = label_issues.num_label_issues(probs, labels)
    if filter_by == "low_self_confidence":
        clean = label_issues.ranking(scores) > num
    else:
        from cleanlab.filter import find_label_issues

        p = (probs / probs.sum(dim=-1, keepdim=True)).numpy()
        clean = ~torch.from_numpy(find_label_issues(labels.long().numpy(), p, filter_by=filter_by))
    info = {"num_label_issues": num, "filter_by": filter_by}
    return PartitionResult(clean.bool(), probs.argmax(dim=-1).long(), scores.float(), info=info)
