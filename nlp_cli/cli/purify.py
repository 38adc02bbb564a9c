"""`nlp purify`: split a label set into clean and noisy samples (PromptOT, zero-shot, GMM)."""

from __future__ import annotations

from pathlib import Path

import typer

from nlp_cli.cli import output
from nlp_cli.cli.common import (
    AsJson,
    Device,
    Model,
    Out,
    Precision,
    Pretrained,
    finish,
    resolve_run,
    said,
    weights,
)
from nlp_cli.cli.names import PURIFIERS
from nlp_cli.cli.progress import Meter
from nlp_cli.errors import UsageError


def register(app: typer.Typer) -> None:
    """Add the `purify` command."""

    @app.command("purify")
    def purify(
        labels: Path | None = typer.Argument(
            None, help="Label set from `nlp corrupt` (default: a path piped on stdin)."
        ),
        method: str = typer.Option("ot", "--method", help=f"Purifier: {', '.join(PURIFIERS)}."),
        reg: float = typer.Option(0.01, "--reg", help="Entropic regularisation of PromptOT."),
        solver: str = typer.Option(
            "torch", "--solver", help="Sinkhorn for PromptOT: torch (fast) or pot (POT's)."
        ),
        budget: float | None = typer.Option(
            None,
            "--budget",
            help="PromptOT: only this share of rows, most certain first, may be clean "
            "(NLPrompt's curriculum budget; default all).",
        ),
        prompt: Path | None = typer.Option(
            None, "--prompt", help="Trained prompt file for the prototypes (default: hand prompt)."
        ),
        model: Model = None,
        pretrained: Pretrained = None,
        template: str | None = typer.Option(
            None,
            "--template",
            help='Hand prompt for the prototypes: "…{}…", or ensemble; default: the '
            "dataset's CoOp template.",
        ),
        device: Device = "auto",
        precision: Precision = None,
        report: Path | None = typer.Option(
            None, "--report", help="Also write the suspected wrong labels as CSV, worst first."
        ),
        out: Out = None,
        as_json: AsJson = False,
    ) -> None:
        """Clean/noisy partition of the training labels, with scores and pseudo-labels."""
        from nlp_cli.purify import get
        from nlp_cli.stages.purify import PurifyOptions, make_partition

        get(method)
        if method == "ot":
            options = {"reg": reg, "solver": solver}
            if budget is not None:
                options["budget"] = budget
        elif reg != 0.01 or solver != "torch" or budget is not None:
            raise UsageError(f"--reg, --solver and --budget apply to --method ot, not {method}")
        else:
            options = {}
        device, precision = resolve_run(device, precision)
        opts = PurifyOptions(
            method=method,
            options=options,
            prompt=prompt,
            model=weights(model, pretrained),
            device=device,
            precision=precision,
            template=template,
        )
        opts.validate()
        path = output.input_path(labels, "label set")
        with Meter("Sinkhorn", "iterations", bound=True) as bar:
            result = make_partition(
                path,
                opts,
                out,
                report,
                on_progress=lambda it, most, error: bar.update(it, most, f"error {error:.1e}"),
            )
        if not result.cache_hit:
            said(device, precision)
        finish(result, as_json)
