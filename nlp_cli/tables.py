"""Result tables in the papers' shape: methods × noise settings, mean ± std over seeds."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

UNTRAINED = "Untrained context"
NOISE_ORDER = {"none": 0, "sym": 1, "pair": 2, "idn": 3, "map": 4}


@dataclass(frozen=True)
class Cell:
    """The accuracies of one (method, setting) cell, one per seed, as fractions in [0, 1]."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for a single seed)."""
        n = len(self.values)
        if n < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (n - 1))

    def text(self, digits: int = 2) -> str:
        mean = f"{100 * self.mean:.{digits}f}"
        if len(self.values) < 2:
            return mean
        return f"{mean} ± {100 * self.std:.{digits}f}"


def setting_label(noise: str, rate: float | None) -> str:
    """Column header of a noise setting, in the papers' words: 'Sym 40%', 'Pair 20%', 'Clean'."""
    if noise == "none" or rate is None or rate == 0:
        return "Clean"
    return f"{noise.capitalize() if noise in ('sym', 'pair') else noise.upper()} {100 * rate:g}%"


def _setting_sort_key(setting: tuple[str, float]) -> tuple[int, str, float]:
    noise, rate = setting
    return (NOISE_ORDER.get(noise, len(NOISE_ORDER)), noise, rate or 0.0)


@dataclass
class Table:
    """One table: ordered methods × ordered settings → cells (missing cells allowed)."""

    title: str
    methods: list[str]
    settings: list[tuple[str, float]]
    cells: dict[tuple[str, tuple[str, float]], Cell]

    def headers(self) -> list[str]:
        return ["Method"] + [setting_label(n, r) for n, r in self.settings]

    def rows(self, digits: int = 2) -> list[list[str]]:
        out = []
        for method in self.methods:
            row = [method]
            for s in self.settings:
                cell = self.cells.get((method, s))
                row.append(cell.text(digits) if cell else "–")
            out.append(row)
        return out

    def markdown(self, digits: int = 2) -> str:
        head = self.headers()
        lines = [f"**{self.title}**", "", "| " + " | ".join(head) + " |"]
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in self.rows(digits)]
        return "\n".join(lines) + "\n"


def build_tables(
    records: Iterable[dict],
    methods: list[str] | None = None,
    zero_shot: dict[str, float] | None = None,
    untrained: dict[str, list[float]] | None = None,
) -> list[Table]:
    """Group result records into one table per dataset (plus an average table when several).

    A record has keys `dataset`, `method`, `noise` (type), `rate`, `seed` and `acc` (fraction).
    `zero_shot` maps dataset → zero-shot accuracy, shown as a first row constant across settings;
    `untrained` maps dataset → the accuracies of an untrained random context (one per seed), shown
    above it: the baselines that tell whether learning happened.
    """
    groups: dict[str, dict[tuple[str, tuple[str, float]], list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    seen_methods: list[str] = []
    for r in records:
        setting = (str(r["noise"]), float(r.get("rate") or 0.0))
        groups[str(r["dataset"])][(str(r["method"]), setting)].append(float(r["acc"]))
        if r["method"] not in seen_methods:
            seen_methods.append(str(r["method"]))
    order = list(methods) if methods else seen_methods
    order += [m for m in seen_methods if m not in order]
    zero_shot = zero_shot or {}
    tables = []
    for dataset, raw in groups.items():
        settings = sorted({s for _, s in raw}, key=_setting_sort_key)
        cells = {k: Cell(tuple(v)) for k, v in raw.items()}
        rows = [m for m in order if any((m, s) in cells for s in settings)]
        if dataset in zero_shot:
            for s in settings:
                cells[("Zero-shot CLIP", s)] = Cell((zero_shot[dataset],))
            rows = ["Zero-shot CLIP"] + rows
        if untrained and untrained.get(dataset):
            for s in settings:
                cells[(UNTRAINED, s)] = Cell(tuple(untrained[dataset]))
            rows = [UNTRAINED] + rows
        tables.append(Table(dataset, rows, settings, cells))
    if len(tables) > 1:
        tables.append(_average(tables))
    return tables


def _average(tables: list[Table]) -> Table:
    """Mean over datasets of each cell's mean (DSPT's 'Average' table); cells need every dataset."""
    settings = sorted({s for t in tables for s in t.settings}, key=_setting_sort_key)
    methods = [m for m in dict.fromkeys(m for t in tables for m in t.methods)]
    cells = {}
    for m in methods:
        for s in settings:
            parts = [t.cells.get((m, s)) for t in tables]
            if all(parts):
                cells[(m, s)] = Cell((sum(c.mean for c in parts) / len(parts),))
    return Table(f"Average over {len(tables)} datasets", methods, settings, cells)


def markdown(tables: list[Table], digits: int = 2) -> str:
    """All tables as Markdown, accuracies in percent."""
    return "\n".join(t.markdown(digits) for t in tables)


def to_csv(tables: list[Table]) -> str:
    """A long-form CSV: one row per table cell with mean, std and seed count (percent)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["table", "method", "noise", "rate", "mean", "std", "n_seeds"])
    for t in tables:
        for m in t.methods:
            for s in t.settings:
                cell = t.cells.get((m, s))
                if cell is not None:
                    w.writerow(
                        [
                            t.title,
                            m,
                            s[0],
                            s[1],
                            f"{100 * cell.mean:.4f}",
                            f"{100 * cell.std:.4f}",
                            len(cell.values),
                        ]
                    )
    return buf.getvalue()
