"""Gradient statistics: how hard each loss pushes on correctly and wrongly labelled samples.

The gradient mass of a sample is Σ_i |∂ℓ/∂z_i|, the L1 norm of the gradient of that sample's
own loss with respect to its own logits (DSPT Fig. 3/7). For CE it is Σ|p − onehot_y| =
2(1 − p_y), so a confidently wrong prediction pushes with mass near 2; the double softmax
suppresses it towards 0 (DSPT Theorem 3.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nlp_cli import artifacts, clip_model, losses
from nlp_cli.data import LABEL_KINDS, load_data
from nlp_cli.errors import NlpError
from nlp_cli.prompt import PromptLearner, prompt_text_features

GROUPS = ("clean", "noisy")
STAT_KEYS = ("n", "mean", "median", "p90", "max")


def grad_mass(
    loss: str,
    logits: torch.Tensor,
    labels: torch.Tensor,
    clean: torch.Tensor | None = None,
    **knobs: Any,
) -> torch.Tensor:
    """Per-sample Σ_i |∂ℓ_b/∂z_bi| in float64, ℓ_b the per-sample loss of sample b."""
    z = logits.detach().double().requires_grad_(True)
    per = losses.per_sample_loss(loss, z, labels, clean, **knobs)
    # Each ℓ_b depends only on row b of z, so one backward of Σ_b ℓ_b yields every row's gradient.
    (grad,) = torch.autograd.grad(per.sum(), z)
    return grad.abs().sum(dim=1)


def summarize(values: torch.Tensor) -> dict[str, float | int | None]:
    """n, mean, median, 90th percentile and max (linear interpolation); None when empty."""
    v = values.detach().double().flatten()
    if v.numel() == 0:
        return {"n": 0, "mean": None, "median": None, "p90": None, "max": None}
    return {
        "n": int(v.numel()),
        "mean": float(v.mean()),
        "median": float(torch.quantile(v, 0.5)),
        "p90": float(torch.quantile(v, 0.9)),
        "max": float(v.max()),
    }


@dataclass
class GradStats:
    """Gradient masses per loss, and which samples carry their true label."""

    masses: dict[str, torch.Tensor]
    correct: torch.Tensor

    def groups(self, loss: str) -> dict[str, torch.Tensor]:
        """The masses of one loss split into correctly ("clean") and wrongly ("noisy") labelled."""
        m = self.masses[loss]
        return {"clean": m[self.correct], "noisy": m[~self.correct]}

    def summary(self) -> dict[str, dict[str, dict[str, float | int | None]]]:
        """{loss: {"clean": stats, "noisy": stats}}, the command's JSON result."""
        return {
            name: {g: summarize(v) for g, v in self.groups(name).items()} for name in self.masses
        }


def gradient_stats(
    loss_names: list[str],
    logits: torch.Tensor,
    labels: torch.Tensor,
    true_labels: torch.Tensor,
    clean: torch.Tensor | None = None,
    knobs: dict[str, dict[str, Any]] | None = None,
) -> GradStats:
    """Gradient masses of each loss at these logits, grouped by labels == true_labels."""
    knobs = knobs or {}
    masses = {
        name: grad_mass(name, logits, labels, clean, **knobs.get(name, {})) for name in loss_names
    }
    return GradStats(masses=masses, correct=(labels == true_labels))


def histogram(
    values: torch.Tensor, bins: int, lo: float, hi: float
) -> tuple[list[int], list[float]]:
    """Counts over `bins` equal bins of [lo, hi] (the last bin closed) and the bin edges."""
    hi = hi if hi > lo else lo + 1.0
    v = values.detach().double().clamp(lo, hi)
    idx = ((v - lo) / (hi - lo) * bins).floor().long().clamp(0, bins - 1)
    counts = torch.bincount(idx, minlength=bins).tolist()
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    return counts, edges


@dataclass
class AnalysisInput:
    """Logits of a label set's samples at some prompt, their labels and, if known, a partition."""

    logits: torch.Tensor
    labels: torch.Tensor
    true_labels: torch.Tensor
    clean: torch.Tensor | None
    labelset: artifacts.Artifact
    features: artifacts.Artifact
    prompt: artifacts.Artifact | None = None
    info: dict[str, Any] = field(default_factory=dict)


def load_model_for(features: artifacts.Artifact, model: str | None = None) -> clip_model.LoadedClip:
    """The text tower of the CLIP model a features artifact was made with (`model` overrides
    the recorded one): the analyses read cached image features."""
    return clip_model.load_for(features.meta, model, image=False)


