"""The prompt-learning loop: CoOp context vectors trained on cached image features.

The library never prints: progress goes through the `on_epoch` callback. A run is
deterministic on CPU for a given seed: the context init, the batch order and the augmented
view of every sample in every epoch come from generators seeded by (seed, epoch), so a run
resumed from its checkpoint ends with the same `ctx`, bit for bit, as an uninterrupted one.
After each epoch's checkpoint, `artifacts.step_done()` runs (the NLP_TEST_PAUSE test hook).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nlp_cli import artifacts, clip_model, joapr, losses
from nlp_cli.errors import ArtifactError, NlpError, UsageError, did_you_mean
from nlp_cli.prompt import POSITIONS, PromptLearner, learner_from_artifact, text_features_many

TARGETS = ("labels", "zero-shot")
REPURIFY = ("none", "epoch")
METHODS = ("standard", "joapr")
JOAPR_OPTIONS = (
    "joapr_warmup",
    "joapr_alpha",
    "joapr_threshold",
    "joapr_temperature",
    "joapr_prior",
)


@dataclass
class TrainConfig:
    """Every option of a training run (the keys of `--config FILE.yaml`)."""

    loss: str = "ce"
    epochs: int = 50
    lr: float = 0.002
    batch_size: int = 32
    momentum: float = 0.0
    weight_decay: float = 0.0
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    seed: int = 1
    device: str = "cpu"
    n_ctx: int = 16
    ctx_init: str | None = None
    csc: bool = False
    class_token_position: str = "end"
    targets: str = "labels"
    repurify: str = "none"
    q: float | None = None
    eps: float | None = None
    tau: float | None = None
    beta: float | None = None
    scale: float | None = None
    # JoAPR (joapr.py): CE warm-up epochs, mixup's Beta(α, α), the clean threshold on the GMM
    # posterior, the targets' sharpening temperature and the class-balance penalty's weight.
    method: str = "standard"
    joapr_warmup: int = 1
    joapr_alpha: float = 4.0
    joapr_threshold: float = 0.5
    joapr_temperature: float = 0.5
    joapr_prior: float = 1.0

    def options(self) -> dict[str, Any]:
        """The settings that define the run (JoAPR's only when it is the method)."""
        out = dataclasses.asdict(self)
        if self.method == "standard":
            for name in ("method", *JOAPR_OPTIONS):
                out.pop(name)
        return out

    def knobs(self) -> dict[str, float]:
        """The loss's knobs: its defaults overridden by the ones set here."""
        spec = losses.get(self.loss)
        given = {k: getattr(self, k) for k in ("q", "eps", "tau", "beta", "scale")}
        unused = [k for k, v in given.items() if v is not None and k not in spec.defaults]
        if unused:
            have = ", ".join(spec.defaults) or "none"
            raise UsageError(f"loss {self.loss!r} has no knob {unused[0]!r} (its knobs: {have})")
        return losses.resolve_knobs(self.loss, **{k: v for k, v in given.items() if v is not None})

    def validate(self) -> None:
        """Refuse impossible settings in one line."""
        losses.get(self.loss)
        self.knobs()
        if self.epochs < 1 or self.batch_size < 1 or self.n_ctx < 1:
            raise UsageError("--epochs, --batch-size and --n-ctx must be at least 1")
        if self.lr <= 0 or self.momentum < 0 or self.weight_decay < 0 or self.warmup_lr < 0:
            raise UsageError("--lr must be positive; momentum, weight decay, warm-up lr ≥ 0")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise UsageError("--warmup-epochs must lie in [0, epochs)")
        if self.class_token_position not in POSITIONS:
            raise UsageError(f"--class-token-position must be one of {', '.join(POSITIONS)}")
        if self.targets not in TARGETS:
            raise UsageError(f"--targets must be one of {', '.join(TARGETS)}")
        if self.repurify not in REPURIFY:
            raise UsageError(f"--repurify must be one of {', '.join(REPURIFY)}")
        if self.repurify == "epoch" and self.loss != "nlprompt":
            raise UsageError("--repurify epoch only applies to --loss nlprompt")
        if self.method not in METHODS:
            raise UsageError(
                f"unknown method {self.method!r}{did_you_mean(self.method, list(METHODS))}: "
                f"choose from {', '.join(METHODS)}"
            )
        if self.method == "joapr":
            if self.loss != "ce":
                raise UsageError(
                    f"--method joapr trains with cross-entropy: drop --loss {self.loss}"
                )
            if not 0 <= self.joapr_warmup < self.epochs:
                raise UsageError("--joapr-warmup must lie in [0, epochs)")
            if self.joapr_alpha <= 0 or not 0 <= self.joapr_threshold < 1:
                raise UsageError("--joapr-alpha must be positive and --joapr-threshold in [0, 1)")
            if self.joapr_temperature <= 0 or self.joapr_prior < 0:
                raise UsageError("--joapr-temperature must be positive and --joapr-prior ≥ 0")

    def lr_at(self, epoch: int) -> float:
        """Learning rate of a (0-based) epoch: constant warm-up, then cosine from lr to 0."""
        if epoch < self.warmup_epochs:
            return self.warmup_lr
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * epoch / self.epochs))


