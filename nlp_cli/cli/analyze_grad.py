"""`nlp analyze-grad`: per-sample gradient mass of losses on correctly vs wrongly labelled data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from nlp_cli.cli import output
from nlp_cli.cli.common import Pretrained, show, weights

if TYPE_CHECKING:
    from nlp_cli.analysis import GradStats

# `nlp_cli.analysis` (and torch with it) is imported where the work is, not for `--help`.

BAR_WIDTH = 20


def _fmt(x: float | int | None) -> str:
    if x is None:
        return "–"
    return str(x) if isinstance(x, int) else f"{x:.4g}"


def render_table(summary: dict[str, dict[str, dict[str, Any]]]) -> None:
    """The statistics as a Rich table on stderr."""
    from rich.table import Table

    from nlp_cli import analysis

    table = Table(title="gradient mass Σ|∂L/∂z| per sample")
    table.add_column("loss")
    table.add_column("labels")
    for key in analysis.STAT_KEYS:
        table.add_column(key, justify="right")
    for name, groups in summary.items():
        for group in analysis.GROUPS:
            label = "correct" if group == "clean" else "wrong"
            table.add_row(name, label, *(_fmt(groups[group][k]) for k in analysis.STAT_KEYS))
    output.console.print(table)


def render_timeline(summary: dict[str, dict[str, Any]]) -> None:
    """Mean gradient mass of correctly vs wrongly labelled samples after each epoch, on stderr."""
    from rich.table import Table

    table = Table(title="mean gradient mass per epoch (correct / wrong)")
    table.add_column("epoch", justify="right")
    names = list(summary)
    for name in names:
        table.add_column(name, justify="right")
    for i, first in enumerate(summary[names[0]]["epochs"]):
        row = [str(first["epoch"])]
        for name in names:
            rec = summary[name]["epochs"][i]
            row.append(f"{_fmt(rec['clean']['mean'])} / {_fmt(rec['noisy']['mean'])}")
        table.add_row(*row)
    output.console.print(table)


def render_histograms(stats: GradStats, bins: int) -> None:
    """One terminal histogram per loss: each group's share of samples per bin, on stderr."""
    from nlp_cli import analysis

    for name in stats.masses:
        groups = stats.groups(name)
        hi = float(stats.masses[name].max()) if stats.masses[name].numel() else 1.0
        hists = {g: analysis.histogram(v, bins, 0.0, hi) for g, v in groups.items()}
        edges = hists["clean"][1]
        output.console.print(f"[bold]{name}[/bold]  (correct | wrong, share of each group)")
        for b in range(bins):
            cells = []
            for g in analysis.GROUPS:
                count = hists[g][0][b]
                total = max(int(groups[g].numel()), 1)
                bar = "█" * round(BAR_WIDTH * count / total)
                cells.append(f"{bar:<{BAR_WIDTH}} {count:>6}")
            output.console.print(
                f"  {edges[b]:>8.3g}–{edges[b + 1]:<8.3g} {cells[0]} | {cells[1]}",
                markup=False,
                soft_wrap=True,
            )


def register(app: typer.Typer) -> None:
    """Add the `analyze-grad` command."""

    @app.command("analyze-grad")
    def analyze_grad(
        labels: Path | None = typer.Argument(
            None, help="Label set or partition (default: a path piped on stdin)."
        ),
        loss: str = typer.Option(
            "ce,dsoftmax", "--loss", help="Comma-separated losses, e.g. ce,dsoftmax,gce."
        ),
        prompt: Path | None = typer.Option(
            None, "--prompt", help="A trained prompt file (default: the hand prompt)."
        ),
        knob: list[str] = typer.Option(
            [],
            "--knob",
            help="Override a loss knob, [LOSS.]KNOB=VALUE (repeatable), e.g. gce.q=0.5.",
        ),
        model: str | None = typer.Option(
            None, "--model", help="CLIP model name or checkpoint (default: the features' model)."
        ),
        pretrained: Pretrained = None,
        epochs: int = typer.Option(
            0,
            "--epochs",
            min=0,
            help="Train each loss for N epochs (DSPT protocol settings) and follow its "
            "gradient mass after every epoch; 0 = at the prompt as given.",
        ),
        seed: int = typer.Option(1, "--seed", help="Seed of the training run with --epochs."),
        bins: int = typer.Option(10, "--bins", min=1, max=100, help="Terminal histogram bins."),
        plot: Path | None = typer.Option(
            None, "--plot", help="Also save the histograms as a PNG (needs matplotlib)."
        ),
        out: Path | None = typer.Option(None, "--out", help="Where to write the JSON result."),
        as_json: bool = typer.Option(
            False, "--json", help="Print the statistics as JSON on stdout instead of a path."
        ),
    ) -> None:
        """Gradient mass Σ|∂L/∂z| of each loss on correctly vs wrongly labelled samples."""
        from nlp_cli import analysis
        from nlp_cli.stages.analyze import AnalyzeOptions, analyze_gradients

        opts = AnalyzeOptions(
            losses=loss.split(","),
            knobs=knob,
            prompt=prompt,
            model=weights(model, pretrained),
            epochs=epochs,
            seed=seed,
        )
        opts.resolved()
        if plot is not None:
            analysis.require_matplotlib()
        path = output.input_path(labels, "label set")
        if plot is not None:
            from nlp_cli import artifacts

            artifacts.check_output(plot, [path, prompt, out], what="--plot")
        result, stats = analyze_gradients(
            path, opts, out, write=not as_json, need_stats=plot is not None
        )
        show(result)
        summary = result.summary
        if any("epochs" in v for v in summary.values()):
            render_timeline(summary)
        render_table(summary)
        if stats is not None:
            render_histograms(stats, bins)
            if plot is not None:
                analysis.plot_histograms(stats, plot)
                output.info(f"plot: {plot}")
        if as_json:
            output.emit_json(summary)
        else:
            output.emit(result.path)
