"""`nlp train`: learn CoOp context vectors on a label set or partition; print the prompt's path."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from nlp_cli.cli import output
from nlp_cli.errors import UsageError, did_you_mean

COOP_SUFFIXES = (".pth", ".tar", ".pt")


def read_config(path: Path) -> dict[str, Any]:
    """Options from a YAML file whose keys are option names (dashes or underscores)."""
    import yaml

    from nlp_cli.train import TrainConfig

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UsageError(f"--config {path}: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise UsageError(f"--config {path} is not valid YAML ({type(e).__name__})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {path} must hold a mapping of option names to values")
    allowed = {f.name for f in dataclasses.fields(TrainConfig)} | {"protocol"}
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
    from nlp_cli import artifacts
    from nlp_cli.train import import_coop

    if path.suffix in COOP_SUFFIXES or ".pth" in path.name:
        ctx, _ = import_coop(path)
        digest = artifacts.file_digest(path)
        return ctx, {"kind": "coop", "path": str(path.resolve()), "digest": digest}
    art = artifacts.load(path, "prompt")
    artifacts.check_compatible(art, features_meta, f"--init-from {path}")
    return art.tensors["ctx"], art.ref()


def _complete_loss(incomplete: str) -> list[str]:
    from nlp_cli.losses import list_losses

    return [n for n in list_losses() if n.startswith(incomplete)]


def _choices(*names: str):
    return lambda incomplete: [n for n in names if n.startswith(incomplete)]


def register(app: typer.Typer) -> None:
    """Add the `train` command."""
    from nlp_cli.losses import list_losses

    @app.command("train")
    def train(
        data: list[Path] | None = typer.Argument(
            None,
            help="Label set(s), partition(s) or features file (default: a path piped on stdin); "
            "several inputs over one features file train together.",
        ),
        loss: str | None = typer.Option(
            None,
            "--loss",
            help=f"Loss (default ce) or a comma list of losses: {', '.join(list_losses())}.",
            autocompletion=_complete_loss,
        ),
        protocol: str | None = typer.Option(
            None,
            "--protocol",
            autocompletion=_choices("dspt", "nlprompt"),
            help="dspt (50 epochs, plain SGD) or nlprompt (200, momentum).",
        ),
        epochs: int | None = typer.Option(None, "--epochs", help="Training epochs (default 50)."),
        lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default 0.002)."),
        batch_size: int | None = typer.Option(None, "--batch-size", help="Batch size (32)."),
        momentum: float | None = typer.Option(None, "--momentum", help="SGD momentum (0)."),
        weight_decay: float | None = typer.Option(None, "--weight-decay", help="Weight decay (0)."),
        warmup_epochs: int | None = typer.Option(
            None, "--warmup-epochs", help="Epochs at the warm-up lr before the cosine (0)."
        ),
        warmup_lr: float | None = typer.Option(None, "--warmup-lr", help="Warm-up lr (1e-5)."),
        seed: str | None = typer.Option(
            None, "--seed", help="Seed of init, order and views (1), or a comma list: 1,2,3."
        ),
        device: str | None = typer.Option(None, "--device", help="cpu, cuda or cuda:N."),
        n_ctx: int | None = typer.Option(None, "--n-ctx", help="Context vectors (16)."),
        ctx_init: str | None = typer.Option(
            None, "--ctx-init", help='Initialise the context from words, e.g. "a photo of a".'
        ),
        csc: bool | None = typer.Option(
            None, "--csc/--shared-ctx", help="Class-specific context (default shared)."
        ),
        class_token_position: str | None = typer.Option(
            None,
            "--class-token-position",
            autocompletion=_choices("end", "middle", "front"),
            help="end, middle or front (end).",
        ),
        targets: str | None = typer.Option(
            None,
            "--targets",
            autocompletion=_choices("labels", "zero-shot"),
            help="labels, or zero-shot pseudo-labels (Robust-UPL with gce).",
        ),
        repurify: str | None = typer.Option(
            None,
            "--repurify",
            autocompletion=_choices("none", "epoch"),
            help="none (use the partition) or epoch (PromptOT each epoch).",
        ),
        method: str | None = typer.Option(
            None,
            "--method",
            autocompletion=_choices("standard", "joapr"),
            help="standard (the loss alone) or joapr (GMM partition, refurbished labels, mixup).",
        ),
        joapr_warmup: int | None = typer.Option(
            None, "--joapr-warmup", help="JoAPR: plain CE epochs before refurbishing (1)."
        ),
        joapr_alpha: float | None = typer.Option(
            None, "--joapr-alpha", help="JoAPR: mixup's Beta(α, α) (4)."
        ),
        joapr_threshold: float | None = typer.Option(
            None, "--joapr-threshold", help="JoAPR: clean ⇔ GMM clean posterior above it (0.5)."
        ),
        joapr_temperature: float | None = typer.Option(
            None, "--joapr-temperature", help="JoAPR: targets' sharpening T (0.5; 1 = off)."
        ),
        joapr_prior: float | None = typer.Option(
            None, "--joapr-prior", help="JoAPR: weight of the class-balance penalty (1; 0 = off)."
        ),
        q: float | None = typer.Option(None, "--q", help="gce's q (0.7)."),
        eps: float | None = typer.Option(None, "--eps", help="ls's ε (0.2)."),
        tau: float | None = typer.Option(None, "--tau", help="logitnorm (1) / logitclip (10) τ."),
        beta: float | None = typer.Option(None, "--beta", help="bootstrap's β (0.95)."),
        scale: float | None = typer.Option(None, "--scale", help="mae's or square's scale (1)."),
        config: Path | None = typer.Option(
            None, "--config", help="YAML file of options (keys = option names); flags override."
        ),
        init_from: Path | None = typer.Option(
            None, "--init-from", help="Start from a prompt file or a CoOp/NLPrompt checkpoint."
        ),
        export_coop: Path | None = typer.Option(
            None, "--export-coop", help="Also write the prompt as a CoOp/NLPrompt checkpoint."
        ),
        resume: bool = typer.Option(
            False, "--resume", help="Continue an interrupted identical run from its checkpoint."
        ),
        model: str | None = typer.Option(
            None, "--model", help="CLIP model name or checkpoint (default: the features' model)."
        ),
        out: list[Path] | None = typer.Option(
            None, "--out", help="Output file (default: NLP_HOME); repeat it once per run."
        ),
        zip_runs: bool = typer.Option(
            False, "--zip", help="Pair inputs, losses, seeds item by item."
        ),
        as_json: bool = typer.Option(False, "--json", help="JSON summary on stdout."),
    ) -> None:
        """Train a prompt; each epoch's test accuracy and clean/noisy losses go in its history.

        Several inputs, losses (--loss ce,dsoftmax) or seeds (--seed 1,2,3) make one run per
        combination, trained together (one text-encoder pass per step); one path per line.
        """
        from nlp_cli import artifacts, clip_model
        from nlp_cli import train as lib

        given = {
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "warmup_epochs": warmup_epochs,
            "warmup_lr": warmup_lr,
            "device": device,
            "n_ctx": n_ctx,
            "ctx_init": ctx_init,
            "csc": csc,
            "class_token_position": class_token_position,
            "targets": targets,
            "repurify": repurify,
            "q": q,
            "eps": eps,
            "tau": tau,
            "beta": beta,
            "scale": scale,
            "method": method,
            "joapr_warmup": joapr_warmup,
            "joapr_alpha": joapr_alpha,
            "joapr_threshold": joapr_threshold,
            "joapr_temperature": joapr_temperature,
            "joapr_prior": joapr_prior,
        }
        file_opts = read_config(config) if config is not None else {}
        proto = protocol or file_opts.pop("protocol", None)
        file_opts.pop("protocol", None)
        merged = {**file_opts, **{k: v for k, v in given.items() if v is not None}}
        loss_list = _split(loss, "--loss", str) if loss else [merged.pop("loss", None)]
        seed_list = _split(seed, "--seed", int) if seed else [merged.pop("seed", None)]
        merged.pop("loss", None)
        merged.pop("seed", None)
        inputs = list(data) if data else [output.input_path(None, "label set")]
        if zip_runs:
            combos = _zipped(inputs, loss_list, seed_list)
        else:
            combos = [(p, lo, se) for p in inputs for lo in loss_list for se in seed_list]
        outs = list(out or [])
        if outs and len(outs) != len(combos):
            raise UsageError(f"{len(combos)} runs but {len(outs)} --out paths: give one per run")
        if len(combos) > 1 and export_coop is not None:
            raise UsageError("--export-coop names one file: give one input, loss and seed")

        loaded_data: dict[Path, Any] = {}
        runs = []
        for i, (path, run_loss, run_seed) in enumerate(combos):
            cfg = lib.make_config(proto, **merged, loss=run_loss, seed=run_seed)
            if path not in loaded_data:
                loaded_data[path] = lib.load_data(path)
            td = loaded_data[path]
            init_ctx, init_ref = None, None
            if init_from is not None:
                init_ctx, init_ref = _init_ctx(init_from, td.features.meta)
            upstream = {td.source.kind: td.source.ref(), "features": td.features.ref()}
            if init_ref is not None:
                upstream["init"] = init_ref
            options = {**cfg.options(), "protocol": proto}
            key = artifacts.cache_key(
                "prompt", {r: u["digest"] for r, u in upstream.items()}, options
            )
            name = cfg.loss if cfg.method == "standard" else cfg.method
            stem = f"{td.features.meta.get('dataset', 'prompt')}-{name}-{path.stem}"
            target = outs[i] if outs else artifacts.default_out("prompt", stem, key)
            artifacts.ensure_writable(target)
            runs.append(
                {
                    "td": td,
                    "cfg": cfg,
                    "init": init_ctx,
                    "upstream": upstream,
                    "options": options,
                    "key": key,
                    "target": target,
                    "hit": artifacts.cached(target, key, "prompt"),
                }
            )

        pending = [r for r in runs if not r["hit"]]
        for r in runs:
            if r["hit"]:
                output.info(f"cache hit: {r['target']}")
        if export_coop is not None or pending:
            first = runs[0]
            meta, dev = first["td"].features.meta, first["cfg"].device
            loaded = clip_model.load_for(meta, model, device=dev)
            if export_coop is not None and first["hit"]:
                prompt = artifacts.load(first["target"], "prompt")
                lib.export_coop(export_coop, loaded.model, prompt)
        for group in _groups(pending):
            _train_group(group, loaded, resume, export_coop)
        summaries = [_summary(artifacts.read_meta(r["target"])) for r in runs]
        if len(runs) == 1:
            output.emit(runs[0]["target"], summaries[0], as_json)
        elif as_json:
            output.emit_json(
                {
                    "runs": [
                        {"path": str(r["target"]), **m}
                        for r, m in zip(runs, summaries, strict=True)
                    ]
                }
            )
        else:
            for r in runs:
                output.emit(r["target"])


def _split(text: str, flag: str, kind: type) -> list[Any]:
    """'a,b,c' → [a, b, c] of `kind`; one UsageError line for a bad item."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [kind(t) for t in items] or [None]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: write one value or a comma list") from None


