"""`nlp corrupt`: a label set with injected noise (sym, pair, class map, instance-dependent) or
with published human labels (CIFAR-10N, CIFAR-100N)."""

from __future__ import annotations

from pathlib import Path

import typer

from nlp_cli.cli import output
from nlp_cli.cli.common import AsJson, Out, finish
from nlp_cli.cli.names import HUMAN_LABELS
from nlp_cli.errors import UsageError


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
        human: str | None = typer.Option(
            None,
            "--human",
            help="Human labels of CIFAR-10 (aggre, random1-3, worst) or CIFAR-100 (noisy) "
            "training features, from `nlp download cifar10n` / `cifar100n`.",
            autocompletion=lambda incomplete: [n for n in HUMAN_LABELS if n.startswith(incomplete)],
        ),
        human_file: Path | None = typer.Option(
            None,
            "--human-labels",
            help="With --human: the CIFAR-N label file (default: the one `nlp download` put in "
            "place).",
        ),
        rate: float = typer.Option(
            1.0, "--rate", help="With --map: the fraction of each mapped class that is flipped."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the shot sampling and the noise."),
        shots: int | None = typer.Option(
            None, "--shots", help="Sample K training images per class first (NLPrompt: 16)."
        ),
        out: Out = None,
        as_json: AsJson = False,
    ) -> None:
        """Noisy training labels (validation and test stay clean) next to the true ones."""
        from nlp_cli.stages.corrupt import CorruptOptions, choose_noise, make_labelset

        kind, value = choose_noise(sym, pair, map_file, idn, human)
        if kind != "map" and rate != 1.0:
            raise UsageError("--rate only applies to --map (the other types take their own rate)")
        opts = CorruptOptions(
            kind=kind,
            rate=rate if kind == "map" else value,
            seed=seed,
            shots=shots,
            map_file=map_file,
            human=human,
            human_file=human_file,
        )
        opts.validate()
        path = output.input_path(features, "feature cache")
        finish(make_labelset(path, opts, out), as_json)
