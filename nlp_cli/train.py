"""The prompt-learning loop: CoOp context vectors trained on cached image features.

The loop is one screen (`train_many`); what differs between methods lives in
`nlp_cli.methods` (hooks before each epoch and per batch), the losses in `nlp_cli.losses`,
checkpoints and CoOp interop in `nlp_cli.checkpoints`. The library never prints: progress goes
through the `on_epoch` callback, and `on_checkpoint` runs after each epoch's checkpoint is on
disk. A run is deterministic on CPU for a given seed: the context init, the batch order and the
augmented view of every sample in every epoch come from generators seeded by (seed, epoch), so
a run resumed from its checkpoint ends with the same `ctx`, bit for bit, as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nlp_cli import clip_model, losses, methods, schedule
from nlp_cli.checkpoints import (  # noqa: F401  (re-exported: the old home of these)
    export_coop,
    import_coop,
    load_checkpoint,
    save_checkpoint,
)
from nlp_cli.data import TrainData, load_data  # noqa: F401  (re-exported)
from nlp_cli.errors import ArtifactError, NlpError, UsageError, did_you_mean
from nlp_cli.methods import epoch_seed
from nlp_cli.prompt import (
    POSITIONS,
    PromptLearner,
    encode_rows,
    pack_plans,
    plan_prompts,
    text_features_many,
)

TARGETS = ("labels", "zero-shot")
REPURIFY = ("none", "epoch")
AUGMENT = ("views", "online", "none")
LOADERS = ("mixed", "separate")
METHODS = ("standard", "joapr")  # the values of --method (nlprompt follows from --loss nlprompt)
COMPILE = ("auto", "on", "off")


@dataclass
class TrainConfig:
    """Every option of a training run (the keys of `--config FILE.yaml`).

    `knobs` holds the loss's knobs that were set (q, eps, tau, beta, scale, or whatever a loss
    registers); the other fields are the loop's. A knob may also be given by name to
    `make_config` and in config files (`q: 0.5`).
    """

    loss: str = "ce"
    epochs: int = 50
    lr: float = 0.002
    batch_size: int = 32
    momentum: float = 0.0
    weight_decay: float = 0.0
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    warmup_recount: bool = True  # Dassl's WARMUP_RECOUNT: the cosine restarts after the warm-up
    drop_last: bool = False  # Dassl's training loaders drop the last partial batch
    seed: int = 1
    device: str = "auto"  # resolved by make_config: cuda when present, else cpu
    precision: str | None = None  # fp32, fp16, bf16 or amp; None: fp16 on CUDA, fp32 on CPU
    # The step's text encoder through torch.compile: on, off, or auto (compiles_step: on CUDA
    # only). How the step runs, not what it computes: not part of a run's cache key.
    compile: str = "auto"
    n_ctx: int = 16
    ctx_init: str | None = None
    csc: bool = False
    class_token_position: str = "end"
    # Classes per text-encoder chunk, each recomputed in backward (prompt.resolve_chunk): None
    # = automatic (chunks of 256 above 512 classes), 0 = all classes at once.
    class_chunk: int | None = None
    targets: str = "labels"
    # views: each epoch draws one of the features' cached augmented views (center crop without
    # them); online: fresh CoOp augmentations through the image encoder every epoch; none:
    # the center crop only
    augment: str = "views"
    repurify: str = "none"
    # nlprompt: "mixed" batches, or NLPrompt's code: all clean batches (CE), then all noisy
    # batches (MAE), from separate loaders; with drop_last the OT's last partial batch is noisy.
    loaders: str = "mixed"
    # nlprompt with repurify "epoch" (methods/nlprompt.py): PromptOT's reg, and NLPrompt's
    # curriculum (CURRICLUM_EPOCH, BEGIN_RATE, CURRICLUM_MODE; 0 epochs = off, as there).
    ot_reg: float = 0.01
    curriculum_epochs: int = 0
    curriculum_begin: float = 0.3
    curriculum_mode: str = "linear"
    knobs: dict[str, float] = field(default_factory=dict)
    method: str = "standard"
    # JoAPR (methods/joapr.py, nlp_cli/joapr.py, from yunncheng/JoAPR): the per-dataset
    # preset (auto = the features' dataset; none = joapr.DEFAULTS: 1, 0.5, 1.0) fills
    # warm-up epochs, α₁ (warm-up negative entropy) and α₂ (class-balance penalty) left None;
    # mixup's Beta(β, β) (BETA 0.001), the targets' sharpening T (Dassl TEMP 2 = T 0.5), the
    # adaptive threshold's start (0.5), the clean rule, epochs of loss averaging, views.
    joapr_preset: str = "auto"
    joapr_warmup: int | None = None
    joapr_entropy: float | None = None
    joapr_prior: float | None = None
    joapr_alpha: float = 0.001
    joapr_temperature: float = 0.5
    joapr_threshold: float = 0.5
    joapr_rule: str = "both"
    joapr_average: int = 5
    joapr_views: int = 1

    @staticmethod
    def setting_names() -> list[str]:
        """What a config file may set: the fields (but `knobs`) and every loss knob by name."""
        names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "knobs"]
        return names + [k for k in losses.knob_names() if k not in names]

    @property
    def effective_method(self) -> str:
        """The method that runs: --method, or nlprompt for the nlprompt loss."""
        if self.method == "standard" and self.loss == "nlprompt":
            return "nlprompt"
        return self.method

    def options(self) -> dict[str, Any]:
        """The settings that define the run (a method's own only when it is the method)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("knobs", "compile")}
        # Knobs are recorded by name, each registered one present (None = the loss's default).
        out.update({k: self.knobs.get(k) for k in losses.knob_names()})
        if self.method == "standard":
            out.pop("method")
        if self.class_chunk is None:
            out.pop("class_chunk")
        for name in methods.list_methods():
            if name != self.effective_method:
                for setting in methods.get(name).settings:
                    out.pop(setting, None)
        return out

    def loss_knobs(self) -> dict[str, float]:
        """The loss's knobs: its defaults overridden by the ones set here."""
        spec = losses.get(self.loss)
        unused = [k for k in self.knobs if k not in spec.defaults]
        if unused:
            have = ", ".join(spec.defaults) or "none"
            raise UsageError(f"loss {self.loss!r} has no knob {unused[0]!r} (its knobs: {have})")
        return losses.resolve_knobs(self.loss, **self.knobs)

    def validate(self) -> None:
        """Refuse impossible settings in one line."""
        losses.get(self.loss)
        self.loss_knobs()
        ints = ("epochs", "batch_size", "n_ctx", "warmup_epochs", "seed", "curriculum_epochs")
        ints += ("joapr_average", "joapr_views")
        if self.joapr_warmup is not None:
            ints += ("joapr_warmup",)
        if self.class_chunk is not None:
            ints += ("class_chunk",)
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} must be a whole number, got {value!r}")
        for name in ("lr", "momentum", "weight_decay", "warmup_lr", "ot_reg", "curriculum_begin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"--{name.replace('_', '-')} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise UsageError(f"--{name.replace('_', '-')} must be finite, got {value}")
        for name in ("csc", "warmup_recount", "drop_last"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"--{name} must be true or false, got {getattr(self, name)!r}")
        if not 0 <= self.seed < 2**63:
            raise UsageError(f"--seed must lie in [0, 2**63), got {self.seed}")
        if self.class_chunk is not None and self.class_chunk < 0:
            raise UsageError(
                f"--class-chunk must be 0 (all at once) or more, got {self.class_chunk}"
            )
        if self.epochs < 1 or self.batch_size < 1 or self.n_ctx < 1:
            raise UsageError("--epochs, --batch-size and --n-ctx must be at least 1")
        if self.lr <= 0 or self.momentum < 0 or self.weight_decay < 0 or self.warmup_lr < 0:
            raise UsageError("--lr must be positive; momentum, weight decay, warm-up lr ≥ 0")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise UsageError("--warmup-epochs must lie in [0, epochs]")
        if self.class_token_position not in POSITIONS:
            raise UsageError(f"--class-token-position must be one of {', '.join(POSITIONS)}")
        if self.augment not in AUGMENT:
            raise UsageError(f"--augment must be one of {', '.join(AUGMENT)}")
        if self.targets not in TARGETS:
            raise UsageError(f"--targets must be one of {', '.join(TARGETS)}")
        if self.repurify not in REPURIFY:
            raise UsageError(f"--repurify must be one of {', '.join(REPURIFY)}")
        if self.repurify == "epoch" and self.loss != "nlprompt":
            raise UsageError("--repurify epoch only applies to --loss nlprompt")
        if self.loaders not in LOADERS:
            raise UsageError(f"--loaders must be one of {', '.join(LOADERS)}")
        if self.loaders == "separate" and self.loss != "nlprompt":
            raise UsageError("--loaders separate only applies to --loss nlprompt")
        if self.compile not in COMPILE:
            hint = did_you_mean(str(self.compile), list(COMPILE))
            raise UsageError(
                f"unknown --compile {self.compile!r}{hint}: choose from {', '.join(COMPILE)}"
            )
        if self.method not in METHODS:
            raise UsageError(
                f"unknown method {self.method!r}{did_you_mean(self.method, list(METHODS))}: "
                f"choose from {', '.join(METHODS)}"
            )
        methods.get(self.effective_method).validate(self)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of a (0-based) epoch as Dassl's scheduler sets it: constant warm-up,
        then torch's cosine (restarted after the warm-up with `warmup_recount`, Dassl's default)."""
        return schedule.lr_at(
            epoch,
            lr=self.lr,
            max_epoch=self.epochs,
            warmup_epochs=self.warmup_epochs,
            warmup_lr=self.warmup_lr,
            recount=self.warmup_recount,
        )

    def steps_for(self, n: int) -> int:
        """Batches in an epoch of n samples: Dassl drops the last partial batch of a training
        loader when n ≥ batch size (`drop_last`)."""
        if self.drop_last and schedule.drop_last(n, self.batch_size):
            return n // self.batch_size
        return -(-n // self.batch_size)


# The presets, each transcribed from the code behind a paper's numbers (docs/PROTOCOLS.md;
# nlp_cli.schedule.REFERENCE_CONFIGS names the source files). Shots are chosen by `corrupt`,
# augmented views by `embed --views`.
_COOP_VIT_B16_EP50: dict[str, Any] = {
    # KaiyangZhou/CoOp configs/trainers/CoOp/vit_b16_ep50.yaml with Dassl's OPTIM defaults
    "epochs": 50,
    "lr": 0.002,
    "batch_size": 32,
    "momentum": schedule.DASSL_SGD["momentum"],
    "weight_decay": schedule.DASSL_SGD["weight_decay"],
    "warmup_epochs": 1,
    "warmup_lr": 1e-5,
    "warmup_recount": True,
    "drop_last": True,
    "n_ctx": 16,
    "csc": False,
    "class_token_position": "end",
}
PROTOCOLS: dict[str, dict[str, Any]] = {
    "coop": dict(_COOP_VIT_B16_EP50),
    # DSPT follows "the same setting as CoOp" (its code is not public): CoOp's vit_b16_ep50.
    # The plain-SGD variant of earlier nlp versions: --momentum 0 --weight-decay 0
    # --warmup-epochs 0 --no-drop-last.
    "dspt": dict(_COOP_VIT_B16_EP50),
    # qunovo/NLPrompt scripts + configs/trainers/NLPrompt/rn50.yaml: 200 epochs, PromptOT
    # before every epoch with the current prompt, clean then noisy batches.
    "nlprompt": {
        **_COOP_VIT_B16_EP50,
        "epochs": 200,
        "repurify": "epoch",
        "loaders": "separate",
    },
}
# What a preset sets that only some losses accept: applied only to those.
_NLPROMPT_ONLY = ("repurify", "loaders")


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
        if options.get("loss", "ce") != "nlprompt":
            for name in _NLPROMPT_ONLY:
                base.pop(name, None)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    knob_names = set(losses.knob_names())
    unknown = [k for k in options if k not in names and k not in knob_names]
    if unknown:
        hint = did_you_mean(unknown[0], sorted(names | knob_names))
        raise UsageError(f"unknown training option {unknown[0]!r}{hint}")
    knobs = dict(options.pop("knobs", None) or {})
    for k in [k for k in options if k in knob_names and k not in names]:
        value = options.pop(k)
        if value is not None:
            knobs[k] = value
    base.update({k: v for k, v in options.items() if v is not None})
    base["device"] = clip_model.resolve_device(base.get("device", "auto"))
    base["precision"] = clip_model.resolve_precision(base.get("precision"), base["device"])
    if isinstance(base.get("compile"), bool):  # YAML reads a bare on / off as true / false
        base["compile"] = "on" if base["compile"] else "off"
    config = TrainConfig(**base, knobs=knobs)
    config.validate()
    return config


@dataclass
class TrainResult:
    """A finished (or resumed and finished) run."""

    ctx: torch.Tensor
    history: list[dict[str, Any]]
    prompt_meta: dict[str, Any]
    config: TrainConfig
    info: dict[str, Any] = field(default_factory=dict)


def needs_images(configs: Iterable[TrainConfig]) -> bool:
    """Whether any of these runs encodes images (`--augment online`): the others train on
    cached features and need CLIP's text tower only."""
    return any(c.augment == "online" for c in configs)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True)


