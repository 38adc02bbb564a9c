"""Classification metrics from predictions and labels (functional, no state)."""

from __future__ import annotations

import torch


def confusion(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Confusion matrix [C, C] of counts: row = true class, column = predicted class."""
    idx = target.long() * n_classes + pred.long()
    return torch.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Top-1 accuracy as a fraction (0 for no samples)."""
    return float((pred == target).double().mean()) if len(target) else 0.0


def per_class_recall(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Recall of each class [C]; NaN for a class with no samples."""
    cm = confusion(pred, target, n_classes).double()
    return cm.diagonal() / cm.sum(dim=1)


def mean_per_class_recall(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> float:
    """Mean recall over the classes that have samples."""
    r = per_class_recall(pred, target, n_classes)
    r = r[~r.isnan()]
    return float(r.mean()) if r.numel() else 0.0


def macro_f1(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> float:
    """Unweighted mean F1 over the classes present in `target` or `pred` (sklearn's macro)."""
    cm = confusion(pred, target, n_classes).double()
    tp = cm.diagonal()
    support, predicted = cm.sum(dim=1), cm.sum(dim=0)
    present = (support + predicted) > 0
    denom = support + predicted
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    return float(f1[present].mean()) if bool(present.any()) else 0.0


def summary(pred: torch.Tensor, target: torch.Tensor, classnames: list[str]) -> dict[str, object]:
    """acc1, mean_per_class_recall, macro_f1 and per_class_acc ({classname: recall})."""
    n_classes = len(classnames)
    recall = per_class_recall(pred, target, n_classes)
    return {
        "acc1": accuracy(pred, target),
        "mean_per_class_recall": mean_per_class_recall(pred, target, n_classes),
        "macro_f1": macro_f1(pred, target, n_classes),
        "per_class_acc": {
            name: (None if bool(r.isnan()) else float(r))
            for name, r in zip(classnames, recall, strict=True)
        },
        "n": int(len(target)),
    }
