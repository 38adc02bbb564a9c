"""JoAPR's arithmetic (CVPR 2024), transcribed from yunncheng/JoAPR `trainers/joapr.py`.

The method (`nlp_cli.methods.joapr`) calls these; each names the reference lines it follows
(`JoAPR.forward_backward_x`, `JoAPR.eval_train`, `JoAPR.forward_backward`, the `NegEntropy`
class; defaults from `train.py` `extend_cfg` and `configs/trainers/JoAPR/rn50.yaml`; the
per-dataset table from the repository's README):

* warm-up (`forward_backward_x`): `CE(z, y) + α₁ · mean_i Σ_c p_ic log p_ic` — the negative
  entropy, so minimising it spreads the predictions while the prompt first fits the labels.
* division (`eval_train`), every epoch after the warm-up, on every training sample at the
  current prompt (the test transform: here the center-crop features): `ℓ_i = CE_i + H(p_i)`,
  min-max scaled over the training set, averaged over the last 5 epochs' scaled losses
  (`AVERAGE_LOSS`), then sklearn's `GaussianMixture(n_components=2, max_iter=10, tol=1e-2,
  reg_covar=5e-4)`; `w_i` = posterior of the lower-mean component. Two clean rules, OR-ed:
  `ℓ_i < τ∩` (`intersection_threshold`) and `w_i > τ_t`, the adaptive noise-rate threshold
  (`adaptive_threshold`). The refurbishment weight is `w_i · p_{i,y_i}` (`w_i` alone in the
  first epoch after the warm-up).
* training (`forward_backward`), each step one clean batch and one noisy batch: targets are
  made per batch at the current prompt, averaged over the views, sharpened — clean
  `sharpen(ω·onehot(y) + (1 − ω)·p̄)`, noisy `sharpen(p̄)` —, then mixup with one
  `λ ~ Beta(β, β)`, `λ ← max(λ, 1 − λ)` per step over the concatenated batch, soft-target CE
  plus `α₂ · Σ_c π_c log(π_c / p̄_c)` (π uniform, p̄ the mixed batch's mean prediction).

`sharpen` writes Dassl's `sharpen_prob(p, TEMP)` = `p^TEMP / Σ p^TEMP` (TEMP = 2) in the
DivideMix convention `p^(1/T)`, T = 1/TEMP = 0.5.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# sklearn.mixture.GaussianMixture as eval_train builds it.
GMM_SETTINGS = {"n_components": 2, "max_iter": 10, "tol": 1e-2, "reg_covar": 5e-4}
RULES = ("both", "intersection", "adaptive", "fixed")
# The noise ratios of the README's table: 2, 4, …, 12 false positives among 16 shots.
PRESET_RATES = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
# Without a preset (a dataset the table lacks, or `none`): warm-up 1 as in
# configs/trainers/JoAPR/rn50.yaml; α₁ 0.5 and α₂ 1.0 as train.py's extend_cfg and every row of
# the table but Caltech101 (rn50.yaml ships Caltech101's α₂ 0.5, the README's example).
DEFAULTS = {"warmup": 1, "entropy": 0.5, "prior": 1.0}


def _six(v):
    return list(v) if isinstance(v, list) else [v] * 6


def _cols(v):
    """(symflip six, pairflip six) from a number, a list of six (both) or a (sym, pair) tuple."""
    return (_six(v[0]), _six(v[1])) if isinstance(v, tuple) else (_six(v), _six(v))


def _row(warmup, entropy, prior) -> dict[str, list[dict[str, float]]]:
    """One dataset's (warm-up epochs, α₁, α₂) by noise type, one entry per tabulated ratio."""
    w, a1, a2 = _cols(warmup), _cols(entropy), _cols(prior)
    return {
        kind: [{"warmup": w[i][k], "entropy": a1[i][k], "prior": a2[i][k]} for k in range(6)]
        for i, kind in enumerate(("sym", "pair"))
    }