def _mean(values: list[torch.Tensor]) -> float | None:
    if not values:
        return None
    v = torch.cat(values)
    return float(v.double().mean()) if v.numel() else None


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


BATCHED_ALIKE = (
    "device",
    "precision",
    "compile",
    "n_ctx",
    "ctx_init",
    "csc",
    "class_token_position",
    "class_chunk",
)


# `--compile auto` on CPU (benchmarks/bench_compile.py, benchmarks/README.md): with a ViT-B/16
# text tower (width 512) the compiled step was 1.17x (C = 10) and 1.87x (C = 100) faster, after
# 71-257 s of compiling, repaid after about 150-250 steps; with the offline world's tiny tower
# it was slower end to end even with a warm compile cache. Thresholds with a margin for a cold
# cache and a loaded machine:
CPU_COMPILE_WIDTH = 512
CPU_COMPILE_STEPS = 1000


def compiles_step(setting: str, device: str | torch.device, width: int = 0, steps: int = 0) -> bool:
    """Whether `--compile SETTING` runs the step's text encoder compiled on `device`, for a
    text tower of `width` and a run of `steps` steps.

    auto: compiled on CUDA (mode reduce-overhead: CUDA graphs take the launch of its many small
    kernels off the host; by design, not yet measured); on CPU only for a tower of at least
    CPU_COMPILE_WIDTH over at least CPU_COMPILE_STEPS steps, where compiling was measured to
    pay for itself; eager otherwise.
    """
    if setting == "auto":
        if torch.device(device).type == "cuda":
            return True
        return width >= CPU_COMPILE_WIDTH and steps >= CPU_COMPILE_STEPS
    return setting == "on"


