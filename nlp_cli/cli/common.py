"""What every command shares: the common options, the test hook, and showing a StageResult."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from nlp_cli.cli import output
from nlp_cli.cli.progress import Ticker, duration  # noqa: F401  (shared by the commands)

AsJson = Annotated[bool, typer.Option("--json", help="JSON summary on stdout.")]
Out = Annotated[Path | None, typer.Option("--out", help="Output file (default under NLP_HOME).")]
Model = Annotated[
    str | None,
    typer.Option("--model", help="CLIP model name or checkpoint (default: the features' model)."),
]
Pretrained = Annotated[
    str | None,
    typer.Option(
        "--pretrained",
        help="Weights of an open_clip:ARCH model: a checkpoint file, a tag fetched by "
        "`nlp download`, or none (random weights).",
    ),
]
Device = Annotated[
    str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda or cuda:N.")
]
Precision = Annotated[
    str | None,
    typer.Option(
        "--precision", help="fp32, fp16, bf16 or amp (default: fp16 on CUDA as CoOp, fp32 on CPU)."
    ),
]


def weights(model: str | None, pretrained: str | None) -> str | None:
    """--model with --pretrained, as one model reference (open_clip:ARCH@PRETRAINED)."""
    if pretrained is None:
        return model
    from nlp_cli import clip_model

    return clip_model.model_ref(model, pretrained)


def resolve_run(device: str, precision: str | None) -> tuple[str, str]:
    """The device and precision a command runs with (`said` tells them on stderr)."""
    from nlp_cli import clip_model

    device = clip_model.resolve_device(device)
    return device, clip_model.resolve_precision(precision, device)


def said(device: str, precision: str) -> None:
    """The device and precision that ran, on stderr (after the work, so that a failure stays
    one line)."""
    output.info(f"ran on {device} ({precision})")


def test_pause() -> None:
    """After each resumable unit (a shard, an epoch) is on disk: with NLP_TEST_PAUSE=SECONDS
    the process pauses, so that tests can interrupt a run part-way without depending on speed."""
    pause = float(os.environ.get("NLP_TEST_PAUSE") or 0)
    if pause > 0:
        time.sleep(pause)


def show(result: Any, seen: set[str] | None = None) -> None:
    """A StageResult's cache hit, warnings and notes on stderr. With `seen` (shared by the runs of
    one command), a warning or note already shown for another run is not repeated."""
    if result.cache_hit and result.path is not None:
        output.info(f"cache hit: {result.path}")
    for lines, say in ((result.warnings, output.warn), (result.notes, output.info)):
        for line in lines:
            if seen is not None:
                if line in seen:
                    continue
                seen.add(line)
            say(line)


def finish(result: Any, as_json: bool, summary: dict[str, Any] | None = None) -> None:
    """Show a StageResult and print its path (or its JSON summary) on stdout."""
    show(result)
    output.emit(result.path, result.summary if summary is None else summary, as_json)
