"""`nlp corrupt`: a label set with injected noise (sym, pair, class map, instance-dependent)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from nlp_cli import artifacts, noise
from nlp_cli.cli import output
from nlp_cli.errors import UsageError, did_you_mean


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
    lookup = {name: i for i, name in enumerate(classnames)}
    mapping: dict[int, int] = {}
    for src, dst in raw.items():
        for name in (src, dst):
            if str(name) not in lookup:
                raise UsageError(
                    f"--map {path}: unknown class {name!r}{did_you_mean(str(name), classnames)}"
                )
        if src == dst:
            raise UsageError(f"--map {path}: class {src!r} is mapped to itself")
        mapping[lookup[str(src)]] = lookup[str(dst)]
    return mapping


def _noise_choice(sym, pair, map_file, idn) -> tuple[str, float | None]:
    given = [(n, v) for n, v in (("sym", sym), ("pair", pair), ("map", map_file), ("idn", idn))]
    given = [(n, v) for n, v in given if v is not None]
    if len(given) > 1:
        raise UsageError(f"choose one noise type, got {' and '.join('--' + n for n, _ in given)}")
    if not given:
        return "none", None
    name, value = given[0]
    return name, (None if name == "map" else float(value))


def format_rates(rates: list[float], classnames: list[str]) -> str:
    """'name 0.50, other 0.44, …' for stderr."""
    parts = [
        f"{name} {'–' if math.isnan(r) else f'{r:.2f}'}"
        for name, r in zip(classnames, rates, strict=True)
    ]
    return ", ".join(parts)


def register(app: typer.Typer) -> None:
    """Add the `corrupt` command."""

    @app.command("corrupt")
    def corrupt(
        features: Path | None = typer.Argument(
            None, help="Feature cache from `nlp embed` (default: a path piped on stdin)."
        ),
        sym: float | None = typer.Option(
            None, "--sym", help="Symmetric noise rate r: round(r·N) labels to another class."
        ),
        pair: float | None = typer.Option(
            None, "--pair", help="Pair-flip noise rate r: round(r·N) labels c → c+1 mod C."
        ),
        map_file: Path | None = typer.Option(
            None,
            "--map",
            help='YAML/JSON class map {"from": "to"} (e.g. CIFAR-10 truck: automobile).',
        ),
        idn: float | None = typer.Option(
            None, "--idn", help="Instance-dependent noise rate: flips towards the nearest class."
        ),
        rate: float = typer.Option(
            1.0, "--rate", help="With --map: the fraction of each mapped class that is flipped."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the shot sampling and the noise."),
        shots: int | None = typer.Option(
            None, "--shots", help="Sample K training images per class first (NLPrompt: 16)."
        ),
        out: Path | None = typer.Option(
            None, "--out", help="Output file (default under NLP_HOME)."
        ),
        as_json: bool = typer.Option(False, "--json", help="JSON summary on stdout."),
    ) -> None:
        """Noisy training labels (validation and test stay clean) next to the true ones."""
        kind, value = _noise_choice(sym, pair, map_file, idn)
        if value is not None:
            noise.check_rate(value, f"--{kind}")
        if kind != "map" and rate != 1.0:
            raise UsageError("--rate only applies to --map (the other types take their own rate)")
        if shots is not None and shots < 1:
            raise UsageError(f"--shots must be ≥ 1, got {shots}")
        path = output.input_path(features, "feature cache")
        feats = artifacts.load(path, "features")
        classnames = feats.classnames
        num_classes = len(classnames)
        noise.check_classes(num_classes)

        opts: dict[str, Any] = {}
        if kind == "map":
            mapping = read_class_map(map_file, classnames)
            opts = {"mapping": mapping, "rate": rate}
            desc_rate: float | None = rate
            named = {classnames[s]: classnames[d] for s, d in mapping.items()}
        else:
            desc_rate = value
            named = None
            if value is not None:
                opts["rate"] = value
        options = {"type": kind, "rate": desc_rate, "seed": seed, "shots": shots, "map": named}
        upstream = {"features": feats.digest}
        key = artifacts.cache_key("labelset", upstream, options)
        stem = f"{feats.meta.get('dataset') or path.stem}-{kind}"
        if desc_rate is not None:
            stem += f"{desc_rate:g}"
        stem += f"-s{seed}" + (f"-{shots}shot" if shots else "")
        target = out or artifacts.default_out("labelset", stem, key)
        artifacts.ensure_writable(target)
        if artifacts.cached(target, key, "labelset"):
            output.info(f"cache hit: {target}")
            output.emit(target, artifacts.read_meta(target).get("noise"), as_json)
            return

        train_labels = feats.tensors["train.labels"].long()
        if kind == "idn":
            opts["features"] = feats.tensors["train.features"].float()
        index, result, short = noise.corrupt(
            kind, train_labels, num_classes, seed=seed, shots=shots, classnames=classnames, **opts
        )
        if short:
            names = ", ".join(classnames[c] for c in short[:5])
            output.warn(
                f"{len(short)} classes have fewer than {shots} training images ({names}"
                f"{', …' if len(short) > 5 else ''}): all of theirs are used"
            )
        for w in result.warnings:
            output.warn(w)
        true_labels = train_labels[index]
        labels = result.labels
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
        output.info(
            f"{kind} noise: {n_noisy} of {n} training labels changed "
            f"(actual rate {noise_meta['actual_rate']:.4f})"
        )
        output.info(f"noise rate per class: {format_rates(rates, classnames)}")
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
        output.emit(target, json.loads(json.dumps(noise_meta)), as_json)
