"""Sweeps: a YAML grid of datasets × noise settings × methods × seeds, run through the stages.

Every cell runs `corrupt → [purify] → train → eval` with explicit output paths inside the sweep
folder, so a rerun finds each finished artifact (and each finished cell) and does no work again.
Under torchrun, cells are dealt round-robin over the ranks.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nlp_cli import artifacts
from nlp_cli.errors import NlpError, UsageError
from nlp_cli.home import nlp_home

NOISE_TYPES = ("none", "sym", "pair", "idn")
METRICS = ("last5", "final")


@dataclass(frozen=True)
class Noise:
    type: str
    rate: float

    @property
    def slug(self) -> str:
        return "clean" if self.type == "none" else f"{self.type}{round(100 * self.rate):g}"

    def flags(self) -> list[str]:
        return [] if self.type == "none" else [f"--{self.type}", f"{self.rate:g}"]


@dataclass(frozen=True)
class Method:
    name: str
    loss: str
    purify: str | None = None
    train: tuple[tuple[str, Any], ...] = ()

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.name)


@dataclass(frozen=True)
class Cell:
    dataset: str
    noise: Noise
    method: Method
    seed: int

    @property
    def slug(self) -> str:
        return f"{self.dataset}/{self.noise.slug}/{self.method.slug}/seed{self.seed}"


@dataclass
class Grid:
    name: str
    datasets: list[str]
    model: str
    noise: list[Noise]
    methods: list[Method]
    seeds: list[int]
    train: dict[str, Any] = field(default_factory=dict)
    embed: dict[str, Any] = field(default_factory=dict)
    shots: int | None = None
    metric: str = "last5"
    zero_shot: bool = True
    out: Path | None = None

    def sources(self) -> dict[str, str]:
        """Dataset name → what to build it from (a catalog name or a features artifact path)."""
        return {dataset_name(d): d for d in self.datasets}

    def cells(self) -> list[Cell]:
        return [
            Cell(d, n, m, s)
            for d in self.sources()
            for n in self.noise
            for m in self.methods
            for s in self.seeds
        ]

    def folder(self) -> Path:
        return Path(self.out) if self.out else nlp_home() / "sweeps" / self.name

    def metrics_path(self, cell: Cell) -> Path:
        """A cell's metrics file; its presence marks the cell finished."""
        return self.folder() / "metrics" / f"{cell.slug}.json"


def dataset_name(source: str) -> str:
    """A features path counts under its file stem; a catalog name under itself."""
    return Path(source).stem if source.endswith(".safetensors") else source


def _noise(entry: Any) -> Noise:
    if isinstance(entry, str) and entry in ("none", "clean"):
        return Noise("none", 0.0)
    if isinstance(entry, dict) and set(entry) <= {"type", "rate"} and "type" in entry:
        kind, rate = str(entry["type"]), float(entry.get("rate", 0.0))
    elif isinstance(entry, dict) and len(entry) == 1:
        ((kind, rate),) = entry.items()
        kind, rate = str(kind), float(rate)
    else:
        raise UsageError(f"noise entry {entry!r}: write {{sym: 0.4}} or {{type: pair, rate: 0.2}}")
    if kind not in NOISE_TYPES:
        raise UsageError(f"noise type {kind!r} unknown; choose from {', '.join(NOISE_TYPES)}")
    if not 0.0 <= rate < 1.0:
        raise UsageError(f"noise rate {rate:g} is outside [0, 1)")
    return Noise(kind, rate)


def _method(entry: Any) -> Method:
    from nlp_cli import losses

    if isinstance(entry, str):
        entry = {"loss": entry}
    if not isinstance(entry, dict) or "loss" not in entry:
        raise UsageError(f"method entry {entry!r} needs a `loss`")
    loss = str(entry["loss"])
    losses.get(loss)  # unknown names fail here, with a suggestion
    purify = entry.get("purify", "ot" if loss == "nlprompt" else None)
    train = dict(entry.get("train") or {})
    if loss == "nlprompt" and train.get("repurify") == "epoch":
        purify = None
    return Method(str(entry.get("name", loss)), loss, purify, tuple(sorted(train.items())))


