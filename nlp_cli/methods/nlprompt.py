"""`nlprompt`: CE on PromptOT-clean samples, MAE on the noisy ones; with `repurify = "epoch"`,
PromptOT runs before every epoch with the current prompt, as NLPrompt's public code does."""

from __future__ import annotations

from typing import Any

import torch

from nlp_cli.methods import register
from nlp_cli.methods.standard import Standard
from nlp_cli.prompt import text_features_many


@register
class NLPrompt(Standard):
    """The `nlprompt` loss on a partition: given once (the pipe) or re-made each epoch."""

    name = "nlprompt"

    def check_data(self, config: Any, data: Any) -> None:
        if config.repurify != "epoch":
            super().check_data(config, data)

    @torch.no_grad()
    def before_epoch(self, model: Any, runs: list[Any], epoch: int, scale: float) -> None:
        from nlp_cli.purify import promptot

        again = [r for r in runs if r.config.repurify == "epoch"]
        if not again:
            return
        texts = text_features_many(model, [r.learner for r in again])
        for r, t in zip(again, texts, strict=True):
            result = promptot(r.train, r.normalise(t), r.given, scale, reg=0.01)
            r.epoch_clean = torch.as_tensor(result.clean, dtype=torch.bool, device=r.device)
