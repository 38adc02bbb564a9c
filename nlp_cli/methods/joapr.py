"""`joapr`: JoAPR (CVPR 2024) as yunncheng/JoAPR's `trainers/joapr.py` trains (the arithmetic,
with its sources, is in `nlp_cli.joapr`).

Epochs `< joapr_warmup`: all samples in the loop's batches, CE + α₁ · negative entropy. Every
later epoch: the division on the center-crop features at the current prompt (CE + entropy,
min-max scaled, averaged over the last `joapr_average` epochs, sklearn's GMM, the clean rule),
then `max(clean batches, noisy batches)` steps, each one batch from a clean loader and one from
a noisy loader (each shuffled, `drop_last` as the loop's; the shorter one starts over with a
fresh shuffle, as the reference re-iterates it; an empty side gives no batch, where the
reference would stop), targets made per batch at the current prompt, averaged over
`joapr_views` views, mixup of the concatenated batch.

What cached features change: the reference mixes images and encodes the mix; here the mix is of
unit features, re-normalised. Views are the epoch's augmented view (one, as the reference's
Dassl loader gives one image per sample) or, with `joapr_views` K > 1, K cached views drawn per
batch. The RN50 encoder's BatchNorm runs in train mode in the reference; here it is frozen in
the cached features.

(warm-up, α₁, α₂) come from the README's per-dataset table (`joapr_preset`, `auto` = the
features' dataset, at the label set's noise type and nearest tabulated ratio) unless given.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from nlp_cli import joapr
from nlp_cli.errors import UsageError
from nlp_cli.methods import epoch_seed, register
from nlp_cli.methods.standard import Standard
from nlp_cli.prompt import text_features_many

PRESET_CHOICES = ("auto", "none", *joapr.PRESETS)


@register
class JoAPR(Standard):
    """CE + negative entropy for the warm-up, then GMM division, refurbishment and mixup."""

    name = "joapr"
    settings = (
        "joapr_preset",
        "joapr_warmup",
        "joapr_entropy",
        "joapr_prior",
        "joapr_alpha",
        "joapr_temperature",
        "joapr_threshold",
        "joapr_rule",
        "joapr_average",
        "joapr_views",
    )

    def validate(self, config: Any) -> None:
        c = config
        if c.loss != "ce":
            raise UsageError(f"--method joapr trains with cross-entropy: drop --loss {c.loss}")
        if c.joapr_preset not in PRESET_CHOICES:
            raise UsageError(f"--joapr-preset must be one of {', '.join(PRESET_CHOICES)}")
        if c.joapr_warmup is not None and not 0 <= c.joapr_warmup < c.epochs:
            raise UsageError("--joapr-warmup must lie in [0, epochs)")
        if c.joapr_alpha <= 0 or not 0 <= c.joapr_threshold < 1:
            raise UsageError("--joapr-alpha must be positive and --joapr-threshold in [0, 1)")
        if c.joapr_temperature <= 0:
            raise UsageError("--joapr-temperature must be positive")
        for flag, v in (("--joapr-prior", c.joapr_prior), ("--joapr-entropy", c.joapr_entropy)):
            if v is not None and v < 0:
                raise UsageError(f"{flag} must be ≥ 0")
        if c.joapr_rule not in joapr.RULES:
            raise UsageError(f"--joapr-rule must be one of {', '.join(joapr.RULES)}")
        if c.joapr_average < 1 or c.joapr_views < 1:
            raise UsageError("--joapr-average and --joapr-views must be at least 1")
        if c.joapr_views > 1 and c.augment != "views":
            raise UsageError("--joapr-views above 1 draws cached views: it needs --augment views")

    def resolve(self, config: Any, data: Any) -> Any:
        """The run's config with warm-up, α₁ and α₂ filled from the preset where not given."""
        c = config
        name = c.joapr_preset
        if name == "auto":
            name = data.features.meta.get("dataset")
        noise = data.source.meta.get("noise") or {}
        row = dict(joapr.DEFAULTS)
        if name in joapr.PRESETS:
            row = joapr.preset_for(name, noise.get("type"), noise.get("rate"))
        given = {"warmup": c.joapr_warmup, "entropy": c.joapr_entropy, "prior": c.joapr_prior}
        got = {k: row[k] if v is None else v for k, v in given.items()}
        if got["warmup"] >= c.epochs:
            raise UsageError(
                f"the JoAPR preset {name!r} warms up for {got['warmup']} epochs, not fewer than "
                f"--epochs {c.epochs}: train longer or set --joapr-warmup"
            )
        return dataclasses.replace(
            c,
            joapr_warmup=int(got["warmup"]),
            joapr_entropy=float(got["entropy"]),
            joapr_prior=float(got["prior"]),
        )

    def check_data(self, config: Any, data: Any) -> None:
        if len(data.labels) < 2:
            raise UsageError("--method joapr fits a two-component GMM: it needs ≥ 2 samples")
        if config.joapr_views > 1 and "train.views" not in data.features.tensors:
            raise UsageError(
                f"--joapr-views {config.joapr_views}: {data.features.path.name} holds no "
                "augmented views (`nlp embed … --views K`)"
            )

    @torch.no_grad()
    def before_epoch(self, model: Any, runs: list[Any], epoch: int, scale: float) -> None:
        for r in runs:
            r.state = {}
        dividing = [r for r in runs if epoch >= r.config.joapr_warmup]
        if not dividing:
            return
        texts = text_features_many(model, [r.learner for r in dividing])
        for r, t in zip(dividing, texts, strict=True):
            c = r.config
            logits = scale * r.train @ r.normalise(t).T
            history = r.carry.setdefault("losses", [])
            history.append(joapr.division_losses(logits, r.targets))
            del history[: -c.joapr_average]
            loss = joapr.average_losses(history, c.joapr_average)
            previous = r.carry.get("threshold", c.joapr_threshold)
            d = joapr.divide(loss, previous, c.joapr_rule, epoch_seed(c.seed, epoch, 11))
            r.carry["threshold"] = d.threshold
            p_label = logits.float().softmax(dim=1).gather(1, r.targets[:, None])[:, 0].cpu()
            first = epoch == c.joapr_warmup
            w = joapr.refurbish_weight(d.posterior.float(), p_label, first)
            r.epoch_clean = d.clean.to(r.device)
            r.state["w"] = w.to(r.device)
            _two_loaders(r, epoch)
            r.state["lams"] = joapr.mix_lambdas(c.joapr_alpha, r.steps, c.seed, epoch)
            r.state["g"] = torch.Generator().manual_seed(epoch_seed(c.seed, epoch, 7))

    def batch_loss(self, run: Any, idx: Any, text: Any) -> Any:
        c = run.config
        if "w" not in run.state:  # warm-up: CE + α₁ · negative entropy
            logits = run.logits(run.x_epoch[idx], text)
            per = joapr.warmup_loss(logits, run.targets[idx], c.joapr_entropy)
            loss = per.mean()
            run.record(idx, per, loss)
            return loss
        k = run.state["n_clean"][run.step]
        g = run.state["g"]
        views = _views(run, idx, g)  # (K, b, d)
        n_views = views.shape[0]
        with torch.no_grad():
            t = text.detach()
            probs = torch.stack([run.logits(v, t).float().softmax(dim=1) for v in views]).mean(0)
            ix, iu = idx[:k], idx[k:]
            tx = joapr.refurbish(
                run.targets[ix], probs[:k], run.state["w"][ix], c.joapr_temperature
            )
            tu = joapr.sharpen(probs[k:], c.joapr_temperature)
        d = views.shape[-1]
        inputs = torch.cat([views[:, :k].reshape(-1, d), views[:, k:].reshape(-1, d)])
        targets = torch.cat([tx.repeat(n_views, 1), tu.repeat(n_views, 1)])
        owners = torch.cat([ix.repeat(n_views), iu.repeat(n_views)])
        perm = torch.randperm(len(inputs), generator=g).to(run.device)
        x, target = joapr.mixup(inputs, targets, run.state["lams"][run.step], perm)
        logits = run.logits(x, text)
        per = joapr.soft_ce(logits, target)
        loss = per.mean() + c.joapr_prior * joapr.prior_penalty(logits)
        # λ ≥ 1/2: a mixed sample's loss is counted with the sample it mostly is.
        run.record(owners, per, loss)
        return loss


