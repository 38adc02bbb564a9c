"""Every training loss, registered by name (SPEC §2).

A loss is one decorated function `fn(z, y, clean, **knobs) -> Tensor[B]` of per-sample losses.
Logits are computed in at least float32 (float16/bfloat16 inputs are upcast; float64 stays).

Conventions chosen where the papers leave room:

* MAE scale: `mae` is `scale · (1 − p_y)` with `scale = 1` by default, the NLPrompt code's
  convention; `scale = 2` gives the L1 form `Σ_c |onehot_c − p_c| = 2(1 − p_y)` of the paper.
  `nlprompt` uses `1 − p_y` on its noisy samples, as the NLPrompt code does.
* `logitclip` clips the logit vector to L2 norm τ, `z · min(1, τ/‖z‖)` (the LogitClip paper's
  definition). Default τ = 10: a vector of norm τ can still hold a margin of about τ, so
  p_y up to about `e^τ/(e^τ + C − 1)`. `logitclip-code` is the rule of the public LogitClip
  code (hongxin001/LogitClip `algorithms/clip.py`): once `‖z‖ + 1e-7 > temp` the logits become
  `z/(‖z‖ + 1e-7)/temp`, of norm 1/temp (default temp = 1, its `--temp`). The two coincide
  (up to the 1e-7) at τ = temp = 1; for temp ≠ 1 the code's map is not a clip to any norm (it
  jumps from norm temp to 1/temp at the threshold).
* `bootstrap` is soft bootstrapping (β = 0.95, p detached); `bootstrap-hard` uses the argmax
  prediction, `β·onehot(y) + (1 − β)·onehot(argmax p)` with β = 0.8 (Reed et al.'s settings).
* `gce` clamps the probabilities to [1e-7, 1] before the power, as the GCE reference code does.
* `square` ("square normalization", DSPT Table 3): `‖s · z/‖z‖₂ − onehot_y‖²₂`, a squared error
  between the L2-normalised logits (times a scale s, default 1) and the one-hot label.
* `select` keeps only samples whose prediction agrees with their label (argmax z = y): its
  per-sample loss is CE for kept samples and 0 for dropped ones, and its batch loss is the mean
  over kept samples (0, with a zero gradient, when none is kept).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from nlp_cli.errors import UsageError
from nlp_cli.registry import Registry, first_doc_line

# Added to ‖z‖ before dividing by it (logitnorm, square), as LogitNorm's public code does, so an
# all-zero logit vector stays finite.
NORM_EPS = 1e-7
# GCE's clamp of the probabilities (the reference code's `torch.clamp(pred, min=1e-7)`).
GCE_CLAMP = 1e-7


@dataclass(frozen=True)
class Knob:
    """A loss's knob: its default and the interval it must lie in (bounds open or closed)."""

    default: float
    low: float = -math.inf
    high: float = math.inf
    low_closed: bool = False
    high_closed: bool = False

    def check(self, loss: str, name: str, value: float) -> None:
        lo_ok = value >= self.low if self.low_closed else value > self.low
        hi_ok = value <= self.high if self.high_closed else value < self.high
        if not (lo_ok and hi_ok and math.isfinite(value)):
            interval = (
                f"{'[' if self.low_closed else '('}{self.low:g}, "
                f"{self.high:g}{']' if self.high_closed else ')'}"
            )
            raise UsageError(f"loss {loss!r}: knob {name} must lie in {interval}, got {value:g}")


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its per-sample function, default knobs and what it needs."""

    name: str
    fn: Callable[..., torch.Tensor]
    defaults: dict[str, float] = field(default_factory=dict)
    needs_partition: bool = False
    doc: str = ""
    # Which samples count in the batch mean (None: all of them).
    keep: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    knobs: dict[str, Knob] = field(default_factory=dict)


_REGISTRY: Registry[LossSpec] = Registry("loss")


def register(
    name: str,
    needs_partition: bool = False,
    keep: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    **knobs: Knob | float,
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Decorator adding a per-sample loss function to the registry under `name`; each keyword
    is a knob of the loss (a `Knob` with its valid interval, or a plain default)."""
    specs = {k: v if isinstance(v, Knob) else Knob(float(v)) for k, v in knobs.items()}

    def wrap(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        doc = first_doc_line(fn)
        defaults = {k: v.default for k, v in specs.items()}
        spec = LossSpec(name, fn, defaults, needs_partition, doc, keep, specs)
        _REGISTRY.add(name, spec)
        return fn

    return wrap


def list_losses() -> list[str]:
    """Names of all registered losses, in registration order."""
    return _REGISTRY.names()


def get(name: str) -> LossSpec:
    """The registered loss called `name`; UsageError for an unknown name."""
    return _REGISTRY.get(name)


def knob_names() -> list[str]:
    """Every knob name some registered loss has, in registration order."""
    names: dict[str, None] = {}
    for loss in list_losses():
        names.update(dict.fromkeys(get(loss).knobs))
    return list(names)


def resolve_knobs(name: str, **knobs: Any) -> dict[str, float]:
    """The loss's defaults overridden by `knobs`; UsageError for unknown or out-of-range knobs."""
    spec = get(name)
    unknown = [k for k in knobs if k not in spec.defaults]
    if unknown:
        have = ", ".join(spec.defaults) or "none"
        raise UsageError(f"loss {name!r} has no knob {unknown[0]!r} (its knobs: {have})")
    out = dict(spec.defaults)
    for k, v in knobs.items():
        if v is None:
            continue
        try:
            value = float(v)
        except (TypeError, ValueError):
            raise UsageError(f"loss {name!r}: knob {k} must be a number, got {v!r}") from None
        spec.knobs[k].check(name, k, value)
        out[k] = value
    return out


def parse_knob(item: str) -> tuple[str | None, str, str]:
    """`[LOSS.]KNOB=VALUE` → (loss or None, knob, value): the one knob syntax of train,
    analyze-grad and sweeps."""
    head, sep, value = item.partition("=")
    loss, dot, knob = head.rpartition(".")
    if not sep or not knob or not value.strip() or (dot and not loss):
        raise UsageError(f"--knob {item!r}: expected [LOSS.]KNOB=VALUE, e.g. gce.q=0.5 or q=0.5")
    return (loss.strip() or None), knob.strip(), value.strip()


def per_sample_loss(
    name: str,
    logits: torch.Tensor,
    labels: torch.Tensor,
    clean: torch.Tensor | None = None,
    **knobs: Any,
) -> torch.Tensor:
    """Per-sample losses [B] of `name` (0 for samples the loss drops, e.g. `select`)."""
    spec = get(name)
    params = resolve_knobs(name, **knobs)
    z, y, clean = _check_inputs(spec, logits, labels, clean)
    loss = spec.fn(z, y, clean, **params)
    if spec.keep is not None:
        loss = loss * spec.keep(z, y).to(loss.dtype)
    return loss


def batch_loss(
    name: str,
    logits: torch.Tensor,
    labels: torch.Tensor,
    clean: torch.Tensor | None = None,
    **knobs: Any,
) -> torch.Tensor:
    """The scalar to backpropagate: mean per-sample loss over the samples that count."""
    spec = get(name)
    loss = per_sample_loss(name, logits, labels, clean, **knobs)
    if spec.keep is None:
        return loss.mean()
    n_kept = spec.keep(logits.detach(), labels).sum()
    return loss.sum() / n_kept.clamp(min=1).to(loss.dtype)


def _check_inputs(
    spec: LossSpec, logits: torch.Tensor, labels: torch.Tensor, clean: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be [B, C] with C >= 2, got {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must be [B] = [{logits.shape[0]}], got {tuple(labels.shape)}")
    z = logits if logits.dtype == torch.float64 else logits.float()
    y = labels.long()
    if spec.needs_partition:
        if clean is None:
            raise UsageError(
                f"loss {spec.name!r} needs a clean/noisy partition: pipe the label set through "
                "`nlp purify` first"
            )
        if clean.shape != labels.shape:
            raise ValueError(f"clean must be [B] = [{labels.shape[0]}], got {tuple(clean.shape)}")
        clean = clean.bool()
    return z, y, clean


def _pick(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return t.gather(1, y[:, None])[:, 0]


def _soft_ce(log_p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * log_p).sum(dim=1)


def _l2_normalise(z: torch.Tensor) -> torch.Tensor:
    return z / (torch.linalg.vector_norm(z, dim=1, keepdim=True) + NORM_EPS)


@register("ce")
def ce(z: torch.Tensor, y: torch.Tensor, clean: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy −log p_y (CoOp)."""
    return -_pick(F.log_softmax(z, dim=1), y)


@register("mae", scale=Knob(1.0, 0.0))
def mae(z: torch.Tensor, y: torch.Tensor, clean: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Mean absolute error scale·(1 − p_y); scale 1 = NLPrompt code, 2 = Σ|onehot − p|."""
    return scale * (1.0 - _pick(F.softmax(z, dim=1), y))


@register("gce", q=Knob(0.7, 0.0, 1.0, high_closed=True))
def gce(z: torch.Tensor, y: torch.Tensor, clean: torch.Tensor | None, q: float) -> torch.Tensor:
    """Generalised cross-entropy (1 − p_y^q)/q, p clamped to [1e-7, 1] as the reference code."""
    # The GCE reference implementation (and the noisy-label codebases built on it) clamps the
    # softmax to [1e-7, 1] before the power: below 1e-7 the loss is flat, its gradient 0.
    p_y = torch.clamp(_pick(F.softmax(z, dim=1), y), min=GCE_CLAMP, max=1.0)
    return (1.0 - p_y**q) / q


@register("dsoftmax")
def dsoftmax(z: torch.Tensor, y: torch.Tensor, clean: torch.Tensor | None) -> torch.Tensor:
    """Double-softmax cross-entropy −log softmax(softmax(z))_y (DSPT)."""
    return -_pick(F.log_softmax(F.softmax(z, dim=1), dim=1), y)


@register("ls", eps=Knob(0.2, 0.0, 1.0, True, True))
def ls(z: torch.Tensor, y: torch.Tensor, clean: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Label smoothing: CE against (1 − ε)·onehot + ε/C."""
    n_cls = z.shape[1]
    target = torch.full_like(z, eps / n_cls)
    target.scatter_add_(1, y[:, None], torch.full_like(z[:, :1], 1.0 - eps))
    return _soft_ce(F.log_softmax(z, dim=1), target)


@register("logitnorm", tau=Knob(1.0, 0.0))
def logitnorm(
    z: torch.Tensor, y: torch.Tensor, clean: torch.Tensor | None, tau: float
) -> torch.Tensor:
    """LogitNorm: CE(z / (τ(‖z‖₂ + 1e-7)), y)."""
    return ce(_l2_normalise(z) / tau, y, clean)


@register("logitclip", tau=Knob(10.0, 0.0))
def logitclip(
    z: torch.Tensor, y: torch.Tensor, clean: torch.Tensor | None, tau: float
) -> torch.Tensor:
    """LogitClip: CE on z clipped to L2 norm ≤ τ, z·min(1, τ/‖z‖₂)."""
    # τ / max(‖z‖, τ) is exactly min(1, τ/‖z‖) and needs no guard at z = 0.
    norm = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    return ce(z * (tau / torch.clamp(norm, min=tau)), y, clean)


@register("nce")
def nce(z: torch.Tensor, y: torch.Tensor, clean: torch.Tensor | None) -> torch.Tensor:
    """Normalised cross-entropy (−log p_y) / (−Σ_k log p_k)."""
    log_p = F.log_softmax(z, dim=1)
    # The denominator is at least C·log C > 0 (its minimum is at the uniform p).
    return _pick(log_p, y) / log_p.sum(dim=1)


@register("bootstrap", beta=Knob(0.95, 0.0, 1.0, True, True))
def bootstrap(
    z: torch.Tensor, y: torch.Tensor, clean: torch.Tensor | None, beta: float
) -> torch.Tensor:
    """Soft bootstrapping: CE against β·onehot + (1 − β)·p, p detached."""
    log_p = F.log_softmax(z, dim=1)
    target = (1.0 - beta) * log_p.detach().exp()
    target = target.scatter_add(1, y[:, None], torch.full_like(z[:, :1], beta))
    return _soft_ce(log_p, target)


@register("bootstrap-hard", beta=Knob(0.8, 0.0, 1.0, True, True))
def bootstrap_hard(
    z: torch.Tensor, y: torch.Tensor, clean: torch.Tensor | None, beta: float
) -> torch.Tensor:
    """Hard bootstrapping: CE against β·onehot(y) + (1 − β)·onehot(argmax p), β = 0.8."""
    log_p = F.log_softmax(z, dim=1)
    target = (1.0 - beta) * F.one_hot(z.detach().argmax(dim=1), z.shape[1]).to(log_p.dtype)
    target = target.scatter_add(1, y[:, None], torch.full_like(z[:, :1], beta))
    return _soft_ce(log_p, target)


@register("logitclip-code", temp=Knob(1.0, 0.0))
def logitclip_code(
    z: torch.Tensor, y: torch.Tensor, clean: torch.Tensor | None, temp: float
) -> torch.Tensor:
    """LogitClip as its public code computes it: z/(‖z‖₂ + 1e-7)/temp once ‖z‖₂ + 1e-7 > temp."""
    # hongxin001/LogitClip algorithms/clip.py: the rescaled norm is 1/temp while the threshold
    # is temp, so for temp ≠ 1 the map jumps at the threshold; at temp = 1 it is `logitclip`
    # with τ = 1 (up to the 1e-7 in the norm).
    norm = torch.linalg.vector_norm(z, dim=1, keepdim=True) + NORM_EPS
    return ce(torch.where(norm > temp, z / norm / temp, z), y, clean)


@register("square", scale=Knob(1.0, 0.0))
def square(
    z: torch.Tensor, y: torch.Tensor, clean: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Square normalization: ‖s·z/(‖z‖₂ + 1e-7) − onehot_y‖²₂."""
    u = scale * _l2_normalise(z)
    onehot = F.one_hot(y, z.shape[1]).to(z.dtype)
    return ((u - onehot) ** 2).sum(dim=1)


def _agrees(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return z.argmax(dim=1) == y


@register("select", keep=_agrees)
def select(z: torch.Tensor, y: torch.Tensor, clean: torch.Tensor | None) -> torch.Tensor:
    """Naive selection: CE on samples with argmax z = y; the others are dropped."""
    return ce(z, y, clean)


@register("nlprompt", needs_partition=True)
def nlprompt(z: torch.Tensor, y: torch.Tensor, clean: torch.Tensor | None) -> torch.Tensor:
    """NLPrompt: CE on clean samples, 1 − p_y (MAE) on noisy ones."""
    log_py = _pick(F.log_softmax(z, dim=1), y)
    return torch.where(clean, -log_py, 1.0 - log_py.exp())
