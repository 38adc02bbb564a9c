"""`analyze_gradients`: per-sample gradient mass of losses on correctly vs wrongly labelled data
(at a prompt as given, or followed over training epochs)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nlp_cli import analysis, artifacts, losses
from nlp_cli.errors import ArtifactError, UsageError
from nlp_cli.stages.result import StageResult


@dataclass
class AnalyzeOptions:
    """Which losses (with knob overrides), at which prompt, and whether to train first."""

    losses: list[str] = field(default_factory=lambda: ["ce", "dsoftmax"])
    knobs: list[str] = field(default_factory=list)  # "[LOSS.]KNOB=VALUE" items
    prompt: Path | None = None
    model: str | None = None
    epochs: int = 0
    seed: int = 1

    def resolved(self) -> tuple[list[str], dict[str, dict[str, float]]]:
        """The loss names (checked, duplicates removed) and each loss's resolved knobs."""
        names = list(dict.fromkeys(n.strip() for n in self.losses if n.strip()))
        if not names:
            raise UsageError("--loss needs at least one loss name")
        for n in names:
            losses.get(n)
        if self.epochs < 0:
            raise UsageError(f"--epochs must be ≥ 0, got {self.epochs}")
        if self.epochs and self.prompt is not None:
            raise UsageError("--epochs trains from a fresh prompt: it cannot start from --prompt")
        given: dict[str, dict[str, Any]] = {}
        for item in self.knobs:
            loss, knob, value = losses.parse_knob(item)
            if loss is not None and loss not in names:
                raise UsageError(f"--knob {item!r}: {loss!r} is not among the --loss names")
            targets = [loss] if loss else [n for n in names if knob in losses.get(n).defaults]
            if not targets:
                raise UsageError(f"--knob {item!r}: none of {', '.join(names)} has a knob {knob}")
            for t in targets:
                given.setdefault(t, {})[knob] = value
        return names, {n: losses.resolve_knobs(n, **given.get(n, {})) for n in names}


def analyze_gradients(
    labels: Path | str,
    opts: AnalyzeOptions | None = None,
    out: Path | None = None,
    write: bool = True,
    need_stats: bool = False,
) -> tuple[StageResult, analysis.GradStats | None]:
    """Gradient statistics of each loss on a label set or partition; with `write`, saved as JSON.

    Returns the result (its summary is the statistics) and the per-sample masses (None on a
    cache hit, where only the summary is read back; `need_stats` skips the cache)."""
    opts = opts or AnalyzeOptions()
    names, knobs = opts.resolved()
    path = Path(labels)
    kind = artifacts.read_meta(path).get("kind")
    if kind not in artifacts.KINDS:
        raise ArtifactError(f"{path} is a safetensors file but not an nlp artifact (no kind)")
    if kind not in ("labelset", "partition"):
        raise UsageError(f"{path} is a {kind} artifact, but a labelset or partition is expected")
    needing = [n for n in names if losses.get(n).needs_partition]
    if needing and kind != "partition":
        raise UsageError(
            f"loss {needing[0]} needs a clean/noisy partition: pipe the label set through "
            "`nlp purify` first"
        )
    upstream = {"labels": artifacts.file_digest(path)}
    if opts.prompt is not None:
        artifacts.read_meta(opts.prompt)
        upstream["prompt"] = artifacts.file_digest(opts.prompt)
    options: dict[str, Any] = {"losses": names, "knobs": knobs, "model": opts.model}
    if opts.epochs:
        options.update(epochs=opts.epochs, seed=opts.seed)
    key = artifacts.cache_key("analysis", upstream, options)
    target = out or artifacts.default_out("analysis", f"grad-{path.stem}", key, ".json")
    if write:
        artifacts.check_output(target, [path, opts.prompt])
    if write and out is None and not need_stats and target.exists():
        try:
            summary = json.loads(target.read_text())
        except (OSError, ValueError):
            summary = None
        if isinstance(summary, dict) and list(summary) == names:
            return StageResult(target, summary, cache_hit=True), None

    data = analysis.prepare(path, opts.prompt, opts.model)
    timeline: dict[str, list[analysis.GradStats]] = {}
    if opts.epochs:
        timeline = analysis.gradient_over_training(
            data, names, opts.epochs, knobs, opts.seed, opts.model
        )
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
    if write:
        artifacts.atomic_write_text(target, json.dumps(summary, indent=2) + "\n")
    return StageResult(target if write else None, summary), stats
