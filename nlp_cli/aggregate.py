"""Many metrics files → one table (as CLIP_benchmark's `build` merges its result files)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from nlp_cli.errors import UsageError

COLUMNS = [
    "dataset",
    "model",
    "task",
    "split",
    "acc1",
    "acc5",
    "mean_per_class_recall",
    "last5_mean_acc",
    "loss",
    "protocol",
    "n",
    "file",
]


def collect(paths: list[Path]) -> list[dict[str, Any]]:
    """One row per metrics JSON (folders are searched for *.json); unreadable files are errors."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += sorted(p.rglob("*.json"))
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"{p}: no such file or folder")
    rows = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"{f} is not a readable metrics JSON ({type(e).__name__})") from e
        if not isinstance(data, dict) or "acc1" not in (data.get("metrics") or data):
            continue  # not a metrics file (a sweep's results.json, say)
        m = data.get("metrics") or {}
        rows.append(
            {
                "dataset": data.get("dataset"),
                "model": data.get("model"),
                "task": data.get("task"),
                "split": data.get("split"),
                "acc1": m.get("acc1", data.get("acc1")),
                "acc5": m.get("acc5", data.get("acc5")),
                "mean_per_class_recall": m.get(
                    "mean_per_class_recall", data.get("mean_per_class_recall")
                ),
                "last5_mean_acc": data.get("last5_mean_acc"),
                "loss": data.get("loss"),
                "protocol": data.get("protocol"),
                "n": data.get("n"),
                "file": str(f),
            }
        )
    if not rows:
        raise UsageError("no metrics files found (the JSON that `nlp eval` writes)")
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
