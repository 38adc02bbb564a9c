"""`nlp label-issues`: every image of every split, ranked by how likely its label is wrong."""

from __future__ import annotations

from pathlib import Path

import typer

from nlp_cli.cli import output
from nlp_cli.cli.common import (
    AsJson,
    Device,
    Model,
    Precision,
    Pretrained,
    finish,
    resolve_run,
    said,
    weights,
)


def register(app: typer.Typer) -> None:
    """Add the `label-issues` command."""

    @app.command("label-issues")
    def label_issues(
        source: Path | None = typer.Argument(
            None,
            help="Features from `nlp embed` (your labels as given), a label set or a partition "
            "(default: a path piped on stdin).",
        ),
        method: str = typer.Option(
            "cleanlab",
            "--method",
            help="Scores that rank the images: cleanlab (p of the given label), ot, zeroshot, gmm.",
        ),
        probs: str = typer.Option(
            "zeroshot",
            "--probs",
            help="Probabilities: zeroshot (CLIP with the hand prompt or --prompt) or probe "
            "(out-of-fold logistic regression on the features, cleanlab's recipe).",
        ),
        prompt: Path | None = typer.Option(
            None, "--prompt", help="A trained prompt's probabilities (default: the hand prompt)."
        ),
        splits: str = typer.Option(
            "train,val,test", "--splits", help="Comma-separated splits to check."
        ),
        sheet: Path | None = typer.Option(
            None, "--sheet", help="Also a PNG contact sheet of the top suspects."
        ),
        html: Path | None = typer.Option(
            None, "--html", help="Also a self-contained HTML page of the top suspects."
        ),
        sheet_size: int = typer.Option(36, "--sheet-size", help="Suspects on the sheet/page."),
        model: Model = None,
        pretrained: Pretrained = None,
        template: str | None = typer.Option(
            None, "--template", help='Hand prompt "…{}…" or ensemble (default: the dataset\'s).'
        ),
        device: Device = "auto",
        precision: Precision = None,
        out: Path | None = typer.Option(
            None, "--out", help="The report CSV (default under NLP_HOME)."
        ),
        as_json: AsJson = False,
    ) -> None:
        """A CSV, one row per image: path, split, given and suggested label, score, rank."""
        from nlp_cli.stages.label_issues import LabelIssueOptions, find_label_issues

        device, precision = resolve_run(device, precision)
        opts = LabelIssueOptions(
            method=method,
            probs=probs,
            prompt=prompt,
            model=weights(model, pretrained),
            device=device,
            precision=precision,
            template=template,
            splits=tuple(s.strip() for s in splits.split(",") if s.strip()),
            sheet_size=sheet_size,
        )
        opts.validate()
        path = output.input_path(source, "features or label set")
        result = find_label_issues(path, opts, out, sheet, html)
        said(device, precision)
        finish(result, as_json)
