"""`nlp train`: learn CoOp context vectors on a label set or partition; print the prompt's path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from nlp_cli.cli import output
from nlp_cli.cli.common import Precision, Pretrained, show, test_pause, weights
from nlp_cli.cli.names import COMPILE, LOSSES
from nlp_cli.cli.progress import Steps
from nlp_cli.errors import UsageError


def _complete_loss(incomplete: str) -> list[str]:
    return [n for n in LOSSES if n.startswith(incomplete)]


# methods/joapr.PRESET_CHOICES, here so that --help imports no torch (a test holds them equal).
JOAPR_PRESETS = (
    "auto",
    "none",
    "imagenet",
    "sun397",
    "caltech101",
    "oxford_flowers",
    "stanford_cars",
    "fgvc_aircraft",
    "oxford_pets",
    "ucf101",
    "eurosat",
    "dtd",
)


def _choices(*names: str):
    return lambda incomplete: [n for n in names if n.startswith(incomplete)]


def register(app: typer.Typer) -> None:
    """Add the `train` command."""

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
            help=f"Loss (default ce) or a comma list of losses: {', '.join(LOSSES)}.",
            autocompletion=_complete_loss,
        ),
        protocol: str | None = typer.Option(
            None,
            "--protocol",
            autocompletion=_choices("coop", "dspt", "nlprompt"),
            help="coop / dspt (CoOp's vit_b16_ep50: 50 epochs, SGD 0.002 momentum 0.9, wd 5e-4, "
            "1 warm-up epoch, drop_last) or nlprompt (200 epochs, PromptOT every epoch, clean "
            "then noisy batches); docs/PROTOCOLS.md.",
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
        warmup_recount: bool | None = typer.Option(
            None,
            "--warmup-recount/--no-warmup-recount",
            help="Restart the cosine after the warm-up, as Dassl (default on).",
        ),
        drop_last: bool | None = typer.Option(
            None, "--drop-last/--no-drop-last", help="Drop the last partial batch (presets: on)."
        ),
        ot_reg: float | None = typer.Option(
            None, "--ot-reg", help="nlprompt with --repurify epoch: PromptOT's reg (0.01)."
        ),
        curriculum_epochs: int | None = typer.Option(
            None,
            "--curriculum-epochs",
            help="nlprompt with --repurify epoch: NLPrompt's curriculum ramp length (0 = off).",
        ),
        curriculum_begin: float | None = typer.Option(
            None, "--curriculum-begin", help="The curriculum's first budget (0.3)."
        ),
        curriculum_mode: str | None = typer.Option(
            None, "--curriculum-mode", help="The curriculum's ramp: linear or exp."
        ),
        augment: str | None = typer.Option(
            None,
            "--augment",
            autocompletion=_choices("views", "online", "none"),
            help="views (a cached augmented view per epoch, default), online (fresh CoOp "
            "crops through the image encoder every epoch) or none (center crops).",
        ),
        loaders: str | None = typer.Option(
            None,
            "--loaders",
            autocompletion=_choices("mixed", "separate"),
            help="nlprompt: mixed batches, or separate (all clean batches, then all noisy).",
        ),
        seed: str | None = typer.Option(
            None, "--seed", help="Seed of init, order and views (1), or a comma list: 1,2,3."
        ),
        device: str | None = typer.Option(
            None, "--device", help="auto (default: CUDA when present), cpu, cuda or cuda:N."
        ),
        precision: Precision = None,
        compile_step: str | None = typer.Option(
            None,
            "--compile",
            autocompletion=_choices(*COMPILE),
            help="Run the step's text encoder through torch.compile: auto (default: on CUDA; "
            "on CPU for long runs of a ViT-B-sized tower), on or off; eager, with one "
            "warning, where compiling fails.",
        ),
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
        class_chunk: int | None = typer.Option(
            None,
            "--class-chunk",
            help="Classes per text-encoder chunk, recomputed in backward so memory stays "
            "bounded (default: 256 above 512 classes; 0 = all at once).",
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
        joapr_preset: str | None = typer.Option(
            None,
            "--joapr-preset",
            autocompletion=_choices(*JOAPR_PRESETS),
            help="JoAPR: the README's per-dataset warm-up, α₁, α₂ (auto: the features' "
            "dataset; none: 1, 0.5, 1.0).",
        ),
        joapr_warmup: int | None = typer.Option(
            None, "--joapr-warmup", help="JoAPR: warm-up epochs, CE + α₁·neg-entropy (preset)."
        ),
        joapr_entropy: float | None = typer.Option(
            None, "--joapr-entropy", help="JoAPR: α₁, the warm-up's negative entropy (preset)."
        ),
        joapr_prior: float | None = typer.Option(
            None, "--joapr-prior", help="JoAPR: α₂, the class-balance penalty (preset; 0 = off)."
        ),
        joapr_alpha: float | None = typer.Option(
            None, "--joapr-alpha", help="JoAPR: mixup's Beta(β, β) (0.001, the reference's)."
        ),
        joapr_temperature: float | None = typer.Option(
            None, "--joapr-temperature", help="JoAPR: targets' sharpening p^(1/T) (0.5; 1 = off)."
        ),
        joapr_threshold: float | None = typer.Option(
            None,
            "--joapr-threshold",
            help="JoAPR: the adaptive posterior threshold's start, or the fixed one (0.5).",
        ),
        joapr_rule: str | None = typer.Option(
            None,
            "--joapr-rule",
            autocompletion=_choices("both", "intersection", "adaptive", "fixed"),
            help="JoAPR: clean rule, GMM intersection or adaptive threshold (both: either).",
        ),
        joapr_average: int | None = typer.Option(
            None, "--joapr-average", help="JoAPR: epochs of division losses averaged (5)."
        ),
        joapr_views: int | None = typer.Option(
            None, "--joapr-views", help="JoAPR: cached views its targets average over (1)."
        ),
        q: float | None = typer.Option(None, "--q", help="gce's q (0.7)."),
        eps: float | None = typer.Option(None, "--eps", help="ls's ε (0.2)."),
        tau: float | None = typer.Option(None, "--tau", help="logitnorm (1) / logitclip (10) τ."),
        beta: float | None = typer.Option(None, "--beta", help="bootstrap's β (0.95)."),
        scale: float | None = typer.Option(None, "--scale", help="mae's or square's scale (1)."),
        knob: list[str] = typer.Option(
            [], "--knob", help="Set any loss knob, [LOSS.]KNOB=VALUE (repeatable), e.g. q=0.5."
        ),
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
        pretrained: Pretrained = None,
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
        from nlp_cli.stages.train import TrainOptions, split_knobs, train_prompts

        settings = {
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "warmup_epochs": warmup_epochs,
            "warmup_lr": warmup_lr,
            "warmup_recount": warmup_recount,
            "drop_last": drop_last,
            "loaders": loaders,
            "augment": augment,
            "ot_reg": ot_reg,
            "curriculum_epochs": curriculum_epochs,
            "curriculum_begin": curriculum_begin,
            "curriculum_mode": curriculum_mode,
            "device": device,
            "precision": precision,
            "compile": compile_step,
            "n_ctx": n_ctx,
            "ctx_init": ctx_init,
            "csc": csc,
            "class_token_position": class_token_position,
            "class_chunk": class_chunk,
            "targets": targets,
            "repurify": repurify,
            "method": method,
            "joapr_preset": joapr_preset,
            "joapr_warmup": joapr_warmup,
            "joapr_entropy": joapr_entropy,
            "joapr_prior": joapr_prior,
            "joapr_alpha": joapr_alpha,
            "joapr_temperature": joapr_temperature,
            "joapr_threshold": joapr_threshold,
            "joapr_rule": joapr_rule,
            "joapr_average": joapr_average,
            "joapr_views": joapr_views,
            **{k: v for k, v in dict(q=q, eps=eps, tau=tau, beta=beta, scale=scale).items()},
        }
        plain, per_loss = split_knobs(knob)
        settings.update(plain)
        opts = TrainOptions(
            losses=_split(loss, "--loss", str) if loss else [None],
            seeds=_split(seed, "--seed", int) if seed else [None],
            protocol=protocol,
            settings=settings,
            config_file=config,
            init_from=init_from,
            export_coop=export_coop,
            resume=resume,
            model=weights(model, pretrained),
            outs=list(out or []),
            zip=zip_runs,
            loss_knobs=per_loss,
        )
        inputs = list(data) if data else [output.input_path(None, "label set")]
        with Steps() as steps:
            results = train_prompts(
                inputs,
                opts,
                on_epoch=_progress(),
                on_checkpoint=test_pause,
                on_info=output.info,
                on_step=steps,
            )
        seen: set[str] = set()  # the runs' shared warnings (the same features, say) once
        for r in results:
            show(r, seen)
        if len(results) == 1:
            output.emit(results[0].path, results[0].summary, as_json)
        elif as_json:
            output.emit_json({"runs": [{"path": str(r.path), **r.summary} for r in results]})
        else:
            for r in results:
                output.emit(r.path)


def _progress():
    """One stderr line per epoch of each run (runs trained together are named), with the ETA
    of the run from its epochs so far."""
    import time

    from nlp_cli.cli.common import duration

    started: dict[int, tuple[float, int]] = {}

    def line(run: int, label: str, rec: dict[str, Any], cfg: Any) -> None:
        now = time.monotonic()
        t0, e0 = started.setdefault(run, (now, rec["epoch"]))
        left = cfg.epochs - rec["epoch"]
        per_epoch = (now - t0) / (rec["epoch"] - e0) if rec["epoch"] > e0 else None
        parts = [
            f"epoch {rec['epoch']}/{cfg.epochs}",
            f"lr {rec['lr']:.3g}",
            "no batch" if rec["loss"] is None else f"loss {rec['loss']:.4f}",
            f"test acc {100 * rec['test_acc']:.2f}%",
        ]
        if label:
            parts.insert(0, f"[{label}]")
        if rec["loss_noisy"] is not None and rec["loss_clean"] is not None:
            parts.append(f"loss correct/wrong {rec['loss_clean']:.3f}/{rec['loss_noisy']:.3f}")
        if per_epoch is not None and left:
            parts.append(f"eta {duration(per_epoch * left)}")
        output.console.print("  ".join(parts), soft_wrap=True, markup=False)

    return line


def _split(text: str, flag: str, kind: type) -> list[Any]:
    """'a,b,c' → [a, b, c] of `kind`; one UsageError line for a bad item."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [kind(t) for t in items] or [None]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: write one value or a comma list") from None
