"""`make_labelset`: noisy training labels (sym, pair, class map, instance-dependent, human) beside
the true ones, from a features artifact."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlp_cli import artifacts, noise
from nlp_cli.errors import NlpError, UsageError, did_you_mean
from nlp_cli.stages.result import StageResult


@dataclass
class CorruptOptions:
    """How to corrupt: a noise `kind` (none, sym, pair, map, idn, human) with its rate, a seed,
    shots."""

    kind: str = "none"
    rate: float | None = None
    seed: int = 0
    shots: int | None = None
    map_file: Path | None = None  # kind "map": a YAML/JSON {"from class": "to class"} file
    mapping: dict[str, str] | None = None  # kind "map": the same map given directly
    human: str | None = None  # kind "human": a label set of CIFAR-10N/100N (aggre, worst, …)
    human_file: Path | None = None  # kind "human": the label file (default: where download puts it)

    def validate(self) -> None:
        """Refuse impossible settings in one line."""
        noise.get(self.kind)
        if self.kind != "human" and (self.human is not None or self.human_file is not None):
            raise UsageError("--human-labels belongs to --human, which names the label set")
        if self.kind == "human":
            if not self.human:
                raise UsageError("human noise needs a label set (--human NAME, e.g. aggre)")
            if self.rate is not None:
                raise UsageError("human labels have no rate: the annotators' errors are the noise")
        elif self.kind == "map":
            if self.map_file is None and not self.mapping:
                raise UsageError("map noise needs a class map (--map FILE)")
            rate = 1.0 if self.rate is None else self.rate
            if not 0.0 <= rate <= 1.0:
                raise UsageError(f"--rate must lie in [0, 1], got {rate:g}")
        elif self.kind == "none":
            if self.rate not in (None, 0, 0.0):
                raise UsageError("no noise type given, but a rate was")
        else:
            if self.rate is None:
                raise UsageError(f"{self.kind} noise needs a rate")
            noise.check_rate(self.rate, f"--{self.kind}")
        if self.shots is not None and self.shots < 1:
            raise UsageError(f"--shots must be ≥ 1, got {self.shots}")


def choose_noise(
    sym: float | None,
    pair: float | None,
    map_file: Path | None,
    idn: float | None,
    human: str | None = None,
) -> tuple[str, float | None]:
    """The one noise type given among --sym/--pair/--map/--idn/--human (none when none is set)."""
    given = [("sym", sym), ("pair", pair), ("map", map_file), ("idn", idn), ("human", human)]
    given = [(n, v) for n, v in given if v is not None]
    if len(given) > 1:
        raise UsageError(f"choose one noise type, got {' and '.join('--' + n for n, _ in given)}")
    if not given:
        return "none", None
    name, value = given[0]
    return name, (None if name in ("map", "human") else float(value))


def read_class_map(path: Path, classnames: list[str]) -> dict[int, int]:
    """A YAML/JSON {"from": "to"} map by class name, as {from index: to index}."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"--map {path}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise UsageError(f"--map {path}: not valid YAML or JSON ({type(e).__name__})") from None
    if not isinstance(raw, dict) or not raw:
        raise UsageError(f'--map {path}: expected a non-empty mapping {{"from class": "to class"}}')
    return class_map_indices(raw, classnames, f"--map {path}")


def class_map_indices(raw: dict[Any, Any], classnames: list[str], what: str) -> dict[int, int]:
    """{"from": "to"} by class name → {from index: to index}; unknown names are one line."""
    lookup = {name: i for i, name in enumerate(classnames)}
    mapping: dict[int, int] = {}
    for src, dst in raw.items():
        for name in (src, dst):
            if str(name) not in lookup:
                raise UsageError(
                    f"{what}: unknown class {name!r}{did_you_mean(str(name), classnames)}"
                )
        if src == dst:
            raise UsageError(f"{what}: class {src!r} is mapped to itself")
        mapping[lookup[str(src)]] = lookup[str(dst)]
    return mapping


def format_rates(rates: list[float], classnames: list[str]) -> str:
    """'name 0.50, other 0.44, …' for a log line."""
    parts = [
        f"{name} {'–' if math.isnan(r) else f'{r:.2f}'}"
        for name, r in zip(classnames, rates, strict=True)
    ]
    return ", ".join(parts)


@dataclass
class _Human:
    """A CIFAR-N label file chosen for a features artifact: where it is and what it labels."""

    spec: Any  # datasets.cifar.HumanLabels
    label_set: str
    file: Path
    sha256: str

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "key": self.spec.sets[self.label_set],
            "file": str(self.file.resolve()),
            "sha256": self.sha256,
        }

    def labels(self, train_labels: Any) -> Any:
        """The set's labels, once the file's clean labels are checked to be the features'."""
        from nlp_cli.datasets import cifar

        h = self.spec
        arrays = cifar.load_human_labels(self.file, h)
        clean = arrays[h.clean_key]
        n, m = len(train_labels), len(clean)
        if n != m:
            raise UsageError(
                f"these features hold {n} training images, {h.name} labels {m} (all of "
                f"{h.dataset}'s, in the pickles' order): embed {h.dataset} whole (no images "
                "skipped) and sample shots with `nlp corrupt --shots K` instead"
            )
        wrong = int((clean != train_labels).sum())
        if wrong:
            raise UsageError(
                f"the features' training labels differ from {h.name}'s clean labels at {wrong} "
                f"of {n} images: these features are not {h.dataset}'s training set in the "
                f"pickles' order (as `nlp download {h.dataset}` writes it)"
            )
        return arrays[h.sets[self.label_set]]