def prepare(
    labels_path: Path,
    prompt_path: Path | None = None,
    model: str | None = None,
) -> AnalysisInput:
    """Load a label set (or partition) and compute its train samples' logits at a prompt."""
    data = load_data(labels_path, LABEL_KINDS)
    ls, feats, index = data.source, data.features, data.index
    classnames = feats.classnames
    train = feats.tensors["train.features"]
    loaded = load_model_for(feats, model)
    prompt = None
    with torch.no_grad():
        if prompt_path is None:
            dataset = feats.meta.get("dataset")
            text = clip_model.class_prototypes(loaded.model, classnames, dataset)
        else:
            prompt = artifacts.load(prompt_path, "prompt")
            artifacts.check_compatible(prompt, feats, f"{prompt.path} and {feats.path}")
            text = prompt_text_features(loaded.model, prompt)
        text = text.float()
        text = text / text.norm(dim=-1, keepdim=True)
        image = train[index].float()
        image = image / image.norm(dim=-1, keepdim=True)
        logits = loaded.logit_scale * image @ text.T
    return AnalysisInput(
        logits=logits,
        labels=data.labels,
        true_labels=data.true_labels,
        clean=data.clean,
        labelset=ls,
        features=feats,
        prompt=prompt,
        info={"logit_scale": loaded.logit_scale, "model": loaded.identity},
    )


def gradient_over_training(
    data: AnalysisInput,
    loss_names: list[str],
    epochs: int,
    knobs: dict[str, dict[str, Any]] | None = None,
    seed: int = 1,
    model: str | None = None,
) -> dict[str, list[GradStats]]:
    """For each loss, train a prompt with it for `epochs` epochs (DSPT's protocol settings) and
    return the gradient statistics of that loss at the prompt after every epoch (DSPT Fig. 7)."""
    from nlp_cli import train
    from nlp_cli.prompt import text_features

    knobs = knobs or {}
    loaded = load_model_for(data.features, model)
    index = data.labelset.tensors["index"].long()
    # the label set and features are loaded and checked already: reuse them
    tdata = train.TrainData(
        data.features, data.labelset, index, data.labels, data.true_labels, data.clean
    )
    image = data.features.tensors["train.features"][index].float()
    image = image / image.norm(dim=-1, keepdim=True)
    out: dict[str, list[GradStats]] = {}
    for name in loss_names:
        config = train.make_config(
            "dspt", loss=name, epochs=epochs, seed=seed, **knobs.get(name, {})
        )
        per_epoch: list[GradStats] = []

        def look(epoch: int, learner: PromptLearner, name: str = name, acc=per_epoch) -> None:
            with torch.no_grad():
                text = text_features(loaded.model, learner).float()
                text = text / text.norm(dim=-1, keepdim=True)
                logits = loaded.logit_scale * image @ text.T
            acc.append(
                gradient_stats([name], logits, data.labels, data.true_labels, data.clean, knobs)
            )

        train.train_prompt(tdata, config, loaded=loaded, inspect=look)
        out[name] = per_epoch
    return out


def require_matplotlib() -> None:
    """Fail in one line, before any work, when matplotlib (the `plot` extra) is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise NlpError(
            "--plot needs matplotlib, which is not installed: pip install 'nlp-cli[plot]'"
        ) from None


def plot_histograms(stats: GradStats, path: Path, bins: int = 30) -> Path:
    """Save the clean/noisy gradient-mass histograms of every loss as a PNG (needs matplotlib)."""
    plt = _pyplot()
    names = list(stats.masses)
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        hi = max(float(stats.masses[name].max()) if stats.masses[name].numel() else 1.0, 1e-12)
        for group, values in stats.groups(name).items():
            if values.numel():
                ax.hist(values.numpy(), bins=bins, range=(0.0, hi), alpha=0.6, label=group)
        ax.set_title(name)
        ax.set_xlabel("Σ|∂L/∂z|")
        ax.legend()
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def _pyplot():
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def plot_history(history: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Loss of clean vs mislabelled samples and test accuracy per epoch (DSPT Fig. 4/9)."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for key, label in (("loss_clean", "correctly labelled"), ("loss_noisy", "mislabelled")):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            left.plot(epochs, [float("nan") if v is None else v for v in values], label=label)
    left.set_xlabel("epoch")
    left.set_ylabel("mean training loss")
    left.legend()
    acc = [h.get("test_acc") for h in history]
    right.plot(epochs, [float("nan") if a is None else 100 * a for a in acc])
    right.set_xlabel("epoch")
    right.set_ylabel("test accuracy (%)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_accuracy_vs_noise(
    table_rows: dict[str, dict[str, list[tuple[float, float]]]], path: Path
) -> Path:
    """Accuracy vs noise rate, one line per method, one panel per noise type (DSPT Fig. 1/6).

    `table_rows[noise_type][method]` = [(rate, accuracy fraction), …].
    """
    plt = _pyplot()
    from nlp_cli.tables import NOISE_ORDER

    kinds = sorted(table_rows, key=lambda k: (NOISE_ORDER.get(k, len(NOISE_ORDER)), k))
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for method, points in table_rows[kind].items():
            points = sorted(points)
            ax.plot([100 * r for r, _ in points], [100 * a for _, a in points], "o-", label=method)
        ax.set_title(f"{kind} noise")
        ax.set_xlabel("noise rate (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.legend()
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path
