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

from nlp_cli import artifacts, clip_model, losses
from nlp_cli.errors import ArtifactError, NlpError, UsageError, did_you_mean
from nlp_cli.prompt import POSITIONS, PromptLearner, learner_from_artifact, text_features

TARGETS = ("labels", "zero-shot")
REPURIFY = ("none", "epoch")


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

    def lr_at(self, epoch: int) -> float:
        """Learning rate of a (0-based) epoch: constant warm-up, then cosine from lr to 0."""
        if epoch < self.warmup_epochs:
            return self.warmup_lr
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * epoch / self.epochs))


# SPEC §4. DSPT's table lists plain SGD (no momentum, no warm-up); NLPrompt's scripts add
# momentum 0.9, weight decay 5e-4 and one warm-up epoch at 1e-5. Shots are chosen by `corrupt`.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "dspt": {"epochs": 50, "lr": 0.002, "batch_size": 32, "momentum": 0.0, "weight_decay": 0.0,
             "warmup_epochs": 0, "n_ctx": 16, "csc": False, "class_token_position": "end"},
    "nlprompt": {"epochs": 200, "lr": 0.002, "batch_size": 32, "momentum": 0.9,
                 "weight_decay": 5e-4, "warmup_epochs": 1, "warmup_lr": 1e-5, "n_ctx": 16,
                 "csc": False, "class_token_position": "end"},
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
    config.validate()
    if not isinstance(data, TrainData):
        data = load_data(data)
    spec = losses.get(config.loss)
    if spec.needs_partition and data.clean is None and config.repurify != "epoch":
        raise UsageError(
            f"loss {config.loss!r} needs a clean/noisy partition: pipe the label set through "
            "`nlp purify` first, or pass --repurify epoch"
        )
    knobs = config.knobs()
    device = torch.device(config.device)
    if loaded is None:
        loaded = clip_model.load_for(data.features.meta, device=device)
    model = loaded.model
    for p in model.parameters():
        p.requires_grad_(False)
    scale = loaded.logit_scale
    feats = data.features.tensors
    classnames = data.classnames

    train = _normalise(feats["train.features"][data.index]).to(device)
    views = feats.get("train.views")
    if views is not None:
        views = views[:, data.index]
    test_x = _normalise(feats["test.features"]).to(device)
    test_y = feats["test.labels"].long().to(device)
    given = data.labels.to(device)
    true = data.true_labels.to(device)
    targets = given
    if config.targets == "zero-shot":
        with torch.no_grad():
            hand = clip_model.hand_prompt_features(model, classnames).float().to(device)
            targets = (train @ hand.T).argmax(dim=1)
    correct = targets == true
    clean = data.clean.to(device) if data.clean is not None else None

    gen = torch.Generator().manual_seed(config.seed)
    learner = PromptLearner(
        model, classnames, n_ctx=config.n_ctx, ctx_init=config.ctx_init, csc=config.csc,
        position=config.class_token_position, generator=gen,
    ).to(device)
    if init_ctx is not None:
        if tuple(init_ctx.shape) != tuple(learner.ctx.shape):
            raise ArtifactError(
                f"the initial ctx has shape {tuple(init_ctx.shape)}, this prompt needs "
                f"{tuple(learner.ctx.shape)}"
            )
        with torch.no_grad():
            learner.ctx.copy_(init_ctx.to(learner.ctx))
    optim = torch.optim.SGD(
        [learner.ctx], lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    history: list[dict[str, Any]] = []
    start = 0
    if resume and checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint)
        if state.get("key") == run_key:
            with torch.no_grad():
                learner.ctx.copy_(state["ctx"].to(learner.ctx))
            optim.load_state_dict(state["optim"])
            history = list(state["history"])
            start = int(state["epoch"])

    n = len(targets)
    for epoch in range(start, config.epochs):
        lr = config.lr_at(epoch)
        for group in optim.param_groups:
            group["lr"] = lr
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g).to(device)
        x_epoch = train
        if views is not None:
            pick = torch.randint(views.shape[0], (n,), generator=g)
            x_epoch = _normalise(views[pick, torch.arange(n)]).to(device)
        epoch_clean = clean
        if config.repurify == "epoch":
            epoch_clean = _repurify(model, learner, train, given, scale)
        per_clean: list[torch.Tensor] = []
        per_noisy: list[torch.Tensor] = []
        batch_losses: list[float] = []
        for i in range(0, n, config.batch_size):
            idx = order[i : i + config.batch_size]
            text = _normalise(text_features(model, learner))
            logits = scale * x_epoch[idx] @ text.T
            y = targets[idx]
            part = epoch_clean[idx] if epoch_clean is not None else None
            per = losses.per_sample_loss(config.loss, logits, y, part, **knobs)
            if spec.keep is None:
                loss = per.mean()
            else:
                loss = per.sum() / spec.keep(logits.detach(), y).sum().clamp(min=1)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            per = per.detach()
            per_clean.append(per[correct[idx]].cpu())
            per_noisy.append(per[~correct[idx]].cpu())
            batch_losses.append(float(loss.detach()))
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "loss": sum(batch_losses) / len(batch_losses),
            "loss_clean": _mean(per_clean),
            "loss_noisy": _mean(per_noisy),
            "test_acc": accuracy(model, learner, test_x, test_y),
            "clean_frac": float(epoch_clean.float().mean()) if epoch_clean is not None else None,
        }
        history.append(record)
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                {"key": run_key, "epoch": epoch + 1, "ctx": learner.ctx.detach().cpu(),
                 "optim": optim.state_dict(), "history": history},
            )
            artifacts.step_done()
        if on_epoch is not None:
            on_epoch(record)
        if inspect is not None:
            inspect(epoch + 1, learner)

    prompt_meta = {
        "n_ctx": learner.n_ctx,
        "csc": config.csc,
        "position": config.class_token_position,
        "ctx_init": config.ctx_init,
    }
    info = {"logit_scale": scale, "knobs": knobs, "n_train": n, "resumed_at": start}
    return TrainResult(learner.ctx.detach().cpu().clone(), history, prompt_meta, config, info)


@torch.no_grad()
def accuracy(model: Any, learner: PromptLearner, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of the current prompt on normalised features `x`."""
    text = _normalise(text_features(model, learner))
    return float(((x @ text.T).argmax(dim=1) == y).float().mean()) if len(y) else 0.0


@torch.no_grad()
def _repurify(model, learner, image, labels, scale) -> torch.Tensor:
    try:
        from nlp_cli.purify import promptot
    except ImportError as e:
        raise NlpError("--repurify epoch needs PromptOT (nlp_cli.purify), not installed") from e
    text = _normalise(text_features(model, learner))
    result = promptot(image, text, labels, scale, reg=0.01)
    return torch.as_tensor(result.clean, dtype=torch.bool, device=labels.device)


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