def _human_source(feats: Any, opts: CorruptOptions) -> _Human:
    """The label file for `--human`, checked to fit the features' dataset and class count."""
    from nlp_cli.datasets import CATALOG, cifar
    from nlp_cli.datasets import download as dl
    from nlp_cli.home import data_dir

    h = cifar.human_for(feats.meta.get("dataset"), str(opts.human))
    if len(feats.classnames) != h.num_classes:
        raise UsageError(
            f"{h.name} labels {h.num_classes} classes, these features have {len(feats.classnames)}"
        )
    if opts.human_file is not None:
        file = Path(opts.human_file)
        if not file.is_file():
            raise UsageError(f"--human-labels {file}: no such file")
    else:
        file = data_dir() / CATALOG[h.name].folder / h.filename
        if not file.is_file():
            raise NlpError(
                f"{h.name} is not downloaded ({file} is missing): run `nlp download {h.name}` "
                "or pass the file with --human-labels"
            )
    return _Human(h, str(opts.human), file, dl.check_pin(file))


def make_labelset(
    features: Path | str, opts: CorruptOptions | None = None, out: Path | None = None
) -> StageResult:
    """Corrupt the training labels of a features artifact; validation and test stay clean."""
    opts = opts or CorruptOptions()
    opts.validate()
    path = Path(features)
    feats = artifacts.load(path, "features")
    classnames = feats.classnames
    num_classes = len(classnames)
    noise.check_classes(num_classes)

    kwargs: dict[str, Any] = {}
    named = None
    desc_rate = opts.rate
    if opts.kind == "map":
        if opts.map_file is not None:
            mapping = read_class_map(opts.map_file, classnames)
        else:
            mapping = class_map_indices(dict(opts.mapping or {}), classnames, "class map")
        desc_rate = 1.0 if opts.rate is None else opts.rate
        kwargs = {"mapping": mapping, "rate": desc_rate}
        named = {classnames[s]: classnames[d] for s, d in mapping.items()}
    elif opts.rate is not None and opts.kind != "none":
        kwargs["rate"] = opts.rate
    if opts.kind == "none":
        desc_rate = None
    options: dict[str, Any] = {
        "type": opts.kind,
        "rate": desc_rate,
        "seed": opts.seed,
        "shots": opts.shots,
        "map": named,
    }
    human = _human_source(feats, opts) if opts.kind == "human" else None
    if human is not None:
        options["human"] = {"set": opts.human, "sha256": human.sha256}
    key = artifacts.cache_key("labelset", {"features": feats.digest}, options)
    stem = f"{feats.meta.get('dataset') or path.stem}-{opts.kind}"
    if desc_rate is not None:
        stem += f"{desc_rate:g}"
    if human is not None:
        stem += f"-{opts.human}"
    stem += f"-s{opts.seed}" + (f"-{opts.shots}shot" if opts.shots else "")
    target = Path(out) if out is not None else artifacts.default_out("labelset", stem, key)
    artifacts.check_output(target, [path])
    if artifacts.cached(target, key, "labelset"):
        return StageResult(target, artifacts.read_meta(target).get("noise") or {}, cache_hit=True)

    result = StageResult(target)
    train_labels = feats.tensors["train.labels"].long()
    if opts.kind == "idn":
        kwargs["features"] = feats.tensors["train.features"].float()
    if human is not None:
        kwargs["given"] = human.labels(train_labels)
    index, noisy, short = noise.corrupt(
        opts.kind,
        train_labels,
        num_classes,
        seed=opts.seed,
        shots=opts.shots,
        classnames=classnames,
        **kwargs,
    )
    if short:
        names = ", ".join(classnames[c] for c in short[:5])
        result.warnings.append(
            f"{len(short)} classes have fewer than {opts.shots} training images ({names}"
            f"{', …' if len(short) > 5 else ''}): all of theirs are used"
        )
    result.warnings.extend(noisy.warnings)
    true_labels = train_labels[index]
    labels = noisy.labels
    transition = noise.transition_matrix(true_labels, labels, num_classes)
    rates = noise.per_class_rate(true_labels, labels, num_classes).tolist()
    n, n_noisy = len(labels), int((labels != true_labels).sum())
    noise_meta = {
        **options,
        "n": n,
        "n_noisy": n_noisy,
        "actual_rate": n_noisy / n if n else 0.0,
        "per_class_rate": [None if math.isnan(r) else r for r in rates],
    }
    if human is not None:
        # Measured, not chosen: the annotators' confusions between true and given class.
        noise_meta["transition"] = transition.tolist()
        noise_meta["human"] = {**human.describe(), "set": opts.human}
    result.notes.append(
        f"{opts.kind} noise: {n_noisy} of {n} training labels changed "
        f"(actual rate {noise_meta['actual_rate']:.4f})"
    )
    result.notes.append(f"noise rate per class: {format_rates(rates, classnames)}")
    meta = {
        "model": feats.model,
        "dataset": feats.meta.get("dataset"),
        "classnames": classnames,
        "options": options,
        "upstream": {"features": feats.ref()},
        "noise": noise_meta,
        "key": key,
    }
    tensors = {
        "labels": labels,
        "true_labels": true_labels,
        "index": index,
        "transition": transition,
    }
    artifacts.save(target, "labelset", tensors, meta)
    result.summary = json.loads(json.dumps(noise_meta))
    return result
