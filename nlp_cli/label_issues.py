"""Which labels are wrong: confident learning's estimate, a ranking, and when not to trust it.

Every score here is one thing: the estimated probability that the given label is right
(cleanlab's `self_confidence`, p[i, y_i], for a classifier's probabilities). The number of
wrong labels is cleanlab's `num_label_issues` (the off-diagonal count of the confident
joint, Northcutt et al. 2021); the report flags that many, lowest scores first.

The warnings say when such a report cannot be trusted, whatever it ranks:

* `near_chance`: the classifier's predictions agree with the given labels hardly more often
  than guessing would (agreement < 1/C + max(0.1·(1 − 1/C), 3σ), σ = √(p0(1 − p0)/N),
  p0 = 1/C) — its disagreements are not evidence against a label;
* `not_separable`: the same rule for leave-one-out nearest-class-mean on the features
  (cosine) of the samples the report does not flag (all of them when fewer than 2·C remain):
  the features themselves do not tell the classes apart;
* `too_few`: a class has fewer than `MIN_PER_CLASS` samples, too few for its threshold;
* `most_wrong`: the estimate says at least half the labels are wrong: true of a benchmark at
  50 % noise, but a model that does not know the classes gives the same picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

MIN_PER_CLASS = 5
CHANCE_MARGIN = 0.1
# p_k a sample needs to count as confidently k when no sample is labelled k.
EMPTY_CLASS_THRESHOLD = 0.5


@dataclass
class LabelIssues:
    """Confident learning's verdict on every sample, and whether to trust it."""

    scores: torch.Tensor  # float64 [N]: estimated probability that the given label is right
    suggested: torch.Tensor  # int64 [N]: the most probable label
    flagged: torch.Tensor  # bool [N]: among the `num_issues` lowest scores
    rank: torch.Tensor  # int64 [N]: 1 = most suspicious
    num_issues: int  # cleanlab's num_label_issues
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def noise_rate(self) -> float:
        """The share of wrong labels the estimate implies."""
        return self.num_issues / max(len(self.scores), 1)


def self_confidence(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """p[i, y_i] for probabilities that sum to one per row (renormalised if they do not)."""
    p = probs.double()
    p = p / p.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return p.gather(1, labels.long().unsqueeze(1)).squeeze(1)


def ranking(scores: torch.Tensor) -> torch.Tensor:
    """Rank 1 for the lowest score (ties by index), as int64 [N]."""
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), i))
    rank = torch.empty(len(scores), dtype=torch.long)
    rank[torch.tensor(order, dtype=torch.long)] = torch.arange(1, len(scores) + 1)
    return rank


def num_label_issues(probs: torch.Tensor, labels: torch.Tensor) -> int:
    """cleanlab's estimate of how many given labels are wrong.

    A class that no sample is labelled with has no confident threshold (cleanlab's is the mean
    p_k over the samples labelled k), so cleanlab counts nothing into it; there the threshold
    is EMPTY_CLASS_THRESHOLD and the estimate comes from that confident joint.
    """
    import numpy as np
    from cleanlab.count import compute_confident_joint, get_confident_thresholds
    from cleanlab.count import num_label_issues as count

    y, p = _for_cleanlab(probs, labels)
    present = np.bincount(y, minlength=p.shape[1]) > 0
    if present.all():
        return int(count(y, p))
    thresholds = np.where(present, get_confident_thresholds(y, p), EMPTY_CLASS_THRESHOLD)
    joint = compute_confident_joint(y, p, thresholds=thresholds)
    return int(count(y, p, confident_joint=joint, estimation_method="off_diagonal_custom"))


def _for_cleanlab(probs: torch.Tensor, labels: torch.Tensor):
    p = probs.double()
    p = p / p.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return labels.long().numpy(), p.numpy()


