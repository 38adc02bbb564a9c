"""`nlp predict`: the top-k labels of images from a prompt file (or zero-shot class names)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from nlp_cli.cli import output
from nlp_cli.cli.common import Device, Precision, Pretrained, resolve_run, show, weights


def register(app: typer.Typer) -> None:
    """Add the `predict` command."""

    @app.command("predict")
    def predict(
        inputs: list[Path] = typer.Argument(
            ...,
            help="A PROMPT file then images, folders or CSVs (path first); with "
            "--zero-shot, only images.",
        ),
        zero_shot: str | None = typer.Option(
            None, "--zero-shot", help="Class names (a file, one per line, or a comma list)."
        ),
        model: str | None = typer.Option(
            None, "--model", help="CLIP model (default: the prompt's; needed with --zero-shot)."
        ),
        pretrained: Pretrained = None,
        top_k: int = typer.Option(5, "--top-k", help="Labels per image."),
        device: Device = "auto",
        precision: Precision = None,
        out: Path | None = typer.Option(None, "--out", help="Write the CSV here (stdout: path)."),
        as_json: bool = typer.Option(False, "--json", help="JSON on stdout instead of CSV."),
    ) -> None:
        """Per-image top-k labels with probabilities, as CSV path,rank,label,probability."""
        from nlp_cli import artifacts
        from nlp_cli.stages.predict import PredictOptions, read_classnames, to_csv
        from nlp_cli.stages.predict import predict as run

        device, precision = resolve_run(device, precision)
        if zero_shot is None:
            prompt, images = inputs[0], inputs[1:]
            if not images:
                raise typer.BadParameter("give the images after the PROMPT file")
            names = None
        else:
            prompt, images, names = None, inputs, read_classnames(zero_shot)
        opts = PredictOptions(prompt, names, weights(model, pretrained), top_k, device, precision)
        if out is not None:
            artifacts.check_output(out, [prompt, *images])
        result = run(images, opts)
        show(result)
        rows = result.summary["images"]
        if as_json:
            output.emit_json(result.summary)
        elif out is not None:
            artifacts.atomic_write_text(out, to_csv(rows))
            output.emit(out)
        else:
            sys.stdout.write(to_csv(rows))
            sys.stdout.flush()