# SPEC §4. DSPT's table lists plain SGD (no momentum, no warm-up); NLPrompt's scripts add
# momentum 0.9, weight decay 5e-4 and one warm-up epoch at 1e-5. Shots are chosen by `corrupt`.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "dspt": {
        "epochs": 50,
        "lr": 0.002,
        "batch_size": 32,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "warmup_epochs": 0,
        "n_ctx": 16,
        "csc": False,
        "class_token_position": "end",
    },
    "nlprompt": {
        "epochs": 200,
        "lr": 0.002,
        "batch_size": 32,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "warmup_epochs": 1,
        "warmup_lr": 1e-5,
        "n_ctx": 16,
        "csc": False,
        "class_token_position": "end",
    },
}


def make_config(protocol: str | None = None, **options: Any) -> TrainConfig:
    """A TrainConfig from a protocol's settings overridden by `options` (None = not given)."""
    base: dict[str, Any] = {}
    if protocol is not None:
        if protocol not in PROTOCOLS:
            raise UsageError(
                f"unknown protocol {protocol!r}{did_you_mean(protocol, list(PROTOCOLS))}: "
                f"choose from {', '.join(PROTOCOLS)}"
            )
        base.update(PROTOCOLS[protocol])
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = [k for k in options if k not in names]
    if unknown:
        raise UsageError(f"unknown training option {unknown[0]!r}")
    base.update({k: v for k, v in options.items() if v is not None})
    config = TrainConfig(**base)
    config.validate()
    return config


@dataclass
class TrainData:
    """What a run trains on: the train samples' features, given and true labels, a partition."""

    features: artifacts.Artifact
    source: artifacts.Artifact
    index: torch.Tensor
    labels: torch.Tensor
    true_labels: torch.Tensor
    clean: torch.Tensor | None

    @property
    def classnames(self) -> list[str]:
        return self.features.classnames


def load_data(path: Path | str) -> TrainData:
    """A features artifact (its clean train labels), a label set or a partition."""
    art = artifacts.load(path, ("features", "labelset", "partition"))
    if art.kind == "features":
        labels = art.tensors["train.labels"].long()
        index = torch.arange(len(labels))
        return TrainData(art, art, index, labels, labels.clone(), None)
    feats = artifacts.load_upstream(art, "features", "features")
    artifacts.check_compatible(art, feats, f"{art.path} and its features {feats.path}")
    index = art.tensors["index"].long()
    n_train = feats.tensors["train.features"].shape[0]
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= n_train):
        raise ArtifactError(f"{art.path}: its index points outside {feats.path}'s train split")
    clean = art.tensors["clean"].bool() if art.kind == "partition" else None
    return TrainData(
        feats, art, index, art.tensors["labels"].long(), art.tensors["true_labels"].long(), clean
    )


@dataclass
class TrainResult:
    """A finished (or resumed and finished) run."""

    ctx: torch.Tensor
    history: list[dict[str, Any]]
    prompt_meta: dict[str, Any]
    config: TrainConfig
    info: dict[str, Any] = field(default_factory=dict)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True)


