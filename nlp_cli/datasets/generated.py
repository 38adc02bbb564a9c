"""Datasets drawn on this machine rather than downloaded: `shapes` (the offline world, also
called `duo`), `shapes-easy` (the first, easy world, kept for unit tests) and `shapes-fine`.

An entry stays in the catalog when its generator (a module of `nlp_cli.datasets`, which needs
numpy and Pillow) cannot be imported; `nlp download NAME` then says so in one line.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from nlp_cli.datasets.spec import DatasetSpec, register
from nlp_cli.errors import NlpError


def _world(name: str, module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise NlpError(f"the {name} generator ({module}) is not installed") from e


def _generator(name: str, module: str) -> Callable[[Path, int], Path]:
    """`module.generate(root, seed=seed)`, imported when the dataset is first drawn."""

    def generate(root: Path, seed: int) -> Path:
        return Path(_world(name, module).generate(root, seed=seed))

    return generate


def _verifier(name: str, module: str) -> Callable[[Path], None]:
    """Refuses a folder whose stamp says another world drew it (see `shapes.check_stamp`)."""

    def verify(folder: Path) -> None:
        from nlp_cli.datasets.shapes import check_stamp

        check_stamp(folder, name, lambda: tuple(_world(name, module).CLASSES))

    return verify


for _name, _module, _about, _aliases in (
    (
        "shapes",
        "nlp_cli.datasets.duo",
        "Generated colour pairs (object on background), 56 classes: the offline world where "
        "prompt learning is needed (deterministic; also called duo)",
        ("duo",),
    ),
    (
        "shapes-easy",
        "nlp_cli.datasets.shapes",
        "Generated coloured shapes, 25 classes: an easy world for quick checks (an untrained "
        "context already scores high)",
        (),
    ),
    (
        "shapes-fine",
        "nlp_cli.datasets.shapes_fine",
        "Generated fine-grained shapes, 60 classes (offline, deterministic; experimental)",
        (),
    ),
):
    register(
        DatasetSpec(
            _name,
            _name,
            "",
            None,
            (),
            _about,
            generate=_generator(_name, _module),
            verify=_verifier(_name, _module),
            aliases=_aliases,
        )
    )
