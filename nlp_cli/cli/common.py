"""What every command shares: the common options, the test hook, and showing a StageResult."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from nlp_cli.cli import output

AsJson = Annotated[bool, typer.Option("--json", help="JSON summary on stdout.")]
Out = Annotated[Path | None, typer.Option("--out", help="Output file (default under NLP_HOME).")]
Model = Annotated[
    str | None,
    typer.Option("--model", help="CLIP model name or checkpoint (default: the features' model)."),
]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")]


def test_pause() -> None:
    """After each resumable unit (a shard, an epoch) is on disk: with NLP_TEST_PAUSE=SECONDS
    the process pauses, so that tests can interrupt a run part-way without depending on speed."""
    pause = float(os.environ.get("NLP_TEST_PAUSE") or 0)
    if pause > 0:
        time.sleep(pause)


def show(result: Any) -> None:
    """A StageResult's cache hit, warnings and notes on stderr."""
    if result.cache_hit and result.path is not None:
        output.info(f"cache hit: {result.path}")
    for line in result.warnings:
        output.warn(line)
    for line in result.notes:
        output.info(line)


def finish(result: Any, as_json: bool, summary: dict[str, Any] | None = None) -> None:
    """Show a StageResult and print its path (or its JSON summary) on stdout."""
    show(result)
    output.emit(result.path, result.summary if summary is None else summary, as_json)
