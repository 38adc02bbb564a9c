"""Datasets drawn on this machine rather than downloaded: `shapes`, `shapes-fine` and `duo`.

An entry stays in the catalog when its generator (a module of `nlp_cli.datasets`, which needs
numpy and Pillow) cannot be imported; `nlp download NAME` then says so in one line.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from nlp_cli.datasets.spec import DatasetSpec, register
from nlp_cli.errors import NlpError


def _generator(name: str, module: str) -> Callable[[Path, int], Path]:
    """`module.generate(root, seed=seed)`, imported when the dataset is first drawn."""

    def generate(root: Path, seed: int) -> Path:
        try:
            world = importlib.import_module(module)
        except ImportError as e:
            raise NlpError(f"the {name} generator ({module}) is not installed") from e
        return Path(world.generate(root, seed=seed))

    return generate


for _name, _module, _about in (
    ("shapes", "nlp_cli.datasets.shapes", "Generated coloured shapes (offline, deterministic)"),
    (
        "shapes-fine",
        "nlp_cli.datasets.shapes_fine",
        "Generated fine-grained shapes, 60 classes (offline, deterministic; experimental)",
    ),
    (
        "duo",
        "nlp_cli.datasets.duo",
        "Generated colour pairs (object on background), 56 classes (offline, deterministic; "
        "experimental)",
    ),
):
    register(DatasetSpec(_name, _name, "", None, (), _about, generate=_generator(_name, _module)))
