"""`nlp purify`: split a label set into clean and noisy samples (PromptOT, zero-shot, GMM)."""

from __future__ import annotations

from pathlib import Path

import typer

from nlp_cli.cli import output
from nlp_cli.cli.common import AsJson, Model, Out, finish
from nlp_cli.errors import UsageError


def _purifiers() -> str:
    from nlp_cli.purify import list_purifiers

    return ", ".join(list_purifiers())


def register(app: typer.Typer) -> None:
    """Add the `purify` command."""

    @app.command("purify")
    def purify(
        labels: Path | None = typer.Argument(
            None, help="Label set from `nlp corrupt` (default: a path piped on stdin)."
        ),
        method: str = typer.Option("ot", "--method", help=f"Purifier: {_purifiers()}."),
        reg: float = typer.Option(0.01, "--reg", help="Entropic regularisation of PromptOT."),
        solver: str = typer.Option(
            "torch", "--solver", help="Sinkhorn for PromptOT: torch (fast) or pot (POT's)."
        ),
        prompt: Path | None = typer.Option(
            None, "--prompt", help="Trained prompt file for the prototypes (default: hand prompt)."
        ),
        model: Model = None,
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
        elif reg != 0.01 or solver != "torch":
            raise UsageError(f"--reg and --solver apply to --method ot, not {method}")
        else:
            options = {}
        opts = PurifyOptions(method=method, options=options, prompt=prompt, model=model)
        opts.validate()
        path = output.input_path(labels, "label set")
        finish(make_partition(path, opts, out, report), as_json)