def _mean(values: list[torch.Tensor]) -> float | None:
    if not values:
        return None
    v = torch.cat(values)
    return float(v.double().mean()) if v.numel() else None


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a resumable checkpoint atomically."""
    with artifacts.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by save_checkpoint."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ArtifactError(
            f"{path} is not a readable training checkpoint: delete it to start over"
        ) from e


def train_prompt(
    data: TrainData | Path | str,
    config: TrainConfig,
    loaded: clip_model.LoadedClip | None = None,
    init_ctx: torch.Tensor | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    run_key: str | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    inspect: Callable[[int, PromptLearner], None] | None = None,
) -> TrainResult:
    """Train CoOp context vectors on cached image features; returns ctx and per-epoch history.

    `checkpoint` is written after every epoch; with `resume`, a checkpoint carrying the same
    `run_key` is continued from. `init_ctx` replaces the random or word initialisation.
    `inspect(epoch, learner)` sees the prompt after each epoch (analysis follows training with it).
    """
    callback = None if on_epoch is None else (lambda _run, record: on_epoch(record))
    look = None if inspect is None else (lambda _run, epoch, learner: inspect(epoch, learner))
    (result,) = train_many(
        [data],
        [config],
        loaded=loaded,
        init_ctxs=[init_ctx],
        checkpoints=[checkpoint],
        resume=resume,
        run_keys=[run_key],
        on_epoch=callback,
        inspect=look,
    )
    return result


BATCHED_ALIKE = ("device", "n_ctx", "ctx_init", "csc", "class_token_position")


class _Run:
    """One run's data, prompt, optimiser and epoch state inside train_many."""

    def __init__(
        self,
        data: TrainData,
        config: TrainConfig,
        model: Any,
        scale: float,
        device: torch.device,
        hand: Callable[[], torch.Tensor],
    ) -> None:
        self.config = config
        self.spec = losses.get(config.loss)
        if self.spec.needs_partition and data.clean is None and config.repurify != "epoch":
            raise UsageError(
                f"loss {config.loss!r} needs a clean/noisy partition: pipe the label set through "
                "`nlp purify` first, or pass --repurify epoch"
            )
        self.knobs = config.knobs()
        feats = data.features.tensors
        self.train = _normalise(feats["train.features"][data.index]).to(device)
        views = feats.get("train.views")
        self.views = views[:, data.index] if views is not None else None
        self.given = data.labels.to(device)
        true = data.true_labels.to(device)
        self.targets = self.given
        if config.targets == "zero-shot":
            self.targets = (self.train @ hand().T).argmax(dim=1)
        self.correct = self.targets == true
        self.clean = data.clean.to(device) if data.clean is not None else None
        self.learner = PromptLearner(
            model,
            data.classnames,
            n_ctx=config.n_ctx,
            ctx_init=config.ctx_init,
            csc=config.csc,
            position=config.class_token_position,
            generator=torch.Generator().manual_seed(config.seed),
        ).to(device)
        self.optim = torch.optim.SGD(
            [self.learner.ctx],
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        self.scale = scale
        self.device = device
        self.n = len(self.targets)
        self.steps = -(-self.n // config.batch_size)
        self.history: list[dict[str, Any]] = []
        self.start = 0

    def init_from(self, ctx: torch.Tensor) -> None:
        if tuple(ctx.shape) != tuple(self.learner.ctx.shape):
            raise ArtifactError(
                f"the initial ctx has shape {tuple(ctx.shape)}, this prompt needs "
                f"{tuple(self.learner.ctx.shape)}"
            )
        with torch.no_grad():
            self.learner.ctx.copy_(ctx.to(self.learner.ctx))

    def resume_from(self, checkpoint: Path, run_key: str | None) -> None:
        state = load_checkpoint(checkpoint)
        if state.get("key") == run_key:
            with torch.no_grad():
                self.learner.ctx.copy_(state["ctx"].to(self.learner.ctx))
            self.optim.load_state_dict(state["optim"])
            self.history = list(state["history"])
            self.start = int(state["epoch"])

    def active(self, epoch: int) -> bool:
        return self.start <= epoch < self.config.epochs

    def joapr_active(self, epoch: int) -> bool:
        return self.config.method == "joapr" and epoch >= self.config.joapr_warmup

    def begin_epoch(
        self, epoch: int, clean_now: torch.Tensor | None, soft: torch.Tensor | None = None
    ) -> None:
        self.lr = self.config.lr_at(epoch)
        for group in self.optim.param_groups:
            group["lr"] = self.lr
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        self.order = torch.randperm(self.n, generator=g).to(self.device)
        self.x_epoch = self.train
        if self.views is not None:
            pick = torch.randint(self.views.shape[0], (self.n,), generator=g)
            self.x_epoch = _normalise(self.views[pick, torch.arange(self.n)]).to(self.device)
        self.epoch_clean = clean_now if clean_now is not None else self.clean
        self.soft = soft
        if soft is not None:
            self.lams = joapr.mix_lambdas(
                self.config.joapr_alpha, self.steps, self.config.seed, epoch
            )
            self.mix_g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch + 7)
        self.per_clean: list[torch.Tensor] = []
        self.per_noisy: list[torch.Tensor] = []
        self.batch_losses: list[torch.Tensor] = []

    def batch_loss(self, step: int, text: torch.Tensor) -> torch.Tensor:
        bs = self.config.batch_size
        idx = self.order[step * bs : (step + 1) * bs]
        if self.soft is not None:
            return self._joapr_batch(step, idx, text)
        logits = self.scale * self.x_epoch[idx] @ _normalise(text).T
        y = self.targets[idx]
        part = self.epoch_clean[idx] if self.epoch_clean is not None else None
        per = losses.per_sample_loss(self.config.loss, logits, y, part, **self.knobs)
        if self.spec.keep is None:
            loss = per.mean()
        else:
            loss = per.sum() / self.spec.keep(logits.detach(), y).sum().clamp(min=1)
        per = per.detach()
        self.per_clean.append(per[self.correct[idx]].cpu())
        self.per_noisy.append(per[~self.correct[idx]].cpu())
        self.batch_losses.append(loss.detach())
        return loss

    def _joapr_batch(self, step: int, idx: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        perm = torch.randperm(len(idx), generator=self.mix_g).to(self.device)
        x, t = joapr.mixup(self.x_epoch[idx], self.soft[idx], self.lams[step], perm)
        logits = self.scale * x @ _normalise(text).T
        per = joapr.soft_ce(logits, t)
        loss = per.mean()
        if self.config.joapr_prior:
            loss = loss + self.config.joapr_prior * joapr.prior_penalty(logits)
        # λ ≥ 1/2: a mixed sample's loss is counted with the sample it mostly is.
        per = per.detach()
        self.per_clean.append(per[self.correct[idx]].cpu())
        self.per_noisy.append(per[~self.correct[idx]].cpu())
        self.batch_losses.append(loss.detach())
        return loss

    def end_epoch(self, epoch: int, test_acc: float) -> dict[str, Any]:
        losses_ = [float(v) for v in self.batch_losses]
        record = {
            "epoch": epoch + 1,
            "lr": self.lr,
            "loss": sum(losses_) / len(losses_),
            "loss_clean": _mean(self.per_clean),
            "loss_noisy": _mean(self.per_noisy),
            "test_acc": test_acc,
            "clean_frac": (
                float(self.epoch_clean.float().mean()) if self.epoch_clean is not None else None
            ),
        }
        self.history.append(record)
        return record

    def result(self, config: TrainConfig) -> TrainResult:
        prompt_meta = {
            "n_ctx": self.learner.n_ctx,
            "csc": config.csc,
            "position": config.class_token_position,
            "ctx_init": config.ctx_init,
        }
        info = {
            "logit_scale": self.scale,
            "knobs": self.knobs,
            "n_train": self.n,
            "resumed_at": self.start,
        }
        return TrainResult(
            self.learner.ctx.detach().cpu().clone(), self.history, prompt_meta, config, info
        )


def check_batchable(datas: list[TrainData], configs: list[TrainConfig]) -> None:
    """Refuse, in one line, runs that cannot share one text-encoder pass per step."""
    if len(datas) != len(configs) or not configs:
        raise UsageError("train_many needs one configuration per data set (and at least one)")
    first = datas[0].features
    for d in datas[1:]:
        if d.features.digest != first.digest:
            raise UsageError(
                f"runs trained together need the same features: {d.features.path} is not "
                f"{first.path}"
            )
    for c in configs[1:]:
        for name in BATCHED_ALIKE:
            if getattr(c, name) != getattr(configs[0], name):
                raise UsageError(
                    f"runs trained together need the same {name}: "
                    f"{getattr(configs[0], name)!r} vs {getattr(c, name)!r}"
                )


def train_many(
    datas: list[TrainData | Path | str],
    configs: list[TrainConfig],
    loaded: clip_model.LoadedClip | None = None,
    init_ctxs: list[torch.Tensor | None] | None = None,
    checkpoints: list[Path | None] | None = None,
    resume: bool = False,
    run_keys: list[str | None] | None = None,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    inspect: Callable[[int, int, PromptLearner], None] | None = None,
) -> list[TrainResult]:
    """Train R prompts over the same features at once; result r equals train_prompt's for run r.

    Runs may differ in loss, seed, label set or partition, learning-rate schedule, epochs and
    batch size; they must share the features, the device and the prompt layout. Every step
    encodes the prompts of all runs that still have a batch in one text-encoder pass
    (prompt.text_features_many) and backpropagates the sum of their losses: run r's ctx gets
    run r's gradient alone. `on_epoch(r, record)` and `inspect(r, epoch, learner)` are called
    as run r finishes an epoch.
    """
    configs = list(configs)
    for c in configs:
        c.validate()
    datas = [d if isinstance(d, TrainData) else load_data(d) for d in datas]
    check_batchable(datas, configs)
    n_runs = len(configs)
    init_ctxs = list(init_ctxs or [None] * n_runs)
    checkpoints = list(checkpoints or [None] * n_runs)
    run_keys = list(run_keys or [None] * n_runs)
    device = torch.device(configs[0].device)
    if loaded is None:
        loaded = clip_model.load_for(datas[0].features.meta, device=device)
    model = loaded.model
    for p in model.parameters():
        p.requires_grad_(False)
    scale = loaded.logit_scale
    classnames = datas[0].classnames
    test_x = _normalise(datas[0].features.tensors["test.features"]).to(device)
    test_y = datas[0].features.tensors["test.labels"].long().to(device)
    hand_cache: list[torch.Tensor] = []

    def hand() -> torch.Tensor:
        if not hand_cache:
            with torch.no_grad():
                feats = clip_model.hand_prompt_features(model, classnames)
                hand_cache.append(feats.float().to(device))
        return hand_cache[0]

    runs = []
    per_run = zip(datas, configs, init_ctxs, checkpoints, run_keys, strict=True)
    for data, config, ctx, ckpt, key in per_run:
        run = _Run(data, config, model, scale, device, hand)
        if ctx is not None:
            run.init_from(ctx)
        if resume and ckpt is not None and ckpt.exists():
            run.resume_from(ckpt, key)
        runs.append(run)

    first_epoch = min(r.start for r in runs)
    for epoch in range(first_epoch, max(c.epochs for c in configs)):
        active = [r for r in runs if r.active(epoch)]
        if not active:
            continue
        repurify = [r for r in active if r.config.repurify == "epoch"]
        cleans = _repurify_many(model, repurify, scale) if repurify else {}
        refurbishing = [r for r in active if r.joapr_active(epoch)]
        softs = _joapr_many(model, refurbishing, scale) if refurbishing else {}
        cleans |= {k: v[1] for k, v in softs.items()}
        for r in active:
            soft = softs[id(r)][0] if id(r) in softs else None
            r.begin_epoch(epoch, cleans.get(id(r)), soft)
        for step in range(max(r.steps for r in active)):
            stepping = [r for r in active if step < r.steps]
            texts = text_features_many(model, [r.learner for r in stepping])
            total = None
            for r, text in zip(stepping, texts, strict=True):
                loss = r.batch_loss(step, text)
                total = loss if total is None else total + loss
            for r in stepping:
                r.optim.zero_grad(set_to_none=True)
            total.backward()
            for r in stepping:
                r.optim.step()
        accs = accuracies(model, [r.learner for r in active], test_x, test_y)
        for r, acc in zip(active, accs, strict=True):
            record = r.end_epoch(epoch, acc)
            i = runs.index(r)
            if checkpoints[i] is not None:
                save_checkpoint(
                    checkpoints[i],
                    {
                        "key": run_keys[i],
                        "epoch": epoch + 1,
                        "ctx": r.learner.ctx.detach().cpu(),
                        "optim": r.optim.state_dict(),
                        "history": r.history,
                    },
                )
                artifacts.step_done()
            if on_epoch is not None:
                on_epoch(i, record)
            if inspect is not None:
                inspect(i, epoch + 1, r.learner)
    return [r.result(c) for r, c in zip(runs, configs, strict=True)]


@torch.no_grad()
def accuracy(model: Any, learner: PromptLearner, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of the current prompt on normalised features `x`."""
    return accuracies(model, [learner], x, y)[0]


@torch.no_grad()
def accuracies(
    model: Any, learners: list[PromptLearner], x: torch.Tensor, y: torch.Tensor
) -> list[float]:
    """Top-1 accuracy of each prompt on normalised features `x` (one encoder pass)."""
    texts = text_features_many(model, learners)
    if not len(y):
        return [0.0] * len(learners)
    return [float(((x @ _normalise(t).T).argmax(dim=1) == y).float().mean()) for t in texts]


@torch.no_grad()
def _repurify_many(model: Any, runs: list[_Run], scale: float) -> dict[int, torch.Tensor]:
    """PromptOT's clean mask for each run, with its current prompt (one encoder pass)."""
    try:
        from nlp_cli.purify import promptot
    except ImportError as e:
        raise NlpError("--repurify epoch needs PromptOT (nlp_cli.purify), not installed") from e
    texts = text_features_many(model, [r.learner for r in runs])
    out = {}
    for r, t in zip(runs, texts, strict=True):
        result = promptot(r.train, _normalise(t), r.given, scale, reg=0.01)
        out[id(r)] = torch.as_tensor(result.clean, dtype=torch.bool, device=r.given.device)
    return out


@torch.no_grad()
def _joapr_many(
    model: Any, runs: list[_Run], scale: float
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """JoAPR's refurbished targets and clean mask for each run, with its current prompt."""
    texts = text_features_many(model, [r.learner for r in runs])
    out = {}
    for r, t in zip(runs, texts, strict=True):
        logits = scale * r.train @ _normalise(t).T
        w = joapr.partition(logits, r.targets)
        c = r.config
        soft = joapr.refurbish(r.targets, logits.float().softmax(dim=1), w, c.joapr_temperature)
        out[id(r)] = (soft, w > c.joapr_threshold)
    return out


def import_coop(path: Path | str) -> tuple[torch.Tensor, dict[str, Any]]:
    """The `ctx` of a CoOp/NLPrompt (Dassl) prompt-learner checkpoint, and its other fields."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ArtifactError(f"{path} is not a readable PyTorch checkpoint") from e
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or "ctx" not in state:
        raise ArtifactError(f"{path} holds no prompt learner: its state dict has no 'ctx'")
    extra = {k: v for k, v in obj.items() if k in ("epoch",)} if isinstance(obj, dict) else {}
    return state["ctx"].float(), extra


def export_coop(
    path: Path | str, model: Any, prompt: artifacts.Artifact, epoch: int | None = None
) -> Path:
    """Write a prompt artifact as a Dassl checkpoint CoOp/NLPrompt load (`model.pth.tar-N`)."""
    learner = learner_from_artifact(model, prompt)
    history = prompt.meta.get("history") or []
    state = {
        "state_dict": {
            "ctx": learner.ctx.detach().cpu().clone(),
            "token_prefix": learner.token_prefix.cpu().clone(),
            "token_suffix": learner.token_suffix.cpu().clone(),
        },
        "epoch": int(epoch if epoch is not None else len(history)),
        "optimizer": None,
        "scheduler": None,
    }
    path = Path(path)
    with artifacts.atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path
