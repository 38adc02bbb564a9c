"""`nlp analyze-grad`: per-sample gradient mass of losses on correctly vs wrongly labelled data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from nlp_cli import analysis, artifacts, losses
from nlp_cli.cli import output
from nlp_cli.errors import ArtifactError, UsageError

BAR_WIDTH = 20


def parse_losses(spec: str) -> list[str]:
    """Comma-separated loss names, checked against the registry, duplicates removed."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise UsageError("--loss needs at least one loss name")
    for n in names:
        losses.get(n)
    return list(dict.fromkeys(names))


def parse_knobs(items: list[str], names: list[str]) -> dict[str, dict[str, float]]:
    """`LOSS.KNOB=VALUE` settings, checked against each loss's knobs."""
    knobs: dict[str, dict[str, Any]] = {}
    for item in items:
        head, sep, value = item.partition("=")
        loss, dot, knob = head.partition(".")
        if not sep or not dot or not knob or not value:
            raise UsageError(f"--knob {item!r}: expected LOSS.KNOB=VALUE, e.g. gce.q=0.5")
        if loss not in names:
            raise UsageError(f"--knob {item!r}: {loss!r} is not among the --loss names")
        knobs.setdefault(loss, {})[knob] = value
    return {n: losses.resolve_knobs(n, **knobs.get(n, {})) for n in names}


def _fmt(x: float | int | None) -> str:
    if x is None:
        return "–"
    return str(x) if isinstance(x, int) else f"{x:.4g}"


def render_table(summary: dict[str, dict[str, dict[str, Any]]]) -> None:
    """The statistics as a Rich table on stderr."""
    from rich.table import Table

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


def render_histograms(stats: analysis.GradStats, bins: int) -> None:
    """One terminal histogram per loss: each group's share of samples per bin, on stderr."""
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
            [], "--knob", help="Override a loss knob, LOSS.KNOB=VALUE (repeatable), e.g. gce.q=0.5."
        ),
        model: str | None = typer.Option(
            None, "--model", help="CLIP model name or checkpoint (default: the features' model)."
        ),
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
        names = parse_losses(loss)
        knobs = parse_knobs(knob, names)
        if plot is not None:
            analysis.require_matplotlib()
        path = output.input_path(labels, "label set")
        kind = artifacts.read_meta(path).get("kind")
        if kind not in artifacts.KINDS:
            raise ArtifactError(f"{path} is a safetensors file but not an nlp artifact (no kind)")
        if kind not in ("labelset", "partition"):
            raise UsageError(
                f"{path} is a {kind} artifact, but a labelset or partition is expected"
            )
        needing = [n for n in names if losses.get(n).needs_partition]
        if needing and kind != "partition":
            raise UsageError(
                f"loss {needing[0]} needs a clean/noisy partition: pipe the label set through "
                "`nlp purify` first"
            )
        if epochs and prompt is not None:
            raise UsageError("--epochs trains from a fresh prompt: it cannot start from --prompt")
        upstream = {"labels": artifacts.file_digest(path)}
        if prompt is not None:
            artifacts.read_meta(prompt)
            upstream["prompt"] = artifacts.file_digest(prompt)
        options = {"losses": names, "knobs": knobs, "model": model}
        if epochs:
            options.update(epochs=epochs, seed=seed)
        key = artifacts.cache_key("analysis", upstream, options)
        target = out or artifacts.default_out("analysis", f"grad-{path.stem}", key, ".json")
        if not as_json:
            artifacts.ensure_writable(target)

        if not as_json and out is None and plot is None and target.exists():
            try:
                summary = json.loads(target.read_text())
            except (OSError, ValueError):
                summary = None
            if isinstance(summary, dict) and list(summary) == names:
                output.info(f"cache hit: {target}")
                render_table(summary)
                output.emit(target)
                return

        data = analysis.prepare(path, prompt, model)
        timeline: dict[str, list[analysis.GradStats]] = {}
        if epochs:
            timeline = analysis.gradient_over_training(data, names, epochs, knobs, seed, model)
            masses = {n: timeline[n][-1].masses[n] for n in names}
            stats = analysis.GradStats(masses=masses, correct=data.labels == data.true_labels)
        else:
            stats = analysis.gradient_stats(
                names, data.logits, data.labels, data.true_labels, data.clean, knobs
            )
        summary: dict[str, Any] = stats.summary()
        for name, per_epoch in timeline.items():
            summary[name]["epochs"] = [
                {"epoch": e, **st.summary()[name]} for e, st in enumerate(per_epoch, start=1)
            ]
        if timeline:
            render_timeline(summary)
        render_table(summary)
        render_histograms(stats, bins)
        if plot is not None:
            analysis.plot_histograms(stats, plot)
            output.info(f"plot: {plot}")
        if as_json:
            output.emit_json(summary)
        else:
            artifacts.atomic_write_text(target, json.dumps(summary, indent=2) + "\n")
            output.emit(target)
