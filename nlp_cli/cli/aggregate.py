"""`nlp aggregate`: merge many `nlp eval` metrics files into one CSV."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from nlp_cli.cli import output


def register(app: typer.Typer) -> None:
    """Add the `aggregate` command."""

    @app.command("aggregate")
    def aggregate(
        paths: list[Path] = typer.Argument(..., help="Metrics JSON files or folders of them."),
        out: Path | None = typer.Option(None, "--out", help="Write the CSV here (stdout: path)."),
        as_json: bool = typer.Option(False, "--json", help="The rows as JSON on stdout."),
    ) -> None:
        """One CSV row per metrics file: dataset, model, task, acc1, acc5, per-class recall …"""
        from nlp_cli.aggregate import collect, to_csv

        rows = collect(paths)
        if as_json:
            output.emit_json({"rows": rows})
        elif out is not None:
            from nlp_cli import artifacts

            artifacts.check_output(out, list(paths))
            artifacts.atomic_write_text(out, to_csv(rows))
            output.emit(out)
        else:
            sys.stdout.write(to_csv(rows))
