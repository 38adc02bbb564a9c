"""`nlp sweep`: run a YAML grid through the stages and write the papers' table."""

from __future__ import annotations

from pathlib import Path

import typer

from nlp_cli.cli import output
from nlp_cli.cli.common import test_pause
from nlp_cli.cli.progress import Meter, Steps


def register(app: typer.Typer) -> None:
    """Add the `sweep` command."""

    @app.command("sweep")
    def sweep(
        grid_file: Path | None = typer.Argument(
            None, help="The sweep YAML (see examples/), or --preset NAME."
        ),
        preset: str | None = typer.Option(
            None, "--preset", help="A bundled grid for a paper's table (see --list-presets)."
        ),
        list_presets: bool = typer.Option(
            False, "--list-presets", help="List the bundled grids and what each reproduces."
        ),
        device: str = typer.Option(
            "cpu", "--device", help="cpu, cuda or cuda:N (under torchrun: cuda = this rank's GPU)."
        ),
        out: Path | None = typer.Option(
            None, "--out", help="Sweep folder (default: the YAML's `out`, else NLP_HOME/sweeps)."
        ),
        dry_run: bool = typer.Option(False, "--dry-run", help="List the cells and stop."),
        plot: bool = typer.Option(True, "--plot/--no-plot", help="Accuracy-vs-noise PNG."),
        batch: bool = typer.Option(
            True,
            "--batch/--no-batch",
            help="Train cells with the same dataset and options together (default) or one by one.",
        ),
        as_json: bool = typer.Option(False, "--json", help="JSON summary on stdout."),
    ) -> None:
        """Datasets × noise × methods × seeds: cached cells are skipped; prints the table's path."""
        import os

        from nlp_cli import sweep as sw
        from nlp_cli.errors import UsageError

        if list_presets:
            for name, about in sw.presets().items():
                output.info(f"{name:<18} {about}")
            if as_json:
                output.emit_json({"presets": sw.presets()})
            return
        if (grid_file is None) == (preset is None):
            raise UsageError("give a sweep YAML or --preset NAME (see --list-presets)")
        grid = sw.load_grid(grid_file if preset is None else sw.preset_path(preset))
        if out is not None:
            grid.out = out
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        if device == "cuda" and world > 1:
            device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"
        cells = grid.cells()
        if dry_run:
            for cell in cells:
                done = grid.metrics_path(cell).exists()  # without features, no key to compare
                output.info(f"{'done   ' if done else 'pending'} {cell.slug}")
            if as_json:
                output.emit_json({"cells": [c.slug for c in cells]})
            return

        mine = len(cells[rank::world])
        output.info(f"sweep {grid.name}: {len(cells)} cells → {grid.folder()}")
        with Meter("sweep", "cells", lines=False) as board, Steps() as steps:
            result = sw.run_sweep(
                grid,
                stages=sw.Stages(on_step=steps, on_checkpoint=test_pause),
                device=device,
                progress=_Cells(grid, mine, board),
                batch=batch,
                rank=rank,
                world=world,
            )
        if rank != 0:
            return
        paths = sw.write_tables(result, grid, plot=plot)
        output.console.print(paths["markdown"].read_text(), markup=False, highlight=False)
        summary = {
            "cells": len(cells),
            "finished": len(result.records),
            "ran": result.ran,
            "skipped": result.skipped,
            **{k: str(v) for k, v in paths.items()},
        }
        output.emit(paths["markdown"], summary, as_json)


class _Cells:
    """A line per cell as it is found cached, starts training and is done (with its accuracy),
    numbered among this rank's cells, with the cells' rate and ETA once one is done here; on a
    terminal, the sweep's row of the progress bar."""

    def __init__(self, grid, total: int, meter: Meter) -> None:
        self.grid, self.total, self.meter = grid, total, meter
        self.started = self.finished = 0

    def __call__(self, cell, state: str) -> None:
        import json

        if state == "running":
            self.started += 1
            number = self.finished + self.started
        else:
            self.finished += 1
            number = self.finished
        if state == "done":
            self.started -= 1
        self.meter.update(self.finished, self.total, cell.slug)
        words = [f"── {state} {number}/{self.total}: {cell.slug}"]
        if state == "done":
            try:
                acc = json.loads(self.grid.metrics_path(cell).read_text())["acc1"]
                words.append(f"acc {100 * acc:.2f}%")
            except (OSError, ValueError, KeyError, TypeError):
                pass
        if state != "cached" and self.meter.ticker.rate() is not None:
            words.append(f"({self.meter.ticker.numbers()})")
        output.console.print("  ".join(words), markup=False, highlight=False)