def probe_probabilities(
    features: torch.Tensor, labels: torch.Tensor, n_classes: int, folds: int = 5, seed: int = 0
) -> torch.Tensor:
    """Out-of-fold probabilities [N, C] of a logistic regression on the normalised features.

    cleanlab's recipe: every sample is scored by a classifier that did not see its label.
    Folds are stratified, at most `folds` and at most the smallest class's count (≥ 2).
    """
    import warnings

    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = features.double()
    x = (x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()
    y = labels.long().numpy()
    counts = np.bincount(y, minlength=n_classes)
    k = int(max(2, min(folds, counts[counts > 0].min())))
    out = np.zeros((len(y), n_classes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for train, held in StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y):
            model = LogisticRegression(C=10.0, max_iter=2000).fit(x[train], y[train])
            out[np.ix_(held, model.classes_)] = model.predict_proba(x[held])
    return torch.from_numpy(out)


def near_chance(agreement: float, n_classes: int, n: int) -> bool:
    """Whether an agreement rate with the given labels is within reach of guessing."""
    p0 = 1.0 / max(n_classes, 1)
    sigma = math.sqrt(p0 * (1 - p0) / max(n, 1))
    return agreement < p0 + max(CHANCE_MARGIN * (1 - p0), 3 * sigma)


def nearest_mean_agreement(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> float:
    """Leave-one-out nearest-class-mean accuracy (cosine) against the given labels."""
    x = features.double()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    y = labels.long()
    sums = torch.zeros(n_classes, x.shape[1], dtype=x.dtype).index_add_(0, y, x)
    counts = torch.bincount(y, minlength=n_classes).double()
    # Centroid sums without the sample itself: s_c − x_i for its own class.
    sims = x @ sums.T
    own = sims.gather(1, y.unsqueeze(1)).squeeze(1) - (x * x).sum(dim=1)
    sims = sims.scatter(1, y.unsqueeze(1), own.unsqueeze(1))
    norms = sums.norm(dim=1).unsqueeze(0).expand_as(sims).clone()
    own_norm = (sums[y] - x).norm(dim=1)
    norms = norms.scatter(1, y.unsqueeze(1), own_norm.unsqueeze(1))
    empty = counts.unsqueeze(0).expand_as(sims).clone()
    empty = empty.scatter(1, y.unsqueeze(1), (counts[y] - 1).unsqueeze(1))
    cos = torch.where(empty > 0, sims / norms.clamp_min(1e-12), torch.full_like(sims, -math.inf))
    if len(y) == 0:
        return 0.0
    return float((cos.argmax(dim=1) == y).double().mean())


def find_label_issues(
    probs: torch.Tensor,
    labels: torch.Tensor,
    features: torch.Tensor | None = None,
    scores: torch.Tensor | None = None,
    classnames: list[str] | None = None,
) -> LabelIssues:
    """Confident learning on a classifier's probabilities [N, C]; `scores` may replace p[i, y].

    `features` [N, D] enables the separability check. The flagged samples are the
    `num_label_issues` with the lowest scores.
    """
    labels = labels.long()
    n, c = probs.shape
    score = self_confidence(probs, labels) if scores is None else scores.double()
    suggested = probs.argmax(dim=1).long()
    num = num_label_issues(probs, labels) if n else 0
    rank = ranking(score)
    flagged = rank <= num
    names = classnames or [str(i) for i in range(c)]
    counts = torch.bincount(labels, minlength=c)
    agreement = float((suggested == labels).double().mean()) if n else 0.0
    stats: dict[str, Any] = {
        "n": n,
        "n_classes": c,
        "agreement": agreement,
        "chance": 1.0 / c,
        "min_per_class": int(counts.min()) if c else 0,
    }
    warnings = []
    if near_chance(agreement, c, n):
        warnings.append(
            f"near_chance: the model's predictions agree with {agreement:.1%} of the labels, "
            f"close to chance ({1 / c:.1%}); it does not know these classes, so its "
            "suspects are guesses (try a linear probe, `nlp label-issues --probs probe`, a "
            "trained prompt with --prompt, or another --model)"
        )
    if features is not None and n:
        # Measured on the labels the report keeps, so that many wrong labels alone do not
        # make well-separated features look inseparable.
        kept = ~flagged if int((~flagged).sum()) >= 2 * c else torch.ones_like(flagged)
        separable = nearest_mean_agreement(features[kept], labels[kept], c)
        stats["nearest_mean_agreement"] = separable
        if near_chance(separable, c, n):
            warnings.append(
                f"not_separable: with these features a nearest-class-mean classifier "
                f"matches only {separable:.1%} of the labels it keeps (chance {1 / c:.1%}); "
                "the features do not tell the classes apart"
            )
    few = [(names[k], int(counts[k])) for k in range(c) if counts[k] < MIN_PER_CLASS]
    if few:
        listed = ", ".join(f"{name!r} ({k})" for name, k in few[:5])
        warnings.append(
            f"too_few: {len(few)} classes have fewer than {MIN_PER_CLASS} samples: {listed}; "
            "their estimates are unreliable"
        )
    if n and num >= n / 2:
        warnings.append(
            f"most_wrong: the estimate says {num} of {n} labels ({num / n:.0%}) are wrong; "
            "look at a few suspects before trusting it: a model that does not know the "
            "classes gives the same picture as labels that bad (a linear probe, "
            "`nlp label-issues --probs probe`, needs no class names)"
        )
    return LabelIssues(score, suggested, flagged, rank, num, warnings, stats)