def _views(run: Any, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The batch's K views: the epoch's view (K = 1), or K cached views drawn per sample."""
    k = run.config.joapr_views
    if k == 1:
        return run.x_epoch[idx].unsqueeze(0)
    cpu = idx.cpu()
    pick = torch.randint(run.views.shape[0], (k, len(cpu)), generator=g)
    return run.normalise(run.views[pick, cpu.expand(k, -1)]).to(run.device)


def _two_loaders(run: Any, epoch: int) -> None:
    """The epoch's steps: one clean and one noisy batch each, max(len(clean), len(noisy)) steps."""
    bs = run.config.batch_size
    g = torch.Generator().manual_seed(epoch_seed(run.config.seed, epoch, 13))

    def one_pass(pool: torch.Tensor) -> list[torch.Tensor]:
        idx = pool[torch.randperm(len(pool), generator=g)]
        if run.config.drop_last and len(idx) >= bs:
            idx = idx[: len(idx) - len(idx) % bs]
        return list(idx.split(bs)) if len(idx) else []

    sides = []
    for keep in (run.epoch_clean, ~run.epoch_clean):
        pool = keep.nonzero().flatten().cpu()
        sides.append((pool, one_pass(pool)))
    steps = max(len(b) for _, b in sides)
    for pool, batches in sides:
        while batches and len(batches) < steps:
            batches += one_pass(pool)
        del batches[steps:]
    (_, clean), (_, noisy) = sides
    empty = torch.zeros(0, dtype=torch.long)
    run.batches = []
    run.state["n_clean"] = []
    for s in range(steps):
        x = clean[s] if clean else empty
        u = noisy[s] if noisy else empty
        run.batches.append(torch.cat([x, u]).to(run.device))
        run.state["n_clean"].append(len(x))
    run.steps = steps
