"""Label noise models, registered by name, and few-shot sampling (SPEC §3).

All randomness comes from one `torch.Generator`, so the same seed gives the same labels.
The noisy samples of `sym`, `pair` and `idn` are apportioned to the classes in proportion
to their sizes (largest remainder, ties broken at random) and chosen uniformly within each
class: the total is exactly round(r·N), every class's rate is as close to r as its size
allows, and whether a class keeps a clean sample does not depend on the seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from nlp_cli.errors import UsageError
from nlp_cli.registry import Registry, first_doc_line


@dataclass
class NoiseResult:
    """Noisy labels for a set of samples, and notes the caller may want to show."""

    labels: torch.Tensor
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NoiseSpec:
    name: str
    fn: Callable[..., NoiseResult]
    doc: str


_REGISTRY: Registry[NoiseSpec] = Registry("noise model", unknown="noise type")


def register(name: str) -> Callable[[Callable[..., NoiseResult]], Callable[..., NoiseResult]]:
    """Decorator adding a noise model to the registry under `name`."""

    def wrap(fn: Callable[..., NoiseResult]) -> Callable[..., NoiseResult]:
        _REGISTRY.add(name, NoiseSpec(name, fn, first_doc_line(fn)))
        return fn

    return wrap


def list_noise() -> list[str]:
    """Names of all registered noise models."""
    return _REGISTRY.names()


def get(name: str) -> NoiseSpec:
    """The noise model called `name`; UsageError for an unknown name."""
    return _REGISTRY.get(name)


def check_rate(rate: float, what: str = "noise rate") -> None:
    """UsageError unless 0 ≤ rate < 1."""
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and 0.0 <= rate < 1.0):
        raise UsageError(f"{what} must lie in [0, 1), got {rate}")


def check_classes(num_classes: int) -> None:
    if num_classes < 2:
        raise UsageError(f"label noise needs at least 2 classes, the data has {num_classes}")


def quotas(labels: torch.Tensor, num_classes: int, rate: float, gen: torch.Generator):
    """How many samples of each class to flip: round(rate·N) in all, apportioned by class size."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    total = round(rate * len(labels))
    exact = counts * rate
    base = exact.floor()
    left = total - int(base.sum())
    if left > 0:
        # Largest remainder first; equal remainders in a random order.
        jitter = torch.rand(num_classes, generator=gen, dtype=torch.float64) * 1e-9
        room = base < counts
        order = torch.argsort(torch.where(room, exact - base + jitter, -1.0), descending=True)
        base[order[:left]] += 1
    return base.long()