class StepEncoder:
    """The training step's text-encoder pass (prompt.text_features_many), eager or compiled.

    Compiled, each new packing (a new number of runs stepping together; under `class_chunk`,
    each chunk's) is first tried on a detached copy of the prompts, forward and backward, so
    that a compiler that is missing or fails on an op is found before the step's losses are
    formed; then, and on any later failure of the compiled pass, the encoder runs eager from
    there on (the same function) and `on_warning` hears it once. `mode` is torch.compile's:
    reduce-overhead on CUDA, its default elsewhere.
    """

    def __init__(
        self,
        compiled: bool,
        device: str | torch.device,
        on_warning: Callable[[str], None] | None = None,
        class_chunk: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.on_warning = on_warning
        self.class_chunk = class_chunk
        self.core: Callable[..., torch.Tensor] | None = None
        self.tried: set[tuple[int, int]] = set()
        self.failure: str | None = None
        if compiled:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            try:
                self.core = torch.compile(encode_rows, mode=mode, dynamic=False)
            except Exception as e:  # any failure of the compiler means eager
                self._fall_back(e)

    @property
    def compiled(self) -> bool:
        return self.core is not None

    def describe(self) -> str:
        """compiled, eager, or why the compiled encoder was given up."""
        if self.failure is not None:
            return f"eager (torch.compile failed: {self.failure})"
        return "compiled" if self.compiled else "eager"

    def _fall_back(self, error: BaseException) -> None:
        self.core = None
        first = (str(error).strip().splitlines() or [""])[0][:160]
        self.failure = f"{type(error).__name__}: {first}" if first else type(error).__name__
        if self.on_warning is not None:
            self.on_warning(f"{self.describe()}; the step runs eager, with the same results")

    def __call__(self, model: Any, learners: list[PromptLearner]) -> torch.Tensor:
        # A text tower without the fast encoder (clip_model.fast_text) runs its plain path.
        if self.core is not None and clip_model.fast_text(model):
            try:
                key = (len(learners), learners[0].n_cls)
                if key not in self.tried:
                    self._probe(model, learners)
                    self.tried.add(key)
                if self.device.type == "cuda":
                    torch.compiler.cudagraph_mark_step_begin()
                return text_features_many(model, learners, self.class_chunk, core=self.core)
            except Exception as e:
                self._fall_back(e)
        return text_features_many(model, learners, self.class_chunk)

    def _probe(self, model: Any, learners: list[PromptLearner]) -> None:
        # The chunks (--class-chunk) are padded to one set of shapes (pack_plans' uniform, as
        # text_features_many packs them for a core): each distinct set is tried once.
        seen: set[tuple[int, ...]] = set()
        for plan in pack_plans(learners[0], len(learners), self.class_chunk, uniform=True):
            if plan.shapes() in seen:
                continue
            seen.add(plan.shapes())
            with torch.no_grad():
                prompts = plan_prompts(learners, plan)
            prompts.requires_grad_(True)
            if self.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            out = self.core(model, prompts, plan)
            out.float().sum().backward()


class RunState:
    """One run inside train_many: its data on the device, prompt, optimiser and epoch state.

    Methods (nlp_cli.methods) read and set `epoch_clean` (this epoch's partition), `state`
    (their own per-epoch values) and call `record` for the history's per-sample losses.
    """

    def __init__(
        self,
        data: TrainData,
        config: TrainConfig,
        model: Any,
        scale: float,
        device: torch.device,
        hand: Callable[[], torch.Tensor],
    ) -> None:
        self.method = methods.get(config.effective_method)
        config = self.method.resolve(config, data)
        self.config = config
        self.method.check_data(config, data)
        self.spec = losses.get(config.loss)
        self.knobs = config.loss_knobs()
        feats = data.features.tensors
        self.train = _normalise(feats["train.features"][data.index]).to(device)
        bad = (~torch.isfinite(self.train).all(dim=1)).nonzero().flatten()
        if len(bad):
            raise ArtifactError(
                f"{data.features.path}: train sample {int(data.index[bad[0]])} has an all-zero "
                f"feature row ({len(bad)} such rows): re-create it with `nlp embed`"
            )
        views = feats.get("train.views") if config.augment == "views" else None
        self.views = views[:, data.index] if views is not None else None
        self.online = None
        if config.augment == "online":
            from nlp_cli.embed import OnlineViews

            self.online = OnlineViews(data.features.meta, model, data.index)
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
        self.scaler = clip_model.grad_scaler(device, config.precision)
        self.optim = torch.optim.SGD(
            [self.learner.ctx],
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        self.scale = scale
        self.device = device
        self.n = len(self.targets)
        self.steps = config.steps_for(self.n)
        self.history: list[dict[str, Any]] = []
        self.start = 0
        self.step = 0
        self.state: dict[str, Any] = {}
        self.carry: dict[str, Any] = {}  # a method's state across epochs (checkpointed)
        self.key: str | None = None

    normalise = staticmethod(_normalise)

    def logits(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Scaled cosine logits of normalised image features `x` against class text features."""
        return self.scale * x @ _normalise(text).T

    def init_from(self, ctx: torch.Tensor) -> None:
        if not torch.isfinite(ctx).all():
            raise ArtifactError("the initial ctx holds NaN or infinite values")
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
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.history = list(state["history"])
            self.carry = dict(state.get("carry") or {})
            self.start = int(state["epoch"])

    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        """What resume_from needs to continue after `epoch` epochs."""
        return {
            "key": self.key,
            "epoch": epoch,
            "ctx": self.learner.ctx.detach().float().cpu(),
            "optim": self.optim.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "carry": self.carry,
        }

    def active(self, epoch: int) -> bool:
        return self.start <= epoch < self.config.epochs

    def begin_epoch(self, epoch: int) -> None:
        """This epoch's lr, sample order and augmented views; the given partition."""
        self.steps = self.config.steps_for(self.n)
        self.lr = self.config.lr_at(epoch)
        for group in self.optim.param_groups:
            group["lr"] = self.lr
        g = torch.Generator().manual_seed(epoch_seed(self.config.seed, epoch))
        self.order = torch.randperm(self.n, generator=g).to(self.device)
        self.x_epoch = self.train
        if self.online is not None:
            self.x_epoch = self.online.epoch(self.config.seed, epoch, self.device)
        elif self.views is not None:
            pick = torch.randint(self.views.shape[0], (self.n,), generator=g)
            self.x_epoch = _normalise(self.views[pick, torch.arange(self.n)]).to(self.device)
        self.epoch_clean = self.clean
        self.batches: list[torch.Tensor] | None = None  # a method's own batches, if it sets them
        self.per_sample: list[torch.Tensor] = []
        self.per_correct: list[torch.Tensor] = []
        self.batch_losses: list[torch.Tensor] = []

    def batch_loss(self, step: int, text: torch.Tensor) -> torch.Tensor:
        bs = self.config.batch_size
        self.step = step
        if self.batches is not None:
            return self.method.batch_loss(self, self.batches[step], text)
        return self.method.batch_loss(self, self.order[step * bs : (step + 1) * bs], text)

    def record(self, idx: torch.Tensor, per: torch.Tensor, loss: torch.Tensor) -> None:
        """Keep a batch's per-sample losses, whether each label is right, and its loss — on the
        device: no host synchronisation inside an epoch (end_epoch reads them once)."""
        self.per_sample.append(per.detach())
        self.per_correct.append(self.correct[idx])
        self.batch_losses.append(loss.detach())

    def end_epoch(self, epoch: int, test_acc: float) -> dict[str, Any]:
        losses_ = torch.stack(self.batch_losses).tolist() if self.batch_losses else []
        per = torch.cat(self.per_sample).cpu() if self.per_sample else torch.zeros(0)
        right = (
            torch.cat(self.per_correct).cpu()
            if self.per_correct
            else torch.zeros(0, dtype=torch.bool)
        )
        record = {
            "epoch": epoch + 1,
            "lr": self.lr,
            "loss": sum(losses_) / len(losses_) if losses_ else None,
            "loss_clean": _mean([per[right]]),
            "loss_noisy": _mean([per[~right]]),
            "test_acc": test_acc,
            "clean_frac": (
                float(self.epoch_clean.float().mean()) if self.epoch_clean is not None else None
            ),
        }
        self.history.append(record)
        return record

    def result(self) -> TrainResult:
        config = self.config
        prompt_meta = {
            "n_ctx": self.learner.n_ctx,
            "csc": self.learner.csc,
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
            self.learner.ctx.detach().float().cpu().clone(),
            self.history,
            prompt_meta,
            config,
            info,
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
    on_checkpoint: Callable[[], None] | None = None,
    on_start: Callable[[], None] | None = None,
    on_step: Callable[[int, int, int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> list[TrainResult]:
    """Train R prompts over the same features at once; result r equals train_prompt's for run r.

    Runs may differ in loss, method, seed, label set or partition, learning-rate schedule,
    epochs and batch size; they must share the features, the device and the prompt layout.
    Every step encodes the prompts of all runs that still have a batch in one text-encoder pass
    (prompt.text_features_many) and backpropagates the sum of their losses: run r's ctx gets
    run r's gradient alone. `on_epoch(r, record)` and `inspect(r, epoch, learner)` are called
    as run r finishes an epoch, `on_checkpoint()` after its checkpoint is written, `on_start()`
    once every run is set up (inputs checked), before the first epoch, and `on_step(epoch,
    step, steps)` after each optimiser step (`step` of the epoch's `steps`, both counted from 1;
    `epoch` from 0). It hears plain integers: nothing is read back from the device for it.
    `on_warning(line)` hears that the compiled step fell back to eager (`--compile`), once.
    """
    runs, model, scale, test_x, test_y = _setup(
        datas, configs, loaded, init_ctxs, checkpoints, resume, run_keys
    )
    device, precision = configs[0].device, configs[0].precision
    chunk = configs[0].class_chunk
    width = int(model.ln_final.weight.shape[0])
    steps = max(r.steps * (r.config.epochs - r.start) for r in runs)
    compiled = compiles_step(configs[0].compile, device, width, steps)
    encode = StepEncoder(compiled, device, on_warning, chunk)
    if on_start is not None:
        on_start()
    checkpoints = list(checkpoints or [None] * len(runs))
    for epoch in range(min(r.start for r in runs), max(c.epochs for c in configs)):
        active = [r for r in runs if r.active(epoch)]
        if not active:
            continue
        for r in active:
            r.begin_epoch(epoch)
        for name in dict.fromkeys(r.config.effective_method for r in active):
            same = [r for r in active if r.config.effective_method == name]
            same[0].method.before_epoch(model, same, epoch, scale)
        steps = max((r.steps for r in active), default=0)
        for step in range(steps):
            stepping = [r for r in active if step < r.steps]
            with clip_model.autocast(device, precision):
                texts = encode(model, [r.learner for r in stepping])
                parts = [r.batch_loss(step, t) for r, t in zip(stepping, texts, strict=True)]
            total = sum(r.scaler.scale(p) for r, p in zip(stepping, parts, strict=True))
            for r in stepping:
                r.optim.zero_grad(set_to_none=True)
            total.backward()
            for r in stepping:
                r.scaler.step(r.optim)
                r.scaler.update()
            if on_step is not None:
                on_step(epoch, step + 1, steps)
        accs = accuracies(model, [r.learner for r in active], test_x, test_y, chunk)
        for r, acc in zip(active, accs, strict=True):
            record = r.end_epoch(epoch, acc)
            loss = record["loss"]
            if (loss is not None and not math.isfinite(loss)) or not torch.isfinite(
                r.learner.ctx
            ).all():
                raise NlpError(
                    f"training diverged in epoch {epoch + 1} (loss {record['loss']}, loss "
                    f"{r.config.loss}, lr {r.lr:g}): nothing was written; lower --lr"
                )
            i = runs.index(r)
            if checkpoints[i] is not None:
                save_checkpoint(checkpoints[i], r.checkpoint_state(epoch + 1))
                if on_checkpoint is not None:
                    on_checkpoint()
            if on_epoch is not None:
                on_epoch(i, record)
            if inspect is not None:
                inspect(i, epoch + 1, r.learner)
    results = [r.result() for r in runs]
    for result in results:
        result.info["step"] = encode.describe()
    return results


def _setup(datas, configs, loaded, init_ctxs, checkpoints, resume, run_keys):
    """The runs (initialised or resumed), the frozen model, and the test split on the device."""
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
        loaded = clip_model.load_for(
            datas[0].features.meta,
            device=device,
            precision=configs[0].precision,
            image=needs_images(configs),
        )
    model = loaded.model
    for p in model.parameters():
        p.requires_grad_(False)
    classnames = datas[0].classnames
    test_x = _normalise(datas[0].features.tensors["test.features"]).to(device)
    test_y = datas[0].features.tensors["test.labels"].long().to(device)
    hand_cache: list[torch.Tensor] = []

    def hand() -> torch.Tensor:
        if not hand_cache:
            with torch.no_grad():
                dataset = datas[0].features.meta.get("dataset")
                feats = clip_model.class_prototypes(model, classnames, dataset)
                hand_cache.append(feats.float().to(device))
        return hand_cache[0]

    runs = []
    per_run = zip(datas, configs, init_ctxs, checkpoints, run_keys, strict=True)
    for data, config, ctx, ckpt, key in per_run:
        run = RunState(data, config, model, loaded.logit_scale, device, hand)
        run.key = key
        if ctx is not None:
            run.init_from(ctx)
        if resume and ckpt is not None and ckpt.exists():
            run.resume_from(ckpt, key)
        runs.append(run)
    return runs, model, loaded.logit_scale, test_x, test_y


@torch.no_grad()
def accuracy(model: Any, learner: PromptLearner, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of the current prompt on normalised features `x`."""
    return accuracies(model, [learner], x, y)[0]


@torch.no_grad()
def accuracies(
    model: Any,
    learners: list[PromptLearner],
    x: torch.Tensor,
    y: torch.Tensor,
    class_chunk: int | None = None,
) -> list[float]:
    """Top-1 accuracy of each prompt on normalised features `x` (one encoder pass)."""
    texts = text_features_many(model, learners, class_chunk)
    if not len(y):
        return [0.0] * len(learners)
    return [float(((x @ _normalise(t).T).argmax(dim=1) == y).float().mean()) for t in texts]
