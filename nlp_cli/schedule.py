"""Learning rate per epoch, optimiser defaults and loader rules of the reference code (SPEC §4).

Our own transcription of the arithmetic in these files (read, not copied):

* `KaiyangZhou/Dassl.pytorch: dassl/optim/lr_scheduler.py` (`build_lr_scheduler`,
  `_BaseWarmupScheduler`, `ConstantWarmupScheduler`);
* `KaiyangZhou/Dassl.pytorch: dassl/config/defaults.py` (`OPTIM.*` defaults) and
  `dassl/optim/optimizer.py` (how they reach `torch.optim.SGD`);
* `qunovo/NLPrompt: Dassl.pytorch/dassl/data/data_manager.py` (`build_data_loader`'s
  `drop_last`);
* `KaiyangZhou/CoOp: configs/trainers/CoOp/*.yaml`, `train.py`, `trainers/coop.py`, `COOP.md`;
* `qunovo/NLPrompt: configs/trainers/NLPrompt/*.yaml`, `train.py`, `trainers/nlprompt.py`,
  `utils.py`, `scripts/nlprompt/main.sh`, `README.md`.

How Dassl steps the learning rate (CoOp's `forward_backward` calls `update_lr()` after the last
batch of an epoch; NLPrompt's `run_epoch` calls it after its clean and noisy batches), so the lr
an epoch trains with is the one left by the step at the end of the previous epoch:

* `torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(MAX_EPOCH))` is built first; its
  construction takes one step, leaving its `last_epoch` at 0 and its last lr at the base lr.
* With `WARMUP_EPOCH > 0` it becomes the *successor* of a `ConstantWarmupScheduler`, whose own
  construction sets the lr to `WARMUP_CONS_LR`. `WARMUP_RECOUNT = True` (Dassl's default) leaves
  the successor's `last_epoch` at 0; `False` sets it to `WARMUP_EPOCH`.
* While the warm-up's `last_epoch < WARMUP_EPOCH` its step counts up and returns the constant;
  the step that reaches `WARMUP_EPOCH` hands over the successor's last lr (the base lr) without
  stepping it; every later step steps the successor once.
* torch's cosine step is the chainable form `lr ← lr · (1 + cos(πk/T)) / (1 + cos(π(k−1)/T))`
  (η_min = 0), applied to the optimiser's current lr, with k the successor's new `last_epoch`.

So with W warm-up epochs (0-based epoch e, T = max_epoch, base lr η):

| epoch | recount (Dassl default) | no recount | no warm-up |
|---|---|---|---|
| e < W | warmup_lr | warmup_lr | — |
| e = W | η | η | η (e = 0) |
| e > W | η·(1 + cos(π(e−W)/T))/2 | η·(1 + cos(πe/T))/(1 + cos(πW/T)) | η·(1 + cos(πe/T))/2 |

Under recount the cosine therefore runs one epoch late and never reaches 0: CoOp's
`vit_b16_ep50` trains epoch 0 at 1e-5, epoch 1 at 0.002, epoch 2 at 0.002·(1 + cos(π/50))/2 ≈
1.99803e-3, and its last epoch (49) at 0.002·(1 + cos(48π/50))/2 ≈ 7.885e-6. Without recount the
schedule is rescaled by 1/(1 + cos(πW/T)) (so epoch 1 still gets η, not the cosine's value).
`lr_table` repeats torch's chained products, so its floats equal the ones torch produces.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from nlp_cli.errors import UsageError, did_you_mean

SCHEDULES = ("cosine",)

# Dassl's OPTIM defaults that CoOp's and NLPrompt's configs leave untouched and that
# `build_optimizer` passes to `torch.optim.SGD` (MOMENTUM, WEIGHT_DECAY, SGD_DAMPNING,
# SGD_NESTEROV in dassl/config/defaults.py; dassl/optim/optimizer.py).
DASSL_SGD: dict[str, Any] = {
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "dampening": 0,
    "nesterov": False,
}

_DASSL = "KaiyangZhou/Dassl.pytorch: dassl/config/defaults.py"
_COOP_TRAIN = "KaiyangZhou/CoOp: train.py"
_NLP_TRAIN = "qunovo/NLPrompt: train.py"

# What CoOp's trainer configs share; each file only changes the backbone and MAX_EPOCH.
_COOP_COMMON: dict[str, Any] = {
    "optimizer": "sgd",
    **DASSL_SGD,
    "lr": 0.002,
    "schedule": "cosine",
    "warmup_type": "constant",
    "warmup_epochs": 1,
    "warmup_lr": 1e-5,
    "recount": True,  # Dassl's OPTIM.WARMUP_RECOUNT default; no config overrides it
    "batch_size": 32,
    "test_batch_size": 100,
    "sampler": "RandomSampler",  # Dassl's DATALOADER.TRAIN_X.SAMPLER default
    "input_size": (224, 224),
    "interpolation": "bicubic",
    "pixel_mean": (0.48145466, 0.4578275, 0.40821073),
    "pixel_std": (0.26862954, 0.26130258, 0.27577711),
    "transforms": ("random_resized_crop", "random_flip", "normalize"),
    "rrcrop_scale": (0.08, 1.0),  # Dassl's INPUT.RRCROP_SCALE default
    "final_model": "last_step",  # Dassl's TEST.FINAL_MODEL default
    # TRAINER.COOP.* defaults of CoOp's train.py (extend_cfg); scripts/coop/main.sh passes
    # N_CTX, CSC and CLASS_TOKEN_POSITION as arguments, COOP.md's examples use 16 / False / end.
    "n_ctx": 16,
    "csc": False,
    "ctx_init": "",
    "class_token_position": "end",
    "precision": "fp16",
}


def _coop(stem: str, backbone: str, max_epoch: int, **extra: Any) -> dict[str, Any]:
    source = (f"KaiyangZhou/CoOp: configs/trainers/CoOp/{stem}.yaml", _COOP_TRAIN, _DASSL)
    return {**_COOP_COMMON, "backbone": backbone, "max_epoch": max_epoch, **extra, "source": source}


def _nlprompt(stem: str, backbone: str, max_epoch: int) -> dict[str, Any]:
    source = (
        f"qunovo/NLPrompt: configs/trainers/NLPrompt/{stem}.yaml",
        _NLP_TRAIN,
        "qunovo/NLPrompt: trainers/nlprompt.py",
        "qunovo/NLPrompt: utils.py",
        _DASSL,
    )
    return {
        **_COOP_COMMON,
        "backbone": backbone,
        "max_epoch": max_epoch,
        # NLPrompt's train.py (extend_cfg) defaults; README's example runs 16 shots.
        "num_shots": 16,
        "use_ot": True,
        "ot_every_epoch": True,  # before_epoch re-runs OT_PL with the current prompt
        "reg_e": 0.01,  # Sinkhorn entropy `reg` (DATASET.REG_E)
        "sinkhorn_max_iter": 1000,
        "sinkhorn_stop_thr": 1e-6,
        "pmode": "logP",  # cost −log_softmax(softmax(logits))
        "curriculum_epoch": 0,  # DATASET.CURRICLUM_EPOCH (sic): 0 = full budget from epoch 0
        "begin_rate": 0.3,
        "curriculum_mode": "linear",
        "clean_loss": "ce",
        # GeneralizedCrossEntropy(q=1.0) = 1 − (p_y + 1e-6): our `mae` (1 − p_y) up to a constant
        "noisy_loss": "mae",
        "source": source,
    }


REFERENCE_CONFIGS: dict[str, dict[str, Any]] = {
    "coop/rn50_ep50": _coop("rn50_ep50", "RN50", 50),
    "coop/rn50_ep100": _coop("rn50_ep100", "RN50", 100),
    "coop/rn50": _coop("rn50", "RN50", 200),
    "coop/rn101_ep50": _coop("rn101_ep50", "RN101", 50),
    "coop/rn101": _coop("rn101", "RN101", 200),
    "coop/vit_b32_ep50": _coop("vit_b32_ep50", "ViT-B/32", 50),
    "coop/vit_b32": _coop("vit_b32", "ViT-B/32", 200),
    "coop/vit_b16_ep50": _coop("vit_b16_ep50", "ViT-B/16", 50),
    "coop/vit_b16_ep100": _coop("vit_b16_ep100", "ViT-B/16", 100),
    "coop/vit_b16": _coop("vit_b16", "ViT-B/16", 200),
    "coop/vit_b16_ep50_ctxv1": _coop("vit_b16_ep50_ctxv1", "ViT-B/16", 50, ctx_init="a photo of a"),
    "coop/rn50_ctxv1": _coop(
        "rn50_ctxv1",
        "RN50",
        200,
        ctx_init="a photo of a",
        transforms=("random_flip", "random_translation", "center_crop", "normalize"),
        final_model="best_val",
    ),
    "nlprompt/rn50": _nlprompt("rn50", "RN50", 200),
    "nlprompt/vit_b16_ep100": _nlprompt("vit_b16_ep100", "ViT-B/16", 100),
}

_SCHEDULE_KEYS = ("lr", "max_epoch", "warmup_epochs", "warmup_lr", "recount", "schedule")


def _check(lr: float, max_epoch: int, warmup_epochs: int, warmup_lr: float, schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise UsageError(
            f"unknown lr schedule {schedule!r}{did_you_mean(schedule, list(SCHEDULES))}: "
            f"choose from {', '.join(SCHEDULES)}"
        )
    if not (isinstance(max_epoch, int) and max_epoch >= 1):
        raise UsageError(f"max_epoch must be a positive integer, not {max_epoch!r}")
    if not (isinstance(warmup_epochs, int) and warmup_epochs >= 0):
        raise UsageError(f"warm-up epochs must be an integer ≥ 0, not {warmup_epochs!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"lr must be positive and finite, not {lr!r}")
    if not (math.isfinite(warmup_lr) and warmup_lr >= 0):
        raise UsageError(f"warm-up lr must be ≥ 0 and finite, not {warmup_lr!r}")


@lru_cache(maxsize=64)
def _table(
    lr: float, max_epoch: int, warmup_epochs: int, warmup_lr: float, recount: bool
) -> tuple[float, ...]:
    t_max = float(max_epoch)
    out = [float(warmup_lr)] * min(warmup_epochs, max_epoch)
    # The successor's last_epoch when it takes over: 0 after its own construction, or
    # WARMUP_EPOCH when Dassl does not recount. It then holds the base lr.
    k = 0 if recount or warmup_epochs == 0 else warmup_epochs
    current = float(lr)
    for _ in range(warmup_epochs, max_epoch):
        out.append(current)
        k += 1
        # torch's chainable step (η_min = 0). Its other branch, at k = T + 1, lies beyond any
        # epoch here.
        ratio = (1 + math.cos(math.pi * k / t_max)) / (1 + math.cos(math.pi * (k - 1) / t_max))
        current = ratio * current
    return tuple(out)


def lr_table(
    *,
    lr: float,
    max_epoch: int,
    warmup_epochs: int,
    warmup_lr: float,
    recount: bool = True,
    schedule: str = "cosine",
) -> list[float]:
    """The learning rate of every (0-based) epoch, as Dassl's scheduler sets it."""
    _check(lr, max_epoch, warmup_epochs, warmup_lr, schedule)
    return list(_table(float(lr), max_epoch, warmup_epochs, float(warmup_lr), bool(recount)))


