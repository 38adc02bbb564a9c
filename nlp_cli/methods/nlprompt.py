"""`nlprompt`: CE on PromptOT-clean samples, MAE on the noisy ones.

With `repurify = "epoch"`, PromptOT runs before every epoch with the current prompt on this
epoch's (augmented) views, as NLPrompt's public code does (`before_epoch` over the training
loader, in eval mode). With `loaders = "separate"`, the epoch is then NLPrompt's `run_epoch`:
all clean batches first, then all noisy batches, each from its own shuffled loader that keeps
the training loader's `drop_last` (a subset smaller than a batch gives no batch). With
`drop_last`, the samples of the OT loader's last partial batch never reach the OT and count as
noisy, as there.
"""

from __future__ import annotations

from typing import Any

import torch

from nlp_cli.errors import UsageError
from nlp_cli.methods import epoch_seed, register
from nlp_cli.methods.standard import Standard
from nlp_cli.prompt import text_features_many


@register
class NLPrompt(Standard):
    """The `nlprompt` loss on a partition: given once (the pipe) or re-made each epoch."""

    name = "nlprompt"
    settings = ("ot_reg", "curriculum_epochs", "curriculum_begin", "curriculum_mode")

    def validate(self, config: Any) -> None:
        from nlp_cli.purify import CURRICULUM_MODES

        if not config.ot_reg > 0:
            raise UsageError(f"--ot-reg must be positive, got {config.ot_reg:g}")
        if config.curriculum_epochs < 0 or not 0 < config.curriculum_begin <= 1:
            raise UsageError("--curriculum-epochs must be ≥ 0 and --curriculum-begin in (0, 1]")
        if config.curriculum_mode not in CURRICULUM_MODES:
            raise UsageError(f"--curriculum-mode must be one of {', '.join(CURRICULUM_MODES)}")

    def check_data(self, config: Any, data: Any) -> None:
        if config.repurify != "epoch":
            super().check_data(config, data)

    @torch.no_grad()
    def before_epoch(self, model: Any, runs: list[Any], epoch: int, scale: float) -> None:
        from nlp_cli.purify import curriculum_budget, promptot

        again = [r for r in runs if r.config.repurify == "epoch"]
        if again:
            texts = text_features_many(model, [r.learner for r in again])
            for r, t in zip(again, texts, strict=True):
                seen = r.order
                if r.config.drop_last and r.n >= r.config.batch_size:
                    seen = r.order[: r.n - r.n % r.config.batch_size]
                clean = torch.zeros(r.n, dtype=torch.bool, device=r.device)
                c = r.config
                budget = None
                if c.curriculum_epochs:
                    budget = curriculum_budget(
                        epoch, c.curriculum_epochs, c.curriculum_begin, c.curriculum_mode
                    )
                x, y = r.x_epoch[seen], r.given[seen]
                result = promptot(x, r.normalise(t), y, scale, reg=c.ot_reg, budget=budget)
                clean[seen] = torch.as_tensor(result.clean, dtype=torch.bool, device=r.device)
                r.epoch_clean = clean
        for r in runs:
            if r.config.loaders == "separate" and r.epoch_clean is not None:
                _clean_then_noisy(r, epoch)


def _clean_then_noisy(run: Any, epoch: int) -> None:
    """This epoch's order: the clean loader's batches, then the noisy loader's."""
    bs = run.config.batch_size
    g = torch.Generator().manual_seed(epoch_seed(run.config.seed, epoch, 13))
    batches = []
    for keep in (run.epoch_clean, ~run.epoch_clean):
        idx = keep.nonzero().flatten().cpu()
        idx = idx[torch.randperm(len(idx), generator=g)]
        if run.config.drop_last:
            idx = idx[: len(idx) - len(idx) % bs]
        batches += [b.to(run.device) for b in idx.split(bs)]
    run.batches = batches
    run.steps = len(batches)
