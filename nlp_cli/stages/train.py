"""`train_prompts`: learn CoOp context vectors on label sets or partitions, one prompt file each.

Several inputs, losses or seeds make one run per combination (or item by item with `zip`);
runs that can share the text encoder are trained together, each equal to its run alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nlp_cli import artifacts
from nlp_cli.errors import UsageError, did_you_mean
from nlp_cli.stages.result import StageResult

COOP_SUFFIXES = (".pth", ".tar", ".pt")


def environment(device: str, precision: str | None, step: str | None = None) -> dict[str, Any]:
    """What ran a training run: versions, device, precision, threads and whether the step ran
    compiled (a number can be reproduced from its file alone)."""
    import platform

    import torch

    from nlp_cli import __version__

    env = {
        "nlp": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": device,
        "precision": precision,
        "threads": torch.get_num_threads(),
    }
    if step is not None:
        env["step"] = step
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


@dataclass
class TrainOptions:
    """A training request: the runs (losses × seeds, or zipped), a protocol and its overrides."""

    losses: list[str | None] = field(default_factory=lambda: [None])
    seeds: list[int | None] = field(default_factory=lambda: [None])
    protocol: str | None = None
    # TrainConfig fields (epochs, lr, knobs, …) overriding the protocol; None = not given.
    settings: dict[str, Any] = field(default_factory=dict)
    config_file: Path | None = None  # a YAML of settings; `settings` override it
    init_from: Path | None = None  # a prompt file or a CoOp/NLPrompt checkpoint
    export_coop: Path | None = None  # also write the prompt as a CoOp checkpoint
    resume: bool = False
    model: str | None = None
    outs: list[Path] = field(default_factory=list)  # one per run, or empty for defaults
    zip: bool = False
    # Knobs for the runs of one loss only: {"gce": {"q": 0.5}}.
    loss_knobs: dict[str, dict[str, Any]] = field(default_factory=dict)


def collapse(history: list[dict[str, Any]], n_classes: int) -> str | None:
    """A warning when test accuracy fell back to chance after having been well above it (a run
    that diverged, as NLPrompt's 4.8 % on EuroSAT at 75 % noise in its issue #3), else None."""
    chance = 1.0 / max(n_classes, 1)
    best: tuple[float, int] | None = None
    for rec in history:
        acc = rec.get("test_acc")
        if acc is None:
            continue
        if best is None or acc > best[0]:
            best = (acc, rec["epoch"])
        if best[0] >= min(3 * chance, 0.5 + chance / 2) and acc <= 1.5 * chance:
            return (
                f"test accuracy fell to {100 * acc:.1f}% (chance {100 * chance:.1f}%) in epoch "
                f"{rec['epoch']} after {100 * best[0]:.1f}% in epoch {best[1]}: the run "
                "collapsed; try a lower --lr or a noise-robust loss (dsoftmax, nlprompt)"
            )
    return None


def split_knobs(items: list[str]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """`KNOB=VALUE` items (for every run) and `LOSS.KNOB=VALUE` items (that loss's runs only)."""
    from nlp_cli.losses import parse_knob

    plain: dict[str, str] = {}
    per_loss: dict[str, dict[str, str]] = {}
    for item in items:
        loss, name, value = parse_knob(item)
        if loss is None:
            plain[name] = value
        else:
            per_loss.setdefault(loss, {})[name] = value
    return plain, per_loss


@dataclass(eq=False)
class _Run:
    data: Any
    config: Any
    init: Any
    upstream: dict[str, Any]
    options: dict[str, Any]
    key: str
    target: Path
    hit: bool
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.config.loss} seed {self.config.seed} {self.target.stem[:24]}"


def read_config(path: Path) -> dict[str, Any]:
    """Settings from a YAML file whose keys are option names (dashes or underscores)."""
    import yaml

    from nlp_cli.train import TrainConfig

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"--config {path}: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise UsageError(f"--config {path} is not valid YAML ({type(e).__name__})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {path} must hold a mapping of option names to values")
    allowed = set(TrainConfig.setting_names()) | {"protocol"}
    out = {}
    for k, v in data.items():
        name = str(k).lstrip("-").replace("-", "_")
        if name not in allowed:
            hint = did_you_mean(name, sorted(allowed))
            raise UsageError(f"--config {path}: unknown option {k!r}{hint}")
        out[name] = v
    return out


def _init_ctx(path: Path, features_meta: dict[str, Any]):
    """The ctx to start from: a prompt artifact's, or a CoOp/NLPrompt checkpoint's."""
    from nlp_cli.checkpoints import import_coop

    if path.suffix in COOP_SUFFIXES or ".pth" in path.name:
        ctx, _ = import_coop(path)
        digest = artifacts.file_digest(path)
        return ctx, {"kind": "coop", "path": str(path.resolve()), "digest": digest}
    art = artifacts.load(path, "prompt")
    artifacts.check_compatible(art, features_meta, f"--init-from {path}")
    return art.tensors["ctx"], art.ref()


def _zipped(inputs: list[Path], losses: list[Any], seeds: list[Any]) -> list[tuple]:
    """Item-by-item runs; a list of one value applies to every run."""
    n = max(len(inputs), len(losses), len(seeds))
    if any(len(x) not in (1, n) for x in (inputs, losses, seeds)):
        raise UsageError("--zip needs inputs, --loss and --seed lists of one length (or one item)")
    return [
        (inputs[i % len(inputs)], losses[i % len(losses)], seeds[i % len(seeds)]) for i in range(n)
    ]


def plan_runs(inputs: list[Path], opts: TrainOptions) -> list[_Run]:
    """Every run's data, configuration, cache key and target, checked before any training."""
    from nlp_cli import clip_model
    from nlp_cli import train as lib

    if not inputs:
        raise UsageError("no training input given")
    file_opts = read_config(opts.config_file) if opts.config_file is not None else {}
    proto = opts.protocol or file_opts.pop("protocol", None)
    file_opts.pop("protocol", None)
    merged = {**file_opts, **{k: v for k, v in opts.settings.items() if v is not None}}
    losses = list(opts.losses) if opts.losses != [None] else [merged.get("loss")]
    seeds = list(opts.seeds) if opts.seeds != [None] else [merged.get("seed")]
    merged.pop("loss", None)
    merged.pop("seed", None)
    if opts.zip:
        combos = _zipped(list(inputs), losses, seeds)
    else:
        combos = [(p, lo, se) for p in inputs for lo in losses for se in seeds]
    if opts.outs and len(opts.outs) != len(combos):
        raise UsageError(f"{len(combos)} runs but {len(opts.outs)} --out paths: give one per run")
    if len(combos) > 1 and opts.export_coop is not None:
        raise UsageError("--export-coop names one file: give one input, loss and seed")

    named = {lo or "ce" for _, lo, _ in combos}
    for loss in opts.loss_knobs:
        if loss not in named:
            raise UsageError(f"--knob {loss}.…: {loss!r} is not among the losses trained")
    if opts.export_coop is not None:
        artifacts.check_output(opts.export_coop, [*inputs, *opts.outs], what="--export-coop")
    loaded_data: dict[Path, Any] = {}
    purified: list[StageResult] = []
    runs = []
    for i, (path, run_loss, run_seed) in enumerate(combos):
        own = opts.loss_knobs.get(run_loss or "ce", {})
        cfg = lib.make_config(proto, **{**merged, **own}, loss=run_loss, seed=run_seed)
        path = Path(path)
        if path not in loaded_data:
            loaded_data[path] = lib.load_data(path)
        td = loaded_data[path]
        if _needs_purifying(cfg, td):
            # NLPrompt is purification plus training: PromptOT with the hand prompt first, as
            # `nlp purify` would (its partition is an artifact of its own, cached).
            from nlp_cli.stages.purify import PurifyOptions, make_partition

            part = make_partition(
                path, PurifyOptions(device=cfg.device, precision=cfg.precision, model=opts.model)
            )
            purified.append(part)
            path = Path(part.path)
            if path not in loaded_data:
                loaded_data[path] = lib.load_data(path)
            td = loaded_data[path]
        init_ctx, init_ref = None, None
        if opts.init_from is not None:
            init_ctx, init_ref = _init_ctx(Path(opts.init_from), td.features.meta)
        upstream = {td.source.kind: td.source.ref(), "features": td.features.ref()}
        if init_ref is not None:
            upstream["init"] = init_ref
        options = {**cfg.options(), "protocol": proto}
        key = artifacts.cache_key("prompt", {r: u["digest"] for r, u in upstream.items()}, options)
        name = cfg.loss if cfg.method == "standard" else cfg.method
        stem = f"{td.features.meta.get('dataset', 'prompt')}-{name}-{path.stem}"
        target = Path(opts.outs[i]) if opts.outs else artifacts.default_out("prompt", stem, key)
        artifacts.check_output(target, [*inputs, opts.init_from])
        if any(target.resolve() == r.target.resolve() for r in runs):
            raise UsageError(f"two runs would write {target}: give each run its own --out")
        hit = artifacts.cached(target, key, "prompt")
        run = _Run(td, cfg, init_ctx, upstream, options, key, target, hit)
        slow_bf16 = None if hit else clip_model.bf16_warning(cfg.device, cfg.precision)
        if slow_bf16 is not None and i == 0:
            run.warnings.append(slow_bf16)
        no_views = "train.views" not in td.features.tensors and cfg.augment == "views"
        if proto is not None and no_views and not hit:
            run.warnings.append(
                f"the {proto} protocol trains on CoOp's augmented images (random "
                f"resized crop + flip); {td.features.path.name} holds only center crops: "
                "`nlp embed … --views 10` caches augmented views to draw from, `--augment "
                "online` encodes fresh ones every epoch"
            )
        runs.append(run)
    for part in purified:
        runs[0].notes.append(f"purified first (PromptOT, hand prompt): {part.path}")
        runs[0].notes.extend(part.notes)
    return runs


def _needs_purifying(cfg: Any, data: Any) -> bool:
    """A run of the nlprompt loss on labels without a partition, not re-purified each epoch."""
    return (
        cfg.effective_method == "nlprompt"
        and cfg.repurify != "epoch"
        and data.clean is None
        and data.source.kind == "labelset"
    )


EpochCallback = Callable[[int, str, dict[str, Any], Any], None]
StepCallback = Callable[[int, int, int, int], None]


def train_prompts(
    inputs: list[Path | str],
    opts: TrainOptions | None = None,
    on_epoch: EpochCallback | None = None,
    on_checkpoint: Callable[[], None] | None = None,
    on_info: Callable[[str], None] | None = None,
    on_step: StepCallback | None = None,
) -> list[StageResult]:
    """Train every requested run (cached ones are not retrained); one result per run, in order.

    `on_epoch(run, label, record, config)` follows each run's epochs; `on_checkpoint()` runs
    after each epoch's checkpoint is on disk; `on_info(line)` hears which device and precision
    run before the work starts; `on_step(epoch, step, steps, epochs)` follows the optimiser
    steps of the runs training together (`epochs`: the most any of them trains).
    """
    from nlp_cli import checkpoints, clip_model
    from nlp_cli.evaluate import last_k_mean
    from nlp_cli.train import needs_images

    opts = opts or TrainOptions()
    runs = plan_runs([Path(p) for p in inputs], opts)
    pending = [r for r in runs if not r.hit]
    notes: dict[int, list[str]] = {id(r): list(r.notes) for r in runs}
    if opts.export_coop is not None or pending:
        first = runs[0]
        loaded = clip_model.load_for(
            first.data.features.meta,
            opts.model,
            device=first.config.device,
            precision=first.config.precision,
            image=needs_images(r.config for r in pending),
        )
        if opts.export_coop is not None and first.hit:
            prompt = artifacts.load(first.target, "prompt")
            checkpoints.export_coop(opts.export_coop, loaded.model, prompt)
            notes[id(first)].append(f"CoOp checkpoint: {opts.export_coop}")
    for group in _groups(pending):
        model_meta = group[0].data.features.meta
        if model_meta.get("model") != first.data.features.meta.get("model"):
            # inputs over features of another CLIP: that CLIP trains them (and is recorded)
            loaded = clip_model.load_for(
                model_meta,
                opts.model,
                device=group[0].config.device,
                precision=group[0].config.precision,
                image=needs_images(r.config for r in group),
            )
        said = f"training on {group[0].config.device} ({group[0].config.precision})"
        start = (lambda line=said: on_info(line)) if on_info is not None else None
        _train_group(group, loaded, opts, on_epoch, on_checkpoint, notes, runs, start, on_step)
    results = []
    for r in runs:
        history = artifacts.read_meta(r.target).get("history") or []
        summary = {
            "loss": r.config.loss,
            "epochs": len(history),
            "test_acc": history[-1]["test_acc"] if history else None,
            "last5_mean_acc": last_k_mean(history),
        }
        warnings = list(r.warnings)
        fell = collapse(history, len(r.data.classnames))
        if fell is not None:
            warnings.append(fell)
        results.append(StageResult(r.target, summary, r.hit, warnings=warnings, notes=notes[id(r)]))
    return results


def _groups(runs: list[_Run]) -> list[list[_Run]]:
    """Runs that can share an encoder pass: same features, device and prompt layout."""
    from nlp_cli.train import BATCHED_ALIKE

    groups: dict[tuple, list[_Run]] = {}
    for r in runs:
        alike = tuple(getattr(r.config, name) for name in BATCHED_ALIKE)
        groups.setdefault((r.data.features.digest, alike), []).append(r)
    return list(groups.values())


def _train_group(
    group: list[_Run],
    loaded: Any,
    opts: TrainOptions,
    on_epoch: EpochCallback | None,
    on_checkpoint: Callable[[], None] | None,
    notes: dict[int, list[str]],
    runs: list[_Run],
    on_start: Callable[[], None] | None = None,
    on_step: StepCallback | None = None,
) -> None:
    """Train a group together and write each run's prompt file (and its checkpoint meanwhile)."""
    from nlp_cli import checkpoints
    from nlp_cli import train as lib

    ckpts = [r.target.with_name(r.target.name + ".ckpt") for r in group]

    def progress(i: int, record: dict[str, Any]) -> None:
        if on_epoch is not None:
            r = group[i]
            on_epoch(runs.index(r), r.label if len(group) > 1 else "", record, r.config)

    epochs = max(r.config.epochs for r in group)
    step = None if on_step is None else (lambda e, s, n: on_step(e, s, n, epochs))

    results = lib.train_many(
        [r.data for r in group],
        [r.config for r in group],
        loaded=loaded,
        init_ctxs=[r.init for r in group],
        checkpoints=ckpts,
        resume=opts.resume,
        run_keys=[r.key for r in group],
        on_epoch=progress,
        on_checkpoint=on_checkpoint,
        on_start=on_start,
        on_step=step,
        on_warning=group[0].warnings.append,
    )
    for r, result, ckpt in zip(group, results, ckpts, strict=True):
        if result.info.get("resumed_at"):
            notes[id(r)].append(f"resumed from {ckpt} at epoch {result.info['resumed_at']}")
        meta = {
            "model": loaded.identity,
            "dataset": r.data.features.meta.get("dataset"),
            "classnames": r.data.classnames,
            "options": r.options,
            "upstream": r.upstream,
            "key": r.key,
            "prompt": result.prompt_meta,
            "loss": r.config.loss,
            "method": r.config.method,
            "knobs": result.info["knobs"],
            "history": result.history,
            "protocol": r.options.get("protocol"),
            "config": dataclasses.asdict(result.config),
            "environment": environment(r.config.device, r.config.precision, result.info["step"]),
        }
        artifacts.save(r.target, "prompt", {"ctx": result.ctx}, meta)
        ckpt.unlink(missing_ok=True)
        if opts.export_coop is not None:
            prompt = artifacts.load(r.target, "prompt")
            checkpoints.export_coop(opts.export_coop, loaded.model, prompt)
            notes[id(r)].append(f"CoOp checkpoint: {opts.export_coop}")
