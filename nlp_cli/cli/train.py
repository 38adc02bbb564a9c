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
        data: Path | None = typer.Argument(
            None, help="Label set, partition or features file (default: a path piped on stdin)."
        ),
        loss: str | None = typer.Option(
            None,
            "--loss",
            help=f"Loss (default ce): {', '.join(list_losses())}.",
            autocompletion=_complete_loss,
        ),
        protocol: str | None = typer.Option(
            None, "--protocol", autocompletion=_choices("dspt", "nlprompt"),
            help="dspt (50 epochs, plain SGD) or nlprompt (200, momentum)."
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
        seed: int | None = typer.Option(None, "--seed", help="Seed of init, order and views (1)."),
        device: str | None = typer.Option(None, "--device", help="cpu, cuda or cuda:N."),
        n_ctx: int | None = typer.Option(None, "--n-ctx", help="Context vectors (16)."),
        ctx_init: str | None = typer.Option(
            None, "--ctx-init", help='Initialise the context from words, e.g. "a photo of a".'
        ),
        csc: bool | None = typer.Option(
            None, "--csc/--shared-ctx", help="Class-specific context (default shared)."
        ),
        class_token_position: str | None = typer.Option(
            None, "--class-token-position", autocompletion=_choices("end", "middle", "front"),
            help="end, middle or front (end)."
        ),
        targets: str | None = typer.Option(
            None, "--targets", autocompletion=_choices("labels", "zero-shot"),
            help="labels, or zero-shot pseudo-labels (Robust-UPL with gce)."
        ),
        repurify: str | None = typer.Option(
            None, "--repurify", autocompletion=_choices("none", "epoch"),
            help="none (use the partition) or epoch (PromptOT each epoch)."
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
        out: Path | None = typer.Option(None, "--out", help="Output file (default: NLP_HOME)."),
        as_json: bool = typer.Option(False, "--json", help="JSON summary on stdout."),
    ) -> None:
        """Train a prompt; each epoch's test accuracy and clean/noisy losses go in its history."""
        from nlp_cli import artifacts, clip_model
        from nlp_cli import train as lib

        given = {
            "loss": loss, "epochs": epochs, "lr": lr, "batch_size": batch_size,
            "momentum": momentum, "weight_decay": weight_decay, "warmup_epochs": warmup_epochs,
            "warmup_lr": warmup_lr, "seed": seed, "device": device, "n_ctx": n_ctx,
            "ctx_init": ctx_init, "csc": csc, "class_token_position": class_token_position,
            "targets": targets, "repurify": repurify, "q": q, "eps": eps, "tau": tau,
            "beta": beta, "scale": scale,
        }
        file_opts = read_config(config) if config is not None else {}
        proto = protocol or file_opts.pop("protocol", None)
        file_opts.pop("protocol", None)
        merged = {**file_opts, **{k: v for k, v in given.items() if v is not None}}
        cfg = lib.make_config(proto, **merged)

        path = output.input_path(data, "label set")
        td = lib.load_data(path)
        init_ctx, init_ref = None, None
        if init_from is not None:
            init_ctx, init_ref = _init_ctx(init_from, td.features.meta)

        upstream = {td.source.kind: td.source.ref(), "features": td.features.ref()}
        if init_ref is not None:
            upstream["init"] = init_ref
        options = {**dataclasses.asdict(cfg), "protocol": proto}
        key = artifacts.cache_key(
            "prompt", {r: u["digest"] for r, u in upstream.items()}, options
        )
        stem = f"{td.features.meta.get('dataset', 'prompt')}-{cfg.loss}-{path.stem}"
        target = out or artifacts.default_out("prompt", stem, key)
        artifacts.ensure_writable(target)
        cache_hit = artifacts.cached(target, key, "prompt")
        if cache_hit and export_coop is None:
            output.info(f"cache hit: {target}")
            output.emit(target, _summary(artifacts.read_meta(target)), as_json)
            return
        loaded = clip_model.load_for(td.features.meta, model, device=cfg.device)
        if cache_hit:
            output.info(f"cache hit: {target}")
            lib.export_coop(export_coop, loaded.model, artifacts.load(target, "prompt"))
            output.emit(target, _summary(artifacts.read_meta(target)), as_json)
            return

        ckpt = target.with_name(target.name + ".ckpt")
        n_epochs = cfg.epochs

        def progress(rec: dict[str, Any]) -> None:
            acc = rec["test_acc"]
            parts = [f"epoch {rec['epoch']}/{n_epochs}", f"lr {rec['lr']:.3g}",
                     f"loss {rec['loss']:.4f}", f"test acc {100 * acc:.2f}%"]
            if rec["loss_noisy"] is not None and rec["loss_clean"] is not None:
                parts.append(f"loss correct/wrong {rec['loss_clean']:.3f}/{rec['loss_noisy']:.3f}")
            output.console.print("  ".join(parts), soft_wrap=True, markup=False)

        result = lib.train_prompt(
            td, cfg, loaded=loaded, init_ctx=init_ctx, checkpoint=ckpt, resume=resume,
            run_key=key, on_epoch=progress,
        )
        if result.info.get("resumed_at"):
            output.info(f"resumed from {ckpt} at epoch {result.info['resumed_at']}")
        meta = {
            "model": loaded.identity,
            "dataset": td.features.meta.get("dataset"),
            "classnames": td.classnames,
            "options": options,
            "upstream": upstream,
            "key": key,
            "prompt": result.prompt_meta,
            "loss": cfg.loss,
            "knobs": result.info["knobs"],
            "history": result.history,
        }
        artifacts.save(target, "prompt", {"ctx": result.ctx}, meta)
        ckpt.unlink(missing_ok=True)
        if export_coop is not None:
            lib.export_coop(export_coop, loaded.model, artifacts.load(target, "prompt"))
            output.info(f"CoOp checkpoint: {export_coop}")
        output.emit(target, _summary(meta), as_json)


def _summary(meta: dict[str, Any]) -> dict[str, Any]:
    from nlp_cli.evaluate import last_k_mean

    history = meta.get("history") or []
    return {
        "loss": meta.get("loss"),
        "epochs": len(history),
        "test_acc": history[-1]["test_acc"] if history else None,
        "last5_mean_acc": last_k_mean(history),
    }
