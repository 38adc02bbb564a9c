"""Sweeps: a YAML grid of datasets × noise settings × methods × seeds, run through the stages.

Every cell runs `make_labelset → [make_partition] → train_prompts → evaluate` (the library
stages, called directly) with explicit output paths inside the sweep folder. Each stage checks its
own cache by the key of its inputs and options, and a cell's metrics record the key of the
cell's fully resolved options, so a rerun redoes exactly what changed. Under torchrun, cells are
dealt round-robin over the ranks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nlp_cli import artifacts
from nlp_cli.errors import UsageError, did_you_mean
from nlp_cli.home import nlp_home

NOISE_TYPES = ("none", "sym", "pair", "idn")
METRICS = ("last5", "final")


@dataclass(frozen=True)
class Noise:
    type: str
    rate: float

    @property
    def slug(self) -> str:
        # Rates that are not whole percents keep their digits (sym 12.5 % → sym12.5).
        return "clean" if self.type == "none" else f"{self.type}{round(100 * self.rate, 6):g}"


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
    # the paper's numbers to print beside ours: method → {(noise, rate): percent} for the last
    # table (the average over datasets, or the only one), and dataset → the same per dataset
    paper: dict[str, dict[tuple[str, float], float]] = field(default_factory=dict)
    paper_datasets: dict[str, dict[str, dict[tuple[str, float], float]]] = field(
        default_factory=dict
    )
    zero_shot: bool = True
    untrained: bool = True
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


PRESETS = Path(__file__).parent / "presets"


def presets() -> dict[str, str]:
    """The bundled grids (the papers' tables) by name, each with its first comment line."""
    out = {}
    for path in sorted(PRESETS.glob("*.yaml")):
        lines = path.read_text().splitlines()
        about = next((line.lstrip("# ").strip() for line in lines if line.startswith("#")), "")
        out[path.stem] = about
    return out


def preset_path(name: str) -> Path:
    """The file of a bundled grid; UsageError with a suggestion for an unknown name."""
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        known = list(presets())
        raise UsageError(
            f"unknown preset {name!r}{did_you_mean(name, known)}: choose from {', '.join(known)}"
        )
    return path


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
    keys = ["name", "loss", "purify", "train"]
    for k in entry:
        if k not in keys:
            raise UsageError(f"method entry: unknown key {k!r}{did_you_mean(str(k), keys)}")
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
        "pretrained",
        "noise",
        "methods",
        "seeds",
        "train",
        "embed",
        "shots",
        "metric",
        "zero_shot",
        "untrained",
        "paper",
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
    seeds = _as_list(raw.get("seeds", [1]))
    if any(isinstance(x, bool) or not isinstance(x, int) for x in seeds):
        raise UsageError(f"{path}: seeds must be whole numbers, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"{path}: a seed is listed twice in {seeds}")
    _check_train(raw.get("train") or {}, f"{path}: train")
    methods = [_method(m) for m in _as_list(raw["methods"])]
    names = [m.name for m in methods]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"{path}: two methods are named {twice[0]!r}: give each a `name`")
    for m in methods:
        _check_train(dict(m.train), f"{path}: method {m.name!r} train")
    embed = raw.get("embed") or {}
    from nlp_cli.embed import EmbedOptions

    fields = list(EmbedOptions.__dataclass_fields__)
    for k in embed:
        if k not in fields:
            raise UsageError(f"{path}: embed: unknown key {k!r}{did_you_mean(str(k), fields)}")
    model = str(raw["model"])
    if raw.get("pretrained") is not None:
        from nlp_cli import clip_model

        try:
            model = clip_model.model_ref(model, str(raw["pretrained"]))
        except UsageError as e:
            raise UsageError(f"{path}: pretrained: {e}") from None
    datasets = [str(d) for d in _as_list(raw["datasets"])]
    noise = [_noise(n) for n in _as_list(raw.get("noise", ["none"]))]
    paper, paper_datasets = _paper(
        raw.get("paper"),
        [m.name for m in methods],
        [dataset_name(d) for d in datasets],
        [(n.type, n.rate) for n in noise],
        f"{path}: paper",
    )
    return Grid(
        name=str(raw.get("name", Path(path).stem)),
        datasets=datasets,
        model=model,
        noise=noise,
        methods=methods,
        seeds=[int(s) for s in seeds],
        train=dict(raw.get("train") or {}),
        embed=dict(raw.get("embed") or {}),
        shots=raw.get("shots"),
        metric=metric,
        zero_shot=bool(raw.get("zero_shot", True)),
        untrained=bool(raw.get("untrained", True)),
        paper=paper,
        paper_datasets=paper_datasets,
        out=Path(raw["out"]) if raw.get("out") else None,
    )


Numbers = dict[str, dict[tuple[str, float], float]]


def _paper(
    raw: Any,
    methods: list[str],
    datasets: list[str],
    settings: list[tuple[str, float]],
    what: str,
) -> tuple[Numbers, dict[str, Numbers]]:
    """`paper: {METHOD: {"sym 0.8": 74.22, DATASET: {"sym 0.8": 90.1}, …}}` → (method →
    {("sym", 0.8): 74.22} for the last table, dataset → method → {…}), checked against the
    grid's methods, datasets and noise settings."""
    if raw is None:
        return {}, {}
    if not isinstance(raw, dict):
        raise UsageError(f"{what} must map method names to {{'sym 0.8': percent, …}}")
    known = [*methods, "Zero-shot CLIP", "Untrained context"]
    out: Numbers = {}
    per_dataset: dict[str, Numbers] = {}
    for method, cells in raw.items():
        if method not in known:
            raise UsageError(f"{what}: unknown method {method!r}{did_you_mean(str(method), known)}")
        if not isinstance(cells, dict):
            raise UsageError(f"{what}: {method}: expected {{'sym 0.8': percent, …}}")
        for key, value in cells.items():
            if isinstance(value, dict):
                if key not in datasets:
                    raise UsageError(
                        f"{what}: {method}: {key!r} is no dataset of the grid"
                        f"{did_you_mean(str(key), datasets)}"
                    )
                numbers = _paper_cells(value, settings, f"{what}: {method}: {key}")
                per_dataset.setdefault(str(key), {})[str(method)] = numbers
            else:
                cell = _paper_cells({key: value}, settings, f"{what}: {method}")
                out.setdefault(str(method), {}).update(cell)
    return out, per_dataset


def _paper_cells(
    cells: dict, settings: list[tuple[str, float]], what: str
) -> dict[tuple[str, float], float]:
    """{"sym 0.8": 74.22, …} → {("sym", 0.8): 74.22}; each setting must be one of the grid's."""
    from nlp_cli.tables import setting_label

    out = {}
    for setting, value in cells.items():
        kind, _, rate = str(setting).partition(" ")
        try:
            key = (kind, float(rate or 0.0))
            number = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{what}: {setting!r}: {value!r} is not a percent") from None
        if kind not in NOISE_TYPES:
            raise UsageError(f"{what}: noise type {kind!r} unknown")
        if key not in settings:
            grid = [f"{t} {r:g}" for t, r in settings]
            raise UsageError(
                f"{what}: {setting!r} ({setting_label(*key)}) is not a noise setting of the "
                f"grid{did_you_mean(str(setting), grid)}"
            )
        out[key] = number
    return out


def paper_rows(table: Any, paper: dict[str, dict[tuple[str, float], float]]) -> list[list[str]]:
    """[method, setting, paper, ours, ours − paper] for every paper number the table has."""
    from nlp_cli.tables import setting_label

    rows = []
    for method, cells in paper.items():
        for setting, value in cells.items():
            ours = table.cells.get((method, setting))
            mean = None if ours is None else 100 * ours.mean
            rows.append(
                [
                    method,
                    setting_label(*setting),
                    f"{value:.2f}",
                    "–" if mean is None else f"{mean:.2f}",
                    "–" if mean is None else f"{mean - value:+.2f}",
                ]
            )
    return rows


def _check_train(train: Any, what: str) -> None:
    """Refuse a `train:` mapping with a key no training option has (with a suggestion)."""
    from nlp_cli.train import TrainConfig

    if not isinstance(train, dict):
        raise UsageError(f"{what} must be a mapping of training options")
    allowed = [*TrainConfig.setting_names(), "protocol", "knob"]
    for k in train:
        if k not in allowed:
            raise UsageError(f"{what}: unknown option {k!r}{did_you_mean(str(k), allowed)}")


def _as_list(x: Any) -> list:
    return list(x) if isinstance(x, list | tuple) else [x]


class Stages:
    """The stages a sweep runs: the library's (tests substitute recording stand-ins).

    `on_step` and `on_checkpoint` go to every `train_prompts` (the front end's progress of the
    training steps and its test hook)."""

    on_step: Callable[[int, int, int, int], None] | None = None
    on_checkpoint: Callable[[], None] | None = None

    def __init__(
        self,
        on_step: Callable[[int, int, int, int], None] | None = None,
        on_checkpoint: Callable[[], None] | None = None,
    ) -> None:
        self.on_step, self.on_checkpoint = on_step, on_checkpoint

    def download(self, dataset: str) -> Any:
        from nlp_cli import stages

        return stages.download(dataset)

    def embed(self, dataset: str, model: str, opts: Any, out: Path) -> Any:
        from nlp_cli import stages

        return stages.embed(dataset, model, opts, out=out)

    def make_labelset(self, features: Path, opts: Any, out: Path) -> Any:
        from nlp_cli import stages

        return stages.make_labelset(features, opts, out)

    def make_partition(self, labels: Path, opts: Any, out: Path) -> Any:
        from nlp_cli import stages

        return stages.make_partition(labels, opts, out)

    def train_prompts(self, inputs: list[Path], opts: Any) -> Any:
        from nlp_cli import stages

        return stages.train_prompts(
            inputs, opts, on_step=self.on_step, on_checkpoint=self.on_checkpoint
        )

    def evaluate(
        self, prompt: Path | None, features: Path | None, device: str, untrained: int | None = None
    ) -> dict[str, Any]:
        from nlp_cli import stages

        return stages.evaluate(
            prompt, features, device=device, write=False, untrained=untrained
        ).summary


@dataclass
class SweepResult:
    folder: Path
    records: list[dict[str, Any]]
    zero_shot: dict[str, float]
    ran: int
    skipped: int
    untrained: dict[str, list[float]] = field(default_factory=dict)


def features_path(grid: Grid, dataset: str, stages: Stages) -> Path:
    """A dataset's feature cache: an existing artifact path as given, else download + embed."""
    from nlp_cli.embed import EmbedOptions

    given = Path(dataset)
    if given.suffix == ".safetensors":
        if not given.exists():
            raise UsageError(f"features {given} do not exist")
        return given
    out = grid.folder() / "features" / f"{dataset}.safetensors"
    stages.download(dataset)
    stages.embed(dataset, grid.model, EmbedOptions(**grid.embed), out)
    return out


def train_options(grid: Grid, cell: Cell, prompt: Path, device: str) -> Any:
    """The TrainOptions of a cell: the grid's `train`, its method's, its loss and seed."""
    from nlp_cli.stages.train import TrainOptions, split_knobs

    settings = {**grid.train, **dict(cell.method.train)}
    protocol = settings.pop("protocol", None)
    plain, per_loss = split_knobs([str(k) for k in _as_list(settings.pop("knob", []))])
    settings.update(plain, device=device)
    return TrainOptions(
        losses=[cell.method.loss],
        seeds=[cell.seed],
        protocol=protocol,
        settings=settings,
        outs=[prompt],
        loss_knobs={k: v for k, v in per_loss.items() if k == cell.method.loss},
        resume=True,  # an interrupted cell continues from its checkpoint (same key only)
    )


def cell_key(grid: Grid, cell: Cell, feats: Path) -> str:
    """What a cell's number depends on: features, noise, shots, purifier, training, metric."""
    blob = json.dumps(
        {
            "features": _digest(str(feats)),
            "model": grid.model,
            "embed": grid.embed,
            "noise": [cell.noise.type, cell.noise.rate],
            "shots": grid.shots,
            "seed": cell.seed,
            "loss": cell.method.loss,
            "purify": cell.method.purify,
            "train": {**grid.train, **dict(cell.method.train)},
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _digest(path: str) -> str:
    """A features file's digest, computed once per file version in this process."""
    st = os.stat(path)
    return _digest_of(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _digest_of(path: str, mtime_ns: int, size: int) -> str:
    return artifacts.file_digest(path)


def cell_done(grid: Grid, cell: Cell, feats: Path) -> bool:
    """True when the cell's metrics exist and were made with the cell's current options."""
    path = grid.metrics_path(cell)
    try:
        return json.loads(path.read_text()).get("cell_key") == cell_key(grid, cell, feats)
    except (OSError, ValueError, AttributeError):
        return False


def cell_inputs(grid: Grid, cell: Cell, feats: Path, stages: Stages) -> tuple[Path, Path]:
    """The cell's label set (and partition): made or found by their stages; (input, prompt)."""
    from nlp_cli.stages.corrupt import CorruptOptions
    from nlp_cli.stages.purify import PurifyOptions

    folder = grid.folder()
    labels = folder / "labels" / cell.dataset / f"{cell.noise.slug}-seed{cell.seed}.safetensors"
    rate = None if cell.noise.type == "none" else cell.noise.rate
    opts = CorruptOptions(kind=cell.noise.type, rate=rate, seed=cell.seed, shots=grid.shots)
    stages.make_labelset(feats, opts, labels)
    train_input = labels
    if cell.method.purify:
        part = labels.with_name(f"{labels.stem}-{cell.method.purify}.safetensors")
        stages.make_partition(labels, PurifyOptions(method=cell.method.purify), part)
        train_input = part
    return train_input, folder / "prompts" / f"{cell.slug}.safetensors"


def finish_cell(grid: Grid, cell: Cell, feats: Path, prompt: Path, stages: Stages, device: str):
    """Evaluate a cell's prompt and write its metrics (with the cell's key); its table record."""
    metrics = stages.evaluate(prompt, None, device)
    metrics["cell_key"] = cell_key(grid, cell, feats)
    artifacts.atomic_write_text(grid.metrics_path(cell), json.dumps(metrics, indent=2) + "\n")
    return record(cell, metrics, grid.metric)


def train_together(
    grid: Grid,
    jobs: list[tuple[Cell, Path, Path]],
    stages: Stages,
    device: str,
    on_trained: Callable[[Cell], None] | None = None,
) -> None:
    """One zipped `train_prompts` per group of jobs on one dataset with the same training
    options: their prompts go through the text encoder together, each equal to its cell alone.
    `on_trained(cell)` hears each cell of a group as soon as the group has trained (before the
    next one starts)."""
    from nlp_cli.stages.train import split_knobs

    groups: dict[tuple, list[tuple[Cell, Path, Path]]] = {}
    for cell, train_input, prompt in jobs:
        options = {**grid.train, **dict(cell.method.train)}
        key = (cell.dataset, json.dumps(options, sort_keys=True, default=str))
        groups.setdefault(key, []).append((cell, train_input, prompt))
    for group in groups.values():
        opts = train_options(grid, group[0][0], group[0][2], device)
        opts.losses = [cell.method.loss for cell, _, _ in group]
        opts.seeds = [cell.seed for cell, _, _ in group]
        opts.outs = [prompt for _, _, prompt in group]
        # Each loss's own knobs (`train: {knob: [gce.q=0.5]}`) for the losses of this group.
        settings = {**grid.train, **dict(group[0][0].method.train)}
        _, per_loss = split_knobs([str(k) for k in _as_list(settings.get("knob", []))])
        opts.loss_knobs = {k: v for k, v in per_loss.items() if k in set(opts.losses)}
        opts.zip = True
        stages.train_prompts([train_input for _, train_input, _ in group], opts)
        if on_trained is not None:
            for cell, _, _ in group:
                on_trained(cell)


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
    stages: Stages | None = None,
    device: str = "cpu",
    progress: Callable[[Cell, str], None] | None = None,
    batch: bool = False,
    rank: int = 0,
    world: int = 1,
) -> SweepResult:
    """Run this rank's share of the grid's unfinished cells and collect every finished cell.

    With `batch`, this rank's cells that share a dataset and training options train together
    (different losses, seeds, label sets): one text-encoder pass per step. `progress(cell,
    state)` hears each cell as "cached", as "running" when its training starts, and as "done"
    once its metrics are written.
    """
    stages = stages or Stages()
    folder = grid.folder()
    folder.mkdir(parents=True, exist_ok=True)
    feats = {name: features_path(grid, src, stages) for name, src in grid.sources().items()}
    ran = skipped = 0
    mine = [c for i, c in enumerate(grid.cells()) if i % world == rank]
    todo = [c for c in mine if not cell_done(grid, c, feats[c.dataset])]
    if progress:
        for cell in mine:
            if cell not in todo:
                progress(cell, "cached")
    planned = {c: cell_inputs(grid, c, feats[c.dataset], stages) for c in todo}
    finished: set[Cell] = set()

    def finish(cell: Cell) -> None:
        finish_cell(grid, cell, feats[cell.dataset], planned[cell][1], stages, device)
        finished.add(cell)
        if progress:
            progress(cell, "done")

    if batch and todo:
        jobs = [(c, *planned[c]) for c in todo]
        if progress:
            for c in todo:
                progress(c, "running")
        # Each group's cells are evaluated and written as soon as it has trained, so that an
        # interrupted sweep keeps every group that finished.
        train_together(grid, jobs, stages, device, on_trained=finish)
    for cell in mine:
        if cell not in planned:
            skipped += 1
            continue
        ran += 1
        if cell in finished:
            continue
        train_input, prompt = planned[cell]
        if not batch:
            if progress:
                progress(cell, "running")
            opts = train_options(grid, cell, prompt, device)
            stages.train_prompts([train_input], opts)
        finish(cell)
    if world > 1:
        _barrier()
        if rank != 0:
            return SweepResult(folder, [], {}, ran, skipped)
    zero_shot: dict[str, float] = {}
    if grid.zero_shot:
        for d, f in feats.items():
            zero_shot[d] = _zero_shot(folder / "metrics" / d / "zero-shot.json", f, stages, device)
    untrained: dict[str, list[float]] = {}
    if grid.untrained:
        for d, f in feats.items():
            untrained[d] = [
                _zero_shot(
                    folder / "metrics" / d / f"untrained-seed{s}.json", f, stages, device, seed=s
                )
                for s in grid.seeds
            ]
    records = []
    for cell in grid.cells():
        path = grid.metrics_path(cell)
        if cell_done(grid, cell, feats[cell.dataset]):
            records.append(record(cell, json.loads(path.read_text()), grid.metric))
    return SweepResult(folder, records, zero_shot, ran, skipped, untrained)


def _zero_shot(
    out: Path, feats: Path, stages: Stages, device: str, seed: int | None = None
) -> float:
    """The hand prompt's accuracy on a dataset's features (cached by the features' digest);
    with `seed`, that of an untrained random context instead."""
    digest = _digest(str(feats))
    try:
        found = json.loads(out.read_text())
        if found.get("features_digest") == digest:
            return float(found["acc1"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    metrics = stages.evaluate(None, feats, device, untrained=seed)
    metrics["features_digest"] = digest
    artifacts.atomic_write_text(out, json.dumps(metrics, indent=2) + "\n")
    return float(metrics["acc1"])


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
    built = tables.build_tables(
        result.records, methods=order, zero_shot=result.zero_shot, untrained=result.untrained
    )
    out = {
        "markdown": result.folder / "table.md",
        "csv": result.folder / "table.csv",
        "results": result.folder / "results.json",
    }
    text = tables.markdown(built)
    for table in built:
        numbers = dict(grid.paper) if table is built[-1] else {}
        for method, cells in grid.paper_datasets.get(table.title, {}).items():
            numbers[method] = {**numbers.get(method, {}), **cells}
        if numbers:
            rows = paper_rows(table, numbers)
            text += (
                f"\n**{table.title}: the paper's numbers beside ours**\n\n"
                "| Method | Setting | Paper | Ours | Ours − paper |\n|---|---|---:|---:|---:|\n"
                + "".join("| " + " | ".join(r) + " |\n" for r in rows)
            )
    artifacts.atomic_write_text(out["markdown"], text)
    artifacts.atomic_write_text(out["csv"], tables.to_csv(built))
    artifacts.atomic_write_text(
        out["results"],
        json.dumps(
            {
                "records": result.records,
                "zero_shot": result.zero_shot,
                "untrained": result.untrained,
            },
            indent=1,
        ),
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
