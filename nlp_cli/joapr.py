"""JoAPR's pieces (CVPR 2024): loss-GMM partition, label refurbishment, feature-level mixup.

The training loop (train.py, `method = "joapr"`) calls these once per epoch and per batch:

* `partition`: every training sample's cross-entropy at the current prompt, min-max scaled,
  a two-component GMM on it; `w_i` = posterior of the low-loss component, clean ⇔ w_i > threshold.
* `refurbish`: `target_i = w_i·onehot(y_i) + (1 − w_i)·p_i` with `p_i` the current prediction
  (detached), then sharpened, `t^(1/T) / Σ t^(1/T)` (T = 0.5 as in DivideMix, on which JoAPR
  builds; T = 1 leaves the targets as written). The public JoAPR trainer sharpens both sets and
  gives the noisy set `p_i` alone; here the noisy set keeps the written formula (its w_i is small).
* `mixup`: `λ ~ Beta(α, α)`, `λ ← max(λ, 1 − λ)` so each mixed sample stays closest to its own,
  `x̃ = λ x + (1 − λ) x[perm]` re-normalised to the unit sphere (CLIP's logits are cosines),
  `t̃ = λ t + (1 − λ) t[perm]`; the loss is the soft-target cross-entropy `−Σ_c t̃_c log p̃_c`
  plus `prior_penalty`, `Σ_c π_c log(π_c / p̄_c)` with π uniform and p̄ the batch's mean
  prediction (weight 1, DivideMix's regulariser, which the public JoAPR trainer adds): without
  it, sharpened self-predictions drift towards whichever class the prompt favours.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nlp_cli.purify import gmm_clean_posterior


@torch.no_grad()
def partition(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Posterior w_i of the low-loss GMM component on each sample's min-max scaled CE."""
    loss = F.cross_entropy(logits.float(), labels, reduction="none")
    w, _ = gmm_clean_posterior(loss)
    return w.to(logits.device, torch.float32)


@torch.no_grad()
def refurbish(
    labels: torch.Tensor,
    probs: torch.Tensor,
    w: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Soft targets w·onehot(y) + (1 − w)·p, sharpened at `temperature` (1 = as written)."""
    onehot = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
    w = w.to(probs.dtype).unsqueeze(1)
    target = w * onehot + (1 - w) * probs
    if temperature == 1.0:
        return target
    sharp = target.clamp_min(0) ** (1.0 / temperature)
    return sharp / sharp.sum(dim=1, keepdim=True).clamp_min(1e-12)


def mix_lambdas(alpha: float, n: int, seed: int, epoch: int) -> list[float]:
    """One mixing weight per batch of an epoch: λ ~ Beta(α, α), then max(λ, 1 − λ)."""
    rng = np.random.default_rng([seed, epoch, 0x4A0A])
    lam = rng.beta(alpha, alpha, size=n)
    return np.maximum(lam, 1.0 - lam).tolist()


def mixup(
    x: torch.Tensor, target: torch.Tensor, lam: float, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix unit image features (re-normalised) and soft targets with their `perm` partners."""
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