def pick(
    labels: torch.Tensor,
    quota: torch.Tensor,
    gen: torch.Generator,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indices of quota[c] samples of each class c: uniform, or ∝ `weights` without replacement."""
    chosen = []
    for c in range(len(quota)):
        k = int(quota[c])
        if k == 0:
            continue
        members = torch.nonzero(labels == c).flatten()
        if weights is None:
            order = torch.randperm(len(members), generator=gen)
        else:
            # Gumbel top-k: a weighted sample without replacement.
            u = torch.rand(len(members), generator=gen, dtype=torch.float64).clamp_min(1e-300)
            keys = weights[members].double().log() - (-u.log()).log()
            order = torch.argsort(keys, descending=True)
        chosen.append(members[order[:k]])
    if not chosen:
        return torch.zeros(0, dtype=torch.long)
    return torch.sort(torch.cat(chosen)).values


def _no_clean_left(labels: torch.Tensor, quota: torch.Tensor, classnames: list[str] | None):
    counts = torch.bincount(labels, minlength=len(quota))
    empty = [c for c in range(len(quota)) if counts[c] > 0 and quota[c] >= counts[c]]
    if not empty:
        return None
    names = [repr(classnames[c]) if classnames else str(c) for c in empty[:3]]
    more = f" and {len(empty) - 3} more" if len(empty) > 3 else ""
    return (
        f"this rate leaves no clean sample in {', '.join(names)}{more} "
        f"(a class of {int(counts[empty[0]])}): lower the rate or use more shots"
    )


def _checked_quota(
    labels: torch.Tensor,
    num_classes: int,
    rate: float,
    gen: torch.Generator,
    classnames: list[str] | None,
) -> torch.Tensor:
    """Per-class flip counts for a rate, after checking the rate, C ≥ 2 and a clean sample left."""
    check_rate(rate)
    check_classes(num_classes)
    quota = quotas(labels, num_classes, rate, gen)
    problem = _no_clean_left(labels, quota, classnames)
    if problem:
        raise UsageError(problem)
    return quota


@register("none")
def no_noise(labels: torch.Tensor, num_classes: int, gen: torch.Generator, **_: Any) -> NoiseResult:
    """No noise: the labels as they are."""
    return NoiseResult(labels.clone())


@register("sym")
def symmetric(
    labels: torch.Tensor,
    num_classes: int,
    gen: torch.Generator,
    rate: float,
    classnames: list[str] | None = None,
    **_: Any,
) -> NoiseResult:
    """Symmetric: round(r·N) samples get a label drawn uniformly from the other C−1 classes."""
    quota = _checked_quota(labels, num_classes, rate, gen, classnames)
    idx = pick(labels, quota, gen)
    noisy = labels.clone()
    # An offset in 1..C−1 added modulo C is uniform over the other classes, never the same one.
    offset = torch.randint(1, num_classes, (len(idx),), generator=gen)
    noisy[idx] = (labels[idx] + offset) % num_classes
    return NoiseResult(noisy)


@register("pair")
def pair_flip(
    labels: torch.Tensor,
    num_classes: int,
    gen: torch.Generator,
    rate: float,
    classnames: list[str] | None = None,
    **_: Any,
) -> NoiseResult:
    """Pair flip: round(r·N) samples go from class c to (c+1) mod C."""
    quota = _checked_quota(labels, num_classes, rate, gen, classnames)
    idx = pick(labels, quota, gen)
    noisy = labels.clone()
    noisy[idx] = (labels[idx] + 1) % num_classes
    warnings = []
    if rate >= 0.5:
        warnings.append(
            f"pair rate {rate:g} ≥ 0.5: in each class the wrong label (c+1) is then the majority"
        )
    return NoiseResult(noisy, warnings)


@register("map")
def class_map(
    labels: torch.Tensor,
    num_classes: int,
    gen: torch.Generator,
    mapping: dict[int, int],
    rate: float = 1.0,
    classnames: list[str] | None = None,
    **_: Any,
) -> NoiseResult:
    """A user's class map {from: to}: round(r·n_c) samples of each mapped class c are flipped."""
    if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
        raise UsageError(f"--rate for a class map must lie in [0, 1], got {rate}")
    check_classes(num_classes)
    if not mapping:
        raise UsageError("the class map is empty")
    counts = torch.bincount(labels, minlength=num_classes)
    quota = torch.zeros(num_classes, dtype=torch.long)
    for src in mapping:
        quota[src] = round(rate * int(counts[src]))
    idx = pick(labels, quota, gen)
    noisy = labels.clone()
    target = torch.arange(num_classes)
    for src, dst in mapping.items():
        target[src] = dst
    noisy[idx] = target[labels[idx]]
    warnings = []
    emptied = [c for c in mapping if counts[c] > 0 and quota[c] >= counts[c]]
    if emptied:
        names = ", ".join(classnames[c] if classnames else str(c) for c in emptied[:3])
        warnings.append(f"the map relabels every sample of {names}: no clean sample is left")
    return NoiseResult(noisy, warnings)


@register("idn")
def instance_dependent(
    labels: torch.Tensor,
    num_classes: int,
    gen: torch.Generator,
    rate: float,
    features: torch.Tensor | None = None,
    classnames: list[str] | None = None,
    **_: Any,
) -> NoiseResult:
    """Instance-dependent: samples near another class's prototype flip to it more often.

    Prototypes are the class means of the L2-normalised features (under the true labels).
    A sample's margin is cos(x, nearest other prototype) − cos(x, own prototype); each class
    flips its quota of samples, drawn without replacement with probability ∝ exp(z), z the
    margin standardised over the data set, and each goes to its nearest other prototype's
    class. Confusable samples are the likely mistakes, and they share a plausible wrong label.
    """
    if features is None:
        raise ValueError("instance-dependent noise needs the samples' features")
    quota = _checked_quota(labels, num_classes, rate, gen, classnames)
    target, margin = nearest_other_class(features, labels, num_classes)
    z = (margin - margin.mean()) / margin.std().clamp_min(1e-12) if len(margin) > 1 else margin
    idx = pick(labels, quota, gen, weights=z.double().exp())
    noisy = labels.clone()
    noisy[idx] = target[idx]
    return NoiseResult(noisy)


@register("human")
def human(
    labels: torch.Tensor,
    num_classes: int,
    gen: torch.Generator,
    given: torch.Tensor | None = None,
    **_: Any,
) -> NoiseResult:
    """Human labels (CIFAR-N): each sample keeps the label its annotators gave it."""
    if given is None:
        raise ValueError("human noise needs the human labels of the samples")
    given = given.long()
    if given.shape != labels.shape:
        raise ValueError(f"{len(given)} human labels for {len(labels)} samples")
    if len(given) and not bool(((given >= 0) & (given < num_classes)).all()):
        raise UsageError(f"the human labels are not all classes 0..{num_classes - 1}")
    return NoiseResult(given.clone())


def nearest_other_class(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's nearest other class prototype and its cosine margin over its own class."""
    x = features.double()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    protos = torch.zeros(num_classes, x.shape[1], dtype=x.dtype).index_add_(0, labels, x)
    protos = protos / protos.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sims = x @ protos.T
    own = sims.gather(1, labels.unsqueeze(1)).squeeze(1)
    present = torch.bincount(labels, minlength=num_classes) > 0
    others = sims.masked_fill(~present, -math.inf).scatter(1, labels.unsqueeze(1), -math.inf)
    best, target = others.max(dim=1)
    return target, best - own


def sample_shots(
    labels: torch.Tensor, shots: int, num_classes: int, gen: torch.Generator
) -> tuple[torch.Tensor, list[int]]:
    """Indices of `shots` samples per class (all of a smaller class), sorted; and short classes."""
    if shots < 1:
        raise UsageError(f"--shots must be ≥ 1, got {shots}")
    chosen, short = [], []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        if len(members) < shots:
            short.append(c)
        chosen.append(members[torch.randperm(len(members), generator=gen)[:shots]])
    return torch.sort(torch.cat(chosen)).values, short


def transition_matrix(
    true_labels: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Realised transition matrix: row = true class, column = given label, rows sum to 1.

    A class with no samples gets an identity row.
    """
    counts = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    counts.index_put_((true_labels, labels), torch.ones(len(labels), dtype=torch.float64), True)
    totals = counts.sum(dim=1, keepdim=True)
    eye = torch.eye(num_classes, dtype=torch.float64)
    return torch.where(totals > 0, counts / totals.clamp_min(1), eye)


def per_class_rate(true_labels: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Fraction of each class's samples whose given label is wrong (NaN for an empty class)."""
    wrong = torch.bincount(true_labels[labels != true_labels], minlength=num_classes).double()
    total = torch.bincount(true_labels, minlength=num_classes).double()
    return torch.where(total > 0, wrong / total.clamp_min(1), torch.full_like(total, math.nan))


def corrupt(
    kind: str,
    labels: torch.Tensor,
    num_classes: int,
    seed: int = 0,
    shots: int | None = None,
    **options: Any,
) -> tuple[torch.Tensor, NoiseResult, list[int]]:
    """Few-shot sampling (when `shots`) then noise `kind`: (index, noisy labels, short classes)."""
    spec = get(kind)
    gen = torch.Generator().manual_seed(int(seed))
    labels = labels.long()
    if shots is not None:
        index, short = sample_shots(labels, shots, num_classes, gen)
    else:
        index, short = torch.arange(len(labels)), []
    # Per-sample options follow the samples through the shot sampling.
    for name in ("features", "given"):
        if options.get(name) is not None:
            options[name] = options[name][index]
    result = spec.fn(labels[index], num_classes, gen, **options)
    return index, result, short
