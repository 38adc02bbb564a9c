"""`joapr`: JoAPR (CVPR 2024) — a GMM partition on per-sample CE, refurbished and sharpened
targets, and feature-level mixup (the formulas are in `nlp_cli.joapr`)."""

from __future__ import annotations

from typing import Any

import torch

from nlp_cli import joapr
from nlp_cli.errors import UsageError
from nlp_cli.methods import epoch_seed, register
from nlp_cli.methods.standard import Standard
from nlp_cli.prompt import text_features_many


@register
class JoAPR(Standard):
    """Plain CE for `joapr_warmup` epochs, then refurbished targets with mixup every batch."""

    name = "joapr"
    settings = (
        "joapr_warmup",
        "joapr_alpha",
        "joapr_threshold",
        "joapr_temperature",
        "joapr_prior",
    )

    def validate(self, config: Any) -> None:
        if config.loss != "ce":
            raise UsageError(f"--method joapr trains with cross-entropy: drop --loss {config.loss}")
        if not 0 <= config.joapr_warmup < config.epochs:
            raise UsageError("--joapr-warmup must lie in [0, epochs)")
        if config.joapr_alpha <= 0 or not 0 <= config.joapr_threshold < 1:
            raise UsageError("--joapr-alpha must be positive and --joapr-threshold in [0, 1)")
        if config.joapr_temperature <= 0 or config.joapr_prior < 0:
            raise UsageError("--joapr-temperature must be positive and --joapr-prior ≥ 0")

    @torch.no_grad()
    def before_epoch(self, model: Any, runs: list[Any], epoch: int, scale: float) -> None:
        for r in runs:
            r.state.pop("soft", None)
        refurbishing = [r for r in runs if epoch >= r.config.joapr_warmup]
        if not refurbishing:
            return
        texts = text_features_many(model, [r.learner for r in refurbishing])
        for r, t in zip(refurbishing, texts, strict=True):
            c = r.config
            logits = scale * r.train @ r.normalise(t).T
            w = joapr.partition(logits, r.targets)
            soft = joapr.refurbish(r.targets, logits.float().softmax(dim=1), w, c.joapr_temperature)
            r.epoch_clean = w > c.joapr_threshold
            r.state["soft"] = soft
            r.state["lams"] = joapr.mix_lambdas(c.joapr_alpha, r.steps, c.seed, epoch)
            r.state["mix_g"] = torch.Generator().manual_seed(epoch_seed(c.seed, epoch, 7))

    def batch_loss(self, run: Any, idx: Any, text: Any) -> Any:
        soft = run.state.get("soft")
        if soft is None:  # warm-up: plain cross-entropy
            return super().batch_loss(run, idx, text)
        step = run.step
        perm = torch.randperm(len(idx), generator=run.state["mix_g"]).to(run.device)
        x, t = joapr.mixup(run.x_epoch[idx], soft[idx], run.state["lams"][step], perm)
        logits = run.logits(x, text)
        per = joapr.soft_ce(logits, t)
        loss = per.mean()
        if run.config.joapr_prior:
            loss = loss + run.config.joapr_prior * joapr.prior_penalty(logits)
        # λ ≥ 1/2: a mixed sample's loss is counted with the sample it mostly is.
        run.record(idx, per, loss)
        return loss
