"""The per-epoch lr against torch's own schedulers stepped the way Dassl steps them."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from nlp_cli import schedule
from nlp_cli.errors import UsageError


class _DasslConstantWarmup(LRScheduler):
    """Our reading of Dassl's ConstantWarmupScheduler (dassl/optim/lr_scheduler.py)."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        self.cons_lr = cons_lr
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)


def _torch_lrs(lr, max_epoch, warmup_epochs, warmup_lr, recount):
    """Dassl's build_lr_scheduler on a dummy SGD, stepped once after every epoch."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr, **schedule.DASSL_SGD)
    sched = CosineAnnealingLR(opt, float(max_epoch))
    if warmup_epochs > 0:
        if not recount:
            sched.last_epoch = warmup_epochs
        sched = _DasslConstantWarmup(opt, sched, warmup_epochs, warmup_lr)
    lrs = []
    for _ in range(max_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("max_epoch", [50, 200])
@pytest.mark.parametrize(
    ("warmup_epochs", "recount"), [(1, True), (1, False), (0, True), (3, True), (3, False)]
)
def test_lr_table_equals_torch_stepped_as_dassl(max_epoch, warmup_epochs, recount):
    ours = schedule.lr_table(
        lr=0.002, max_epoch=max_epoch, warmup_epochs=warmup_epochs, warmup_lr=1e-5, recount=recount
    )
    assert ours == _torch_lrs(0.002, max_epoch, warmup_epochs, 1e-5, recount)


def test_recount_by_hand():
    kw = dict(lr=0.002, max_epoch=50, warmup_epochs=1, warmup_lr=1e-5)
    table = schedule.lr_table(**kw)
    assert table[0] == 1e-5
    assert table[1] == 0.002
    assert table[2] == pytest.approx(0.002 * (1 + math.cos(math.pi / 50)) / 2, rel=1e-14)
    assert table[2] == pytest.approx(1.9980267284282717e-3, rel=1e-14)
    assert table[49] == pytest.approx(0.002 * (1 + math.cos(48 * math.pi / 50)) / 2, rel=1e-12)
    assert table[49] == pytest.approx(7.885298685522235e-6, rel=1e-12)
    for e in range(1, 50):
        want = 0.002 * (1 + math.cos(math.pi * (e - 1) / 50)) / 2
        assert table[e] == pytest.approx(want, rel=1e-12)
    assert [schedule.lr_at(e, **kw) for e in range(50)] == table


def test_no_recount_and_no_warmup_by_hand():
    t = 200
    no_recount = schedule.lr_table(
        lr=0.002, max_epoch=t, warmup_epochs=1, warmup_lr=1e-5, recount=False
    )
    assert no_recount[:2] == [1e-5, 0.002]
    for e in range(1, t):
        want = 0.002 * (1 + math.cos(math.pi * e / t)) / (1 + math.cos(math.pi / t))
        assert no_recount[e] == pytest.approx(want, rel=1e-12)
    plain = schedule.lr_table(lr=0.002, max_epoch=t, warmup_epochs=0, warmup_lr=1e-5)
    for e in range(t):
        assert plain[e] == pytest.approx(0.002 * (1 + math.cos(math.pi * e / t)) / 2, rel=1e-12)
    assert plain[-1] == pytest.approx(1.2336751833941213e-07, rel=1e-12)


def test_reference_configs_name_their_sources_and_schedules():
    for name, config in schedule.REFERENCE_CONFIGS.items():
        assert config["source"][0].endswith(".yaml"), name
        assert config["lr"] == 0.002 and config["batch_size"] == 32
        assert (config["warmup_epochs"], config["warmup_lr"], config["recount"]) == (1, 1e-5, True)
        assert config["momentum"] == 0.9 and config["weight_decay"] == 5e-4
        assert config["dampening"] == 0 and config["nesterov"] is False
    assert schedule.REFERENCE_CONFIGS["coop/vit_b16_ep50"]["max_epoch"] == 50
    assert schedule.REFERENCE_CONFIGS["coop/rn50"]["max_epoch"] == 200
    nlprompt = schedule.reference_config("nlprompt/rn50")
    assert (nlprompt["backbone"], nlprompt["max_epoch"], nlprompt["num_shots"]) == ("RN50", 200, 16)
    assert nlprompt["reg_e"] == 0.01 and nlprompt["curriculum_epoch"] == 0
    table = schedule.reference_lr_table("coop/vit_b16_ep50")
    assert table == _torch_lrs(0.002, 50, 1, 1e-5, True)
    with pytest.raises(UsageError, match="did you mean"):
        schedule.reference_config("coop/vit_b16_ep5")


def test_drop_last():
    assert schedule.drop_last(100, 32) is True
    assert schedule.drop_last(32, 32) is True
    assert schedule.drop_last(31, 32) is False
    assert schedule.drop_last(100, 32, is_train=False) is False
    with pytest.raises(UsageError):
        schedule.drop_last(10, 0)


@pytest.mark.parametrize(
    "kw",
    [
        dict(lr=0.0),
        dict(lr=math.nan),
        dict(max_epoch=0),
        dict(warmup_epochs=-1),
        dict(warmup_lr=-1e-5),
        dict(schedule="cosin"),
    ],
)
def test_bad_arguments(kw):
    args = dict(lr=0.002, max_epoch=10, warmup_epochs=1, warmup_lr=1e-5) | kw
    with pytest.raises(UsageError):
        schedule.lr_table(**args)


def test_epoch_out_of_range():
    with pytest.raises(UsageError, match=r"\[0, 10\)"):
        schedule.lr_at(10, lr=0.002, max_epoch=10, warmup_epochs=1, warmup_lr=1e-5)