# README.md of yunncheng/JoAPR, "The settings of Warmup epochs, α₁, and α₂": per dataset,
# (symflip, pairflip) columns at 12.5 … 75 % noise. Keys are nlp's catalog names.
PRESETS: dict[str, dict[str, list[dict[str, float]]]] = {
    "imagenet": _row(1, 0.5, 1.0),
    "sun397": _row(1, 0.5, 1.0),
    "caltech101": _row(1, 0.5, 0.5),
    "oxford_flowers": _row(([20, 20, 20, 20, 20, 1], [20, 20, 20, 1, 1, 1]), 0.5, 1.0),
    "stanford_cars": _row(1, 0.5, 1.0),
    "fgvc_aircraft": _row(150, [0.1, 0.1, 0.1, 0.1, 0.1, 0.5], 1.0),
    "oxford_pets": _row(1, 0.2, 1.0),
    "ucf101": _row(([20, 20, 20, 20, 20, 1], [20, 20, 1, 1, 1, 1]), 0.5, 1.0),
    "eurosat": _row(
        ([10, 10, 10, 1, 1, 1], [10, 10, 10, 10, 1, 1]), [0.2, 0.2, 0.2, 0.2, 0.2, 0.1], 1.0
    ),
    "dtd": _row(1, ([0.2] * 6, [0.2, 0.2, 0.2, 0.2, 0.2, 0.1]), 1.0),
}


def preset_for(dataset: str, kind: str | None, rate: float | None) -> dict[str, float]:
    """The README's (warm-up, α₁, α₂) for a dataset at the tabulated noise ratio nearest `rate`.

    `pair` noise reads the pairflip columns, every other kind the symflip ones; no noise (or
    none recorded) reads the 12.5 % column.
    """
    column = "pair" if kind == "pair" else "sym"
    r = float(rate or 0.0)
    i = min(range(len(PRESET_RATES)), key=lambda k: (abs(PRESET_RATES[k] - r), k))
    return dict(PRESETS[dataset][column][i])


def neg_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample Σ_c p_c log p_c (NegEntropy averages it over the batch)."""
    p = F.softmax(logits.float(), dim=1)
    return (p * F.log_softmax(logits.float(), dim=1)).sum(dim=1)


def warmup_loss(logits: torch.Tensor, labels: torch.Tensor, alpha1: float) -> torch.Tensor:
    """Per-sample warm-up loss CE_i + α₁ Σ_c p_ic log p_ic; its mean is forward_backward_x's."""
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    return ce + alpha1 * neg_entropy(logits)


@torch.no_grad()
def division_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """eval_train's per-sample `CE + entropy`, min-max scaled over the set (float32, CPU)."""
    z = logits.float()
    loss = F.cross_entropy(z, labels, reduction="none") - neg_entropy(z)
    loss = loss.cpu()
    span = loss.max() - loss.min()
    # The reference divides by the span unguarded; equal losses (span 0) all read 0 here.
    return (loss - loss.min()) / span if float(span) > 0 else torch.zeros_like(loss)


def average_losses(history: list[torch.Tensor], last: int = 5) -> torch.Tensor:
    """Mean of the last `last` epochs' scaled losses (the whole history when shorter)."""
    return torch.stack(history[-last:]).mean(0)


def intersection_threshold(
    mean_clean: float, var_clean: float, mean_noise: float, var_noise: float
) -> float:
    """eval_train's `thres`, the root it takes of `A t² + B t + C = 0`, written as the code does.

    The code reads `gmm.covariances_` (variances, for 1-D data) into `std_*` and squares them
    again, and takes `log(2 s_c / s_n + 1e-8)`: with s = the variances,
    `A = s_n² − s_c²`, `B = 2(μ_n s_c² − μ_c s_n²)`,
    `C = (μ_c s_n)² − (μ_n s_c)² + 2 (s_n s_c)² log(2 s_c / s_n + 1e-8)`,
    `τ∩ = (−B + √(B² − 4AC)) / (2A + 1e-10)`; NaN when B² − 4AC < 0 (torch.sqrt's NaN, which
    no loss is below).
    """
    sc, sn, mc, mn = var_clean, var_noise, mean_clean, mean_noise
    a = sn**2 - sc**2
    b = 2 * (mn * sc**2 - mc * sn**2)
    c = (mc * sn) ** 2 - (mn * sc) ** 2 + 2 * (sn * sc) ** 2 * math.log(2 * sc / sn + 1e-8)
    e = b**2 - 4 * a * c
    if e < 0:
        return math.nan
    return (-b + math.sqrt(e)) / (2 * a + 1e-10)


def adaptive_threshold(posterior: torch.Tensor, previous: float) -> float:
    """eval_train's noise rate: the fraction of samples whose clean posterior is ≤ `previous`.

    The reference divides by num_classes × NUM_SHOTS, the few-shot training set's size; here
    the training set's size. The result is the next epoch's `previous` (0.5 at first).
    """
    n = len(posterior)
    return (n - int((posterior > previous).sum())) / n if n else 0.0