def load_grid(path: Path) -> Grid:
    """Read and validate a sweep YAML; every mistake is one UsageError line."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"sweep file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise UsageError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: the sweep must be a YAML mapping")
    known = {
        "name",
        "datasets",
        "model",
        "noise",
        "methods",
        "seeds",
        "train",
        "embed",
        "shots",
        "metric",
        "zero_shot",
        "out",
    }
    unknown = set(raw) - known
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    for key in ("datasets", "model", "methods"):
        if not raw.get(key):
            raise UsageError(f"{path}: `{key}` is required")
    metric = str(raw.get("metric", "last5"))
    if metric not in METRICS:
        raise UsageError(f"{path}: metric must be one of {', '.join(METRICS)}")
    seeds = raw.get("seeds", [1])
    return Grid(
        name=str(raw.get("name", Path(path).stem)),
        datasets=[str(d) for d in _as_list(raw["datasets"])],
        model=str(raw["model"]),
        noise=[_noise(n) for n in _as_list(raw.get("noise", ["none"]))],
        methods=[_method(m) for m in _as_list(raw["methods"])],
        seeds=[int(s) for s in _as_list(seeds)],
        train=dict(raw.get("train") or {}),
        embed=dict(raw.get("embed") or {}),
        shots=raw.get("shots"),
        metric=metric,
        zero_shot=bool(raw.get("zero_shot", True)),
        out=Path(raw["out"]) if raw.get("out") else None,
    )


def _as_list(x: Any) -> list:
    return list(x) if isinstance(x, list | tuple) else [x]


def _flags(options: dict[str, Any]) -> list[str]:
    """{'epochs': 5, 'csc': True, 'ctx_init': 'a photo of a'} → CLI flags."""
    out: list[str] = []
    for key, value in options.items():
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False or value is None:
            continue
        else:
            out += [flag, str(value)]
    return out


Runner = Callable[[list[str]], None]


def run_stage(argv: list[str]) -> None:
    """Run one `nlp` stage in this process; its stdout is swallowed, a failure raises."""
    from nlp_cli.cli import run

    with contextlib.redirect_stdout(io.StringIO()):
        code = run(argv)
    if code != 0:
        raise NlpError(f"`nlp {' '.join(argv)}` failed (exit {code})")


@dataclass
class SweepResult:
    folder: Path
    records: list[dict[str, Any]]
    zero_shot: dict[str, float]
    ran: int
    skipped: int


def rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def features_path(grid: Grid, dataset: str, runner: Runner) -> Path:
    """A dataset's feature cache: an existing artifact path as given, else download + embed."""
    given = Path(dataset)
    if given.suffix == ".safetensors":
        if not given.exists():
            raise UsageError(f"features {given} do not exist")
        return given
    folder = grid.folder() / "features"
    out = folder / f"{dataset}.safetensors"
    if not out.exists():
        runner(["download", dataset])
        runner(["embed", dataset, "--model", grid.model, *_flags(grid.embed), "--out", str(out)])
    return out


def run_cell(
    grid: Grid,
    cell: Cell,
    feats: Path,
    runner: Runner,
    device: str,
    train: list[tuple[Cell, Path, Path]] | None = None,
) -> dict[str, Any] | None:
    """corrupt → [purify] → train → eval for one cell; each step skipped when its file exists.

    With a `train` list, the cell stops after its inputs are made and queues its training job
    there (cell, training input, prompt path) instead.
    """
    folder = grid.folder()
    shots = ["--shots", str(grid.shots)] if grid.shots else []
    labels = folder / "labels" / cell.dataset / f"{cell.noise.slug}-seed{cell.seed}.safetensors"
    if not labels.exists():
        runner(
            [
                "corrupt",
                str(feats),
                *cell.noise.flags(),
                "--seed",
                str(cell.seed),
                *shots,
                "--out",
                str(labels),
            ]
        )
    train_input = labels
    if cell.method.purify:
        part = labels.with_name(f"{labels.stem}-{cell.method.purify}.safetensors")
        if not part.exists():
            runner(["purify", str(labels), "--method", cell.method.purify, "--out", str(part)])
        train_input = part
    prompt = folder / "prompts" / f"{cell.slug}.safetensors"
    options = {**grid.train, **dict(cell.method.train)}
    if train is not None:
        if not prompt.exists():
            train.append((cell, train_input, prompt))
        return None
    if not prompt.exists():
        runner(
            [
                "train",
                str(train_input),
                "--loss",
                cell.method.loss,
                "--seed",
                str(cell.seed),
                *_flags(options),
                "--device",
                device,
                "--out",
                str(prompt),
            ]
        )
    metrics = grid.metrics_path(cell)
    if not metrics.exists():
        runner(["eval", str(prompt), "--device", device, "--out", str(metrics)])
    return record(cell, json.loads(metrics.read_text()), grid.metric)


