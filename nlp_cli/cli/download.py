"""`nlp download`: put a dataset (CoOp layout) or CLIP weights under NLP_HOME; print the path."""

from __future__ import annotations

from pathlib import Path

import typer

from nlp_cli.cli import output
from nlp_cli.cli.common import AsJson, finish
from nlp_cli.errors import UsageError


def _complete_dataset(incomplete: str) -> list[str]:
    from nlp_cli.datasets import list_datasets

    return [n for n in list_datasets() if n.startswith(incomplete)]


def register(app: typer.Typer) -> None:
    """Add the `download` command."""

    @app.command("download")
    def download(
        dataset: str | None = typer.Argument(
            None,
            help="Catalog name (see --list).",
            autocompletion=_complete_dataset,
        ),
        root: Path | None = typer.Option(
            None, "--root", help="Where datasets live (default: NLP_HOME/data)."
        ),
        from_dir: Path | None = typer.Option(
            None,
            "--from",
            help="Adopt a local copy in CoOp's layout (linked, never modified) instead of "
            "downloading.",
        ),
        model: str | None = typer.Option(
            None,
            "--model",
            help="Download an OpenAI CLIP checkpoint (e.g. ViT-B/16), or open_clip:ARCH "
            "weights with --pretrained TAG.",
        ),
        pretrained: str | None = typer.Option(
            None, "--pretrained", help="open_clip pretrained tag (e.g. laion2b_s34b_b79k)."
        ),
        list_: bool = typer.Option(False, "--list", help="Show the catalog and what is present."),
        seed: int = typer.Option(
            1, "--seed", help="Seed for CoOp's split rule when a split file must be regenerated."
        ),
        as_json: AsJson = False,
    ) -> None:
        """Download a CoOp benchmark dataset (or adopt a local copy) and print its folder.

        Without network, place the files by hand or use --from DIR with a copy in CoOp's
        layout (e.g. DIR = caltech-101/ holding 101_ObjectCategories/ and its split file).
        """
        from nlp_cli import datasets
        from nlp_cli.home import data_dir

        root = Path(root) if root is not None else data_dir()
        if list_:
            rows = []
            for name in datasets.list_datasets():
                spec = datasets.get(name)
                folder = root / spec.folder
                rows.append(
                    {
                        "name": name,
                        "folder": str(folder),
                        "present": spec.present(folder),
                        "description": spec.description,
                    }
                )
            if as_json:
                output.emit_json(rows)  # type: ignore[arg-type]  # documented as a JSON list
                return
            from rich.table import Table

            table = Table("dataset", "present", "folder", "description")
            for r in rows:
                present = "yes" if r["present"] else "-"
                table.add_row(r["name"], present, r["folder"], r["description"])
            output.console.print(table)
            return
        # After --list: the stages import torch, which listing the catalog does not need.
        from nlp_cli.stages import prepare as stages

        with _Bytes() as bar:
            if model is not None:
                if dataset is not None:
                    raise UsageError("give either a DATASET or --model, not both")
                if model.startswith("open_clip:"):
                    if not pretrained:
                        raise UsageError(f"--model {model} needs --pretrained TAG")
                    result = stages.download_open_clip(model, pretrained)
                else:
                    if pretrained is not None:
                        raise UsageError("--pretrained applies to --model open_clip:ARCH")
                    result = stages.download_model(model, on_progress=bar.update)
            elif pretrained is not None:
                raise UsageError("--pretrained goes with --model open_clip:ARCH")
            elif dataset is None:
                raise UsageError("name a DATASET (see `nlp download --list`) or --model NAME")
            else:
                result = stages.download(dataset, root, from_dir, seed, on_progress=bar.update)
        finish(result, as_json)


class _Bytes:
    """A Rich download bar on stderr (terminals only) fed by (label, done, total) callbacks."""

    def __enter__(self) -> _Bytes:
        self.progress = None
        self.tasks: dict[str, object] = {}
        return self

    def update(self, label: str, done: int, total: int | None) -> None:
        if not output.console.is_terminal:
            return
        if self.progress is None:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TransferSpeedColumn,
            )

            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
            self.progress = Progress(
                *columns, TransferSpeedColumn(), console=output.console, transient=True
            )
            self.progress.start()
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(label, total=total)
        self.progress.update(self.tasks[label], completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
