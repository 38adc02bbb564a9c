"""Datasets drawn on this machine rather than downloaded: `shapes`, `shapes-fine` and `duo`.

The entry stays in the catalog when its generator (`nlp_cli.datasets.shapes`, which needs numpy
and Pillow) cannot be imported; `nlp download shapes` then says so in one line.
"""

from __future__ import annotations

from pathlib import Path

from nlp_cli.datasets.spec import DatasetSpec, register
from nlp_cli.errors import NlpError


def _generate_shapes(root: Path, seed: int) -> Path:
    try:
        import nlp_cli.datasets.shapes as shapes
    except ImportError as e:
        raise NlpError("the shapes generator (nlp_cli.datasets.shapes) is not installed") from e
    return Path(shapes.generate(root, seed=seed))


register(
    DatasetSpec(
        "shapes",
        "shapes",
        "",
        None,
        (),
        "Generated coloured shapes (offline, deterministic)",
        generate=_generate_shapes,
    )
)


def _generate_shapes_fine(root: Path, seed: int) -> Path:
    import nlp_cli.datasets.shapes_fine as shapes_fine

    return Path(shapes_fine.generate(root, seed=seed))


register(
    DatasetSpec(
        "shapes-fine",
        "shapes-fine",
        "",
        None,
        (),
        "Generated fine-grained shapes, 60 classes (offline, deterministic; experimental)",
        generate=_generate_shapes_fine,
    )
)


def _generate_duo(root: Path, seed: int) -> Path:
    import nlp_cli.datasets.duo as duo

    return Path(duo.generate(root, seed=seed))


register(
    DatasetSpec(
        "duo",
        "duo",
        "",
        None,
        (),
        "Generated colour pairs (object on background), 56 classes (offline, deterministic; "
        "experimental)",
        generate=_generate_duo,
    )
)