def _zipped(inputs: list[Path], losses: list[Any], seeds: list[Any]) -> list[tuple]:
    """Item-by-item runs; a list of one value applies to every run."""
    n = max(len(inputs), len(losses), len(seeds))
    if any(len(x) not in (1, n) for x in (inputs, losses, seeds)):
        raise UsageError("--zip needs inputs, --loss and --seed lists of one length (or one item)")
    return [
        (inputs[i % len(inputs)], losses[i % len(losses)], seeds[i % len(seeds)]) for i in range(n)
    ]


def _groups(runs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Runs that can share an encoder pass: same features, device and prompt layout."""
    from nlp_cli.train import BATCHED_ALIKE

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        alike = tuple(getattr(r["cfg"], name) for name in BATCHED_ALIKE)
        groups.setdefault((r["td"].features.digest, alike), []).append(r)
    return list(groups.values())


def _train_group(runs: list[dict[str, Any]], loaded: Any, resume: bool, export: Path | None):
    """Train a group together and write each run's prompt file (and its checkpoint meanwhile)."""
    from nlp_cli import artifacts
    from nlp_cli import train as lib

    ckpts = [r["target"].with_name(r["target"].name + ".ckpt") for r in runs]
    several = len(runs) > 1

    def progress(i: int, rec: dict[str, Any]) -> None:
        cfg = runs[i]["cfg"]
        acc = rec["test_acc"]
        parts = [
            f"epoch {rec['epoch']}/{cfg.epochs}",
            f"lr {rec['lr']:.3g}",
            f"loss {rec['loss']:.4f}",
            f"test acc {100 * acc:.2f}%",
        ]
        if several:
            parts.insert(0, f"[{cfg.loss} seed {cfg.seed} {runs[i]['target'].stem[:24]}]")
        if rec["loss_noisy"] is not None and rec["loss_clean"] is not None:
            parts.append(f"loss correct/wrong {rec['loss_clean']:.3f}/{rec['loss_noisy']:.3f}")
        output.console.print("  ".join(parts), soft_wrap=True, markup=False)

    results = lib.train_many(
        [r["td"] for r in runs],
        [r["cfg"] for r in runs],
        loaded=loaded,
        init_ctxs=[r["init"] for r in runs],
        checkpoints=ckpts,
        resume=resume,
        run_keys=[r["key"] for r in runs],
        on_epoch=progress,
    )
    for r, result, ckpt in zip(runs, results, ckpts, strict=True):
        if result.info.get("resumed_at"):
            output.info(f"resumed from {ckpt} at epoch {result.info['resumed_at']}")
        td, cfg = r["td"], r["cfg"]
        meta = {
            "model": loaded.identity,
            "dataset": td.features.meta.get("dataset"),
            "classnames": td.classnames,
            "options": r["options"],
            "upstream": r["upstream"],
            "key": r["key"],
            "prompt": result.prompt_meta,
            "loss": cfg.loss,
            "method": cfg.method,
            "knobs": result.info["knobs"],
            "history": result.history,
        }
        artifacts.save(r["target"], "prompt", {"ctx": result.ctx}, meta)
        ckpt.unlink(missing_ok=True)
        if export is not None:
            lib.export_coop(export, loaded.model, artifacts.load(r["target"], "prompt"))
            output.info(f"CoOp checkpoint: {export}")


def _summary(meta: dict[str, Any]) -> dict[str, Any]:
    from nlp_cli.evaluate import last_k_mean

    history = meta.get("history") or []
    return {
        "loss": meta.get("loss"),
        "epochs": len(history),
        "test_acc": history[-1]["test_acc"] if history else None,
        "last5_mean_acc": last_k_mean(history),
    }
