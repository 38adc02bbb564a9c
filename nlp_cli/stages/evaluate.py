"""`evaluate`: metrics of a prompt file (or of the hand prompt, zero-shot) on a cached split."""

from __future__ import annotations

import json
from pathlib import Path

from nlp_cli import artifacts
from nlp_cli import evaluate as metrics_of
from nlp_cli.errors import UsageError
from nlp_cli.stages.result import StageResult


def evaluate(
    prompt: Path | str | None = None,
    features: Path | str | None = None,
    split: str = "test",
    model: str | None = None,
    device: str = "cpu",
    out: Path | None = None,
    write: bool = True,
    precision: str | None = None,
    template: str | None = None,
    untrained: int | None = None,
) -> StageResult:
    """Metrics JSON of `prompt` on a split of its features (or of `features`); zero-shot with
    the hand prompt when `prompt` is None. With `write`, the metrics are saved to `out` (or a
    default path under NLP_HOME) and the result's path names that file."""
    if prompt is None and features is None:
        raise UsageError("nothing to evaluate: give a prompt file or --zero-shot FEATURES")
    prompt = Path(prompt) if prompt is not None else None
    if write and out is not None:
        artifacts.check_output(out, [prompt, features])
    summary = metrics_of.evaluate(
        prompt,
        Path(features) if features else None,
        split,
        model,
        device,
        precision,
        template,
        untrained,
    )
    if not write:
        return StageResult(None, summary)
    upstream = {"features": artifacts.file_digest(summary["features"])}
    if prompt is not None:
        upstream["prompt"] = artifacts.file_digest(prompt)
    options = {"split": split, "template": template, "untrained": untrained}
    key = artifacts.cache_key("metrics", upstream, options)
    what = "untrained" if untrained is not None else "zero-shot"
    stem = f"eval-{prompt.stem if prompt else what}-{split}"
    target = Path(out) if out is not None else artifacts.default_out("metrics", stem, key, ".json")
    artifacts.atomic_write_text(target, json.dumps(summary, indent=2) + "\n")
    return StageResult(target, summary)
