"""`standard`: the loss alone (every loss of `nlp_cli.losses`), on the partition given if any."""

from __future__ import annotations

from typing import Any

from nlp_cli import losses
from nlp_cli.errors import UsageError
from nlp_cli.methods import Method, register


@register
class Standard(Method):
    """Each batch: the configured loss on the scaled cosine logits."""

    name = "standard"

    def check_data(self, config: Any, data: Any) -> None:
        if losses.get(config.loss).needs_partition and data.clean is None:
            raise UsageError(
                f"loss {config.loss!r} needs a clean/noisy partition: pipe the label set through "
                "`nlp purify` first, or pass --repurify epoch"
            )

    def batch_loss(self, run: Any, idx: Any, text: Any) -> Any:
        logits = run.logits(run.x_epoch[idx], text)
        y = run.targets[idx]
        part = run.epoch_clean[idx] if run.epoch_clean is not None else None
        per = losses.per_sample_loss(run.config.loss, logits, y, part, **run.knobs)
        if run.spec.keep is None:
            loss = per.mean()
        else:
            loss = per.sum() / run.spec.keep(logits.detach(), y).sum().clamp(min=1)
        run.record(idx, per, loss)
        return loss
