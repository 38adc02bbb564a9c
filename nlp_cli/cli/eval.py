"""`nlp eval`: accuracy of a prompt file (or zero-shot) on a split; print the metrics' path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from nlp_cli.cli import output
from nlp_cli.cli.common import Device, Precision, Pretrained, resolve_run, said, weights


def render(result: dict[str, Any]) -> None:
    """The metrics as a Rich table on stderr."""
    from rich.table import Table

    title = f"{result['split']} split, {result['n']} samples"
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("acc1", "mean_per_class_recall", "macro_f1", "last5_mean_acc"):
        if result.get(key) is not None:
            table.add_row(key, f"{100 * result[key]:.2f}%")
    output.console.print(table)


def register(app: typer.Typer) -> None:
    """Add the `eval` command."""

    @app.command("eval")
    def eval_(
        prompts: list[Path] | None = typer.Argument(
            None,
            help="Prompt file(s) from `nlp train` (default: a path piped on stdin); several are "
            "evaluated in one process, one model load, each printed on its own line.",
            show_default=False,
        ),
        split: str = typer.Option("test", "--split", help="test, val or train."),
        features: Path | None = typer.Option(
            None, "--features", help="Evaluate on these features (same classes and model)."
        ),
        zero_shot: Path | None = typer.Option(
            None, "--zero-shot", help="Evaluate the hand prompt on these features (no PROMPT)."
        ),
        model: str | None = typer.Option(
            None, "--model", help="CLIP model name or checkpoint (default: the features' model)."
        ),
        pretrained: Pretrained = None,
        device: Device = "auto",
        precision: Precision = None,
        untrained: Path | None = typer.Option(
            None,
            "--untrained",
            help="Evaluate an untrained random 16-token context (CoOp's init, --seed) on these "
            "features: the baseline that shows what training added.",
        ),
        seed: int = typer.Option(1, "--seed", help="With --untrained: the context's seed."),
        template: str | None = typer.Option(
            None,
            "--template",
            help='Zero-shot hand prompt: "…{}…", or ensemble (CLIP\'s 80); default: the '
            "dataset's CoOp template.",
        ),
        out: Path | None = typer.Option(None, "--out", help="Where to write the metrics JSON."),
        plot: Path | None = typer.Option(
            None,
            "--plot",
            help="Save the prompt's training curves (loss of correctly vs wrongly labelled "
            "samples, test accuracy per epoch) as a PNG (needs matplotlib).",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON on stdout."),
    ) -> None:
        """acc1, mean per-class recall, macro F1, per-class accuracy (and DSPT's last-5 mean)."""
        from nlp_cli import artifacts
        from nlp_cli.errors import UsageError
        from nlp_cli.stages.evaluate import evaluate

        if zero_shot is not None and untrained is not None:
            raise UsageError("choose --zero-shot or --untrained, not both")
        paths: list[Path | None]
        if zero_shot is not None or untrained is not None:
            if prompts or features is not None:
                flag = "--zero-shot" if zero_shot is not None else "--untrained"
                raise UsageError(f"{flag} FEATURES takes neither a PROMPT nor --features")
            paths, feats = [None], zero_shot or untrained
        elif template is not None:
            raise UsageError("--template applies to --zero-shot (a prompt brings its own context)")
        else:
            paths = list(prompts) if prompts else [output.input_path(None, "prompt file")]
            feats = features
        if len(paths) > 1:
            for flag, value in (("--out", out), ("--plot", plot)):
                if value is not None:
                    raise UsageError(f"{flag} takes one PROMPT, got {len(paths)}")
            if len(set(paths)) < len(paths):
                raise UsageError("a PROMPT is given twice")
        if plot is not None:
            from nlp_cli import analysis

            if paths[0] is None:
                raise UsageError("--plot draws a trained prompt's history: give a PROMPT")
            analysis.require_matplotlib()
            artifacts.check_output(plot, [paths[0], feats, out], what="--plot")
        device, precision = resolve_run(device, precision)
        # every prompt is evaluated (the model loaded once) before anything is printed, so a
        # bad one among several fails the call with nothing on stdout
        results = [
            evaluate(
                path,
                feats,
                split,
                weights(model, pretrained),
                device,
                out=out,
                write=not as_json,
                precision=precision,
                template=template,
                untrained=seed if untrained is not None else None,
            )
            for path in paths
        ]
        for path, result in zip(paths, results, strict=True):
            if len(paths) > 1:
                output.info(str(path))
            render(result.summary)
        said(device, precision)
        if plot is not None:
            path = paths[0]
            meta = artifacts.read_meta(path)
            history = meta.get("history") or []
            if not history:
                raise UsageError(f"{path} has no training history to plot")
            analysis.plot_history(history, plot, title=f"{path.name}: loss {meta.get('loss')}")
            output.info(f"plot: {plot}")
        for result in results:  # one line each: a JSON object, or the metrics file's path
            if as_json:
                output.emit_json(result.summary)
            else:
                output.emit(result.path)