@dataclass
class Division:
    """One epoch's partition: GMM posterior, clean mask, thresholds and the fitted mixture."""

    posterior: torch.Tensor
    clean: torch.Tensor
    threshold: float  # the adaptive threshold used (the next epoch's previous)
    intersection: float
    means: list[float]
    variances: list[float]


def fit_gmm(loss: torch.Tensor, seed: int) -> tuple[torch.Tensor, list[float], list[float]]:
    """sklearn's two-component GMM on the losses: (posterior of the low-mean one, means, vars).

    The reference leaves `random_state` to numpy's global generator (seeded once per run);
    here each fit has its own seed, so a run and its resumed copy agree.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    x = loss.detach().cpu().float().numpy().reshape(-1, 1)
    gmm = GaussianMixture(**GMM_SETTINGS, random_state=seed % 2**32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(x)
    prob = gmm.predict_proba(x)
    means = gmm.means_.reshape(-1).astype(float)
    variances = gmm.covariances_.reshape(-1).astype(float)
    low = int(means.argmin())
    return torch.as_tensor(prob[:, low]), means.tolist(), variances.tolist()


def divide(loss: torch.Tensor, previous: float, rule: str, seed: int) -> Division:
    """GMM partition of the (averaged, scaled) losses under `rule`.

    `both` (the reference): clean ⇔ `ℓ < τ∩` or `w > τ_t`; `intersection`, `adaptive`: one of
    the two; `fixed`: `w > previous` with the threshold kept (a DivideMix-style cut).
    """
    post, means, variances = fit_gmm(loss, seed)
    lo, hi = int(np.argmin(means)), int(np.argmax(means))
    if lo == hi:  # equal means: the reference's argmin and argmax are both 0
        hi = 0
    cut = intersection_threshold(means[lo], variances[lo], means[hi], variances[hi])
    by_cut = loss.cpu() < cut
    if rule == "fixed":
        return Division(post, post > previous, previous, cut, means, variances)
    tau = adaptive_threshold(post, previous)
    by_tau = post > tau
    clean = {"both": by_cut | by_tau, "intersection": by_cut, "adaptive": by_tau}[rule]
    return Division(post, clean, tau, cut, means, variances)


def refurbish_weight(posterior: torch.Tensor, p_label: torch.Tensor, first: bool) -> torch.Tensor:
    """eval_train's returned `prob`: the posterior in the first epoch after the warm-up, then
    posterior × p_y (the prediction at the given label, from the same evaluation pass).

    The reference collects p_y in its loader's order (Dassl's RandomSampler) but the posterior
    by sample index, so its product pairs unrelated samples; here both are by sample index.
    """
    return posterior if first else posterior * p_label


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """`p^(1/T) / Σ p^(1/T)` (T = 0.5 is Dassl's sharpen_prob with TEMP 2; T = 1: unchanged)."""
    if temperature == 1.0:
        return p
    s = p.clamp_min(0) ** (1.0 / temperature)
    return s / s.sum(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def refurbish(
    labels: torch.Tensor, probs: torch.Tensor, w: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Clean targets: sharpen(w·onehot(y) + (1 − w)·p̄) at `temperature`."""
    onehot = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
    w = w.to(probs.dtype).unsqueeze(1)
    return sharpen(w * onehot + (1 - w) * probs, temperature)


def mix_lambdas(alpha: float, n: int, seed: int, epoch: int) -> list[float]:
    """One mixing weight per step of an epoch: λ ~ Beta(α, α), then max(λ, 1 − λ)."""
    rng = np.random.default_rng([seed, epoch, 0x4A0A])
    lam = rng.beta(alpha, alpha, size=n)
    return np.maximum(lam, 1.0 - lam).tolist()


def mixup(
    x: torch.Tensor, target: torch.Tensor, lam: float, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix unit features with their `perm` partners, re-normalised, and their soft targets.

    The reference mixes images before the image encoder; with cached features the mix is of
    features, put back on the unit sphere (CLIP's logits are cosines).
    """
    mixed = lam * x + (1 - lam) * x[perm]
    mixed = mixed / mixed.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return mixed, lam * target + (1 - lam) * target[perm]


def soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample soft-target cross-entropy −Σ_c t_c log softmax(z)_c."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1)


def prior_penalty(logits: torch.Tensor) -> torch.Tensor:
    """KL(uniform ‖ batch-mean prediction): Σ_c (1/C) log((1/C) / p̄_c)."""
    mean = F.softmax(logits.float(), dim=1).mean(dim=0)
    prior = torch.full_like(mean, 1.0 / mean.numel())
    return (prior * (prior / mean.clamp_min(1e-12)).log()).sum()