def lr_at(
    epoch: int,
    *,
    lr: float,
    max_epoch: int,
    warmup_epochs: int,
    warmup_lr: float,
    recount: bool = True,
    schedule: str = "cosine",
) -> float:
    """The learning rate Dassl trains (0-based) `epoch` with."""
    _check(lr, max_epoch, warmup_epochs, warmup_lr, schedule)
    if not (isinstance(epoch, int) and 0 <= epoch < max_epoch):
        raise UsageError(f"epoch must lie in [0, {max_epoch}), not {epoch!r}")
    return _table(float(lr), max_epoch, warmup_epochs, float(warmup_lr), bool(recount))[epoch]


def reference_config(name: str) -> dict[str, Any]:
    """A copy of one entry of REFERENCE_CONFIGS, by name."""
    if name not in REFERENCE_CONFIGS:
        raise UsageError(
            f"unknown reference config {name!r}{did_you_mean(name, list(REFERENCE_CONFIGS))}"
        )
    return dict(REFERENCE_CONFIGS[name])


def reference_lr_table(name: str) -> list[float]:
    """The per-epoch learning rates of a reference config."""
    config = reference_config(name)
    return lr_table(**{k: config[k] for k in _SCHEDULE_KEYS})


def drop_last(n: int, batch_size: int, is_train: bool = True) -> bool:
    """Whether Dassl's loader drops the last incomplete batch: training loaders of ≥ one batch.

    `build_data_loader` passes `drop_last=is_train and len(data_source) >= batch_size` to the
    DataLoader (qunovo/NLPrompt: Dassl.pytorch/dassl/data/data_manager.py), so a training set
    smaller than one batch keeps its single short batch. NLPrompt builds its loader once on the
    whole training set and later deletes samples from deep copies of it, so its clean and noisy
    loaders keep `drop_last=True` even when a subset falls below one batch (it then yields none).
    """
    if n < 0 or batch_size < 1:
        raise UsageError(f"need n ≥ 0 and batch_size ≥ 1, not n={n}, batch_size={batch_size}")
    return bool(is_train) and n >= batch_size
