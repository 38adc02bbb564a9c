"""How well a partition finds the noisy labels: precision, recall, F1 and AUROC."""

from __future__ import annotations

from typing import Any

import torch


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float | None:
    """Area under the ROC curve of `scores` ranking `positive` samples above the others.

    Rank-based (Mann–Whitney U) with tied scores given their average rank; None when either
    class is empty.
    """
    s = scores.detach().double().flatten()
    pos = positive.bool().flatten()
    n_pos = int(pos.sum())
    n_neg = len(s) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = torch.argsort(s)
    sorted_s = s[order]
    # Average rank (1-based) of each run of equal scores.
    _, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(s)
    ranks[order] = avg[inverse]
    u = float(ranks[pos].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def detection_metrics(
    clean: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    true_labels: torch.Tensor,
) -> dict[str, Any]:
    """Detection of noisy labels (labels ≠ true_labels) by a partition.

    Positive = flagged noisy (clean is False). AUROC ranks by −score (higher score = cleaner).
    Precision (recall) is None when nothing is flagged (nothing is noisy).
    """
    noisy = labels.long() != true_labels.long()
    flagged = ~clean.bool()
    tp = int((noisy & flagged).sum())
    n_noisy, n_flagged = int(noisy.sum()), int(flagged.sum())
    precision = tp / n_flagged if n_flagged else None
    recall = tp / n_noisy if n_noisy else None
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auroc": auroc(-scores.double(), noisy),
        "n_noisy": n_noisy,
        "n_flagged": n_flagged,
        "n": len(noisy),
    }
