"""What every stage function returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StageResult:
    """A stage's outcome: the artifact it wrote (or found cached), a JSON-able summary, and
    the lines a front end may show (`notes` are information, `warnings` deserve attention)."""

    path: Path | None
    summary: dict[str, Any] = field(default_factory=dict)
    cache_hit: bool = False
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