def train_together(
    grid: Grid, jobs: list[tuple[Cell, Path, Path]], runner: Runner, device: str
) -> None:
    """One `nlp train --zip` per group of jobs on one dataset with the same training options:
    their prompts go through the text encoder together, each equal to its cell trained alone."""
    groups: dict[tuple, list[tuple[Cell, Path, Path]]] = {}
    for cell, train_input, prompt in jobs:
        options = {**grid.train, **dict(cell.method.train)}
        key = (cell.dataset, json.dumps(options, sort_keys=True, default=str))
        groups.setdefault(key, []).append((cell, train_input, prompt))
    for group in groups.values():
        options = {**grid.train, **dict(group[0][0].method.train)}
        outs: list[str] = []
        for _, _, prompt in group:
            outs += ["--out", str(prompt)]
        runner(
            [
                "train",
                *[str(train_input) for _, train_input, _ in group],
                "--zip",
                "--loss",
                ",".join(cell.method.loss for cell, _, _ in group),
                "--seed",
                ",".join(str(cell.seed) for cell, _, _ in group),
                *_flags(options),
                "--device",
                device,
                *outs,
            ]
        )


def record(cell: Cell, metrics: dict[str, Any], metric: str) -> dict[str, Any]:
    """One table record from a cell's metrics: last-five-epoch mean (DSPT) or final accuracy."""
    acc = metrics.get("last5_mean_acc") if metric == "last5" else None
    return {
        "dataset": cell.dataset,
        "method": cell.method.name,
        "noise": cell.noise.type,
        "rate": cell.noise.rate,
        "seed": cell.seed,
        "acc": float(acc if acc is not None else metrics["acc1"]),
        "acc1": float(metrics["acc1"]),
    }


def run_sweep(
    grid: Grid,
    runner: Runner = run_stage,
    device: str = "cpu",
    progress: Callable[[Cell, str], None] | None = None,
    batch: bool = False,
) -> SweepResult:
    """Run this rank's share of the grid's unfinished cells and collect every finished cell.

    With `batch`, this rank's cells that share a dataset and training options train together
    (different losses, seeds, label sets): one process, one text-encoder pass per step.
    """
    rank, world = rank_and_world()
    folder = grid.folder()
    folder.mkdir(parents=True, exist_ok=True)
    feats = {name: features_path(grid, src, runner) for name, src in grid.sources().items()}
    zero_shot: dict[str, float] = {}
    ran = skipped = 0
    mine = [c for i, c in enumerate(grid.cells()) if i % world == rank]
    if batch:
        jobs: list[tuple[Cell, Path, Path]] = []
        for cell in mine:
            run_cell(grid, cell, feats[cell.dataset], runner, device, train=jobs)
        train_together(grid, jobs, runner, device)
    for cell in mine:
        done = grid.metrics_path(cell).exists()
        if progress:
            progress(cell, "cached" if done else "running")
        ran += not done
        skipped += done
        run_cell(grid, cell, feats[cell.dataset], runner, device)
    if world > 1:
        _barrier()
        if rank != 0:
            return SweepResult(folder, [], {}, ran, skipped)
    if grid.zero_shot:
        for d, f in feats.items():
            out = folder / "metrics" / d / "zero-shot.json"
            if not out.exists():
                runner(["eval", "--zero-shot", str(f), "--device", device, "--out", str(out)])
            zero_shot[d] = float(json.loads(out.read_text())["acc1"])
    records = []
    for cell in grid.cells():
        path = grid.metrics_path(cell)
        if path.exists():
            records.append(record(cell, json.loads(path.read_text()), grid.metric))
    return SweepResult(folder, records, zero_shot, ran, skipped)


def _barrier() -> None:
    """Wait for every torchrun rank (gloo on CPU is enough: only a barrier is exchanged)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()


def write_tables(result: SweepResult, grid: Grid, plot: bool = True) -> dict[str, Path]:
    """table.md, table.csv, results.json (and accuracy-vs-noise.png) in the sweep folder."""
    from nlp_cli import tables

    order = [m.name for m in grid.methods]
    built = tables.build_tables(result.records, methods=order, zero_shot=result.zero_shot)
    out = {
        "markdown": result.folder / "table.md",
        "csv": result.folder / "table.csv",
        "results": result.folder / "results.json",
    }
    artifacts.atomic_write_text(out["markdown"], tables.markdown(built))
    artifacts.atomic_write_text(out["csv"], tables.to_csv(built))
    artifacts.atomic_write_text(
        out["results"],
        json.dumps({"records": result.records, "zero_shot": result.zero_shot}, indent=1),
    )
    if plot and _has_matplotlib():
        from nlp_cli import analysis

        rows: dict[str, dict[str, list[tuple[float, float]]]] = {}
        last = built[-1]  # the only table, or the average over datasets
        for m in last.methods:
            for s in last.settings:
                cell = last.cells.get((m, s))
                if cell and s[0] != "none":
                    rows.setdefault(s[0], {}).setdefault(m, []).append((s[1], cell.mean))
        if rows:
            out["plot"] = analysis.plot_accuracy_vs_noise(rows, result.folder / "accuracy.png")
    return out


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
