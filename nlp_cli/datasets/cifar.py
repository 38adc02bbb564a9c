"""CIFAR-10 (DSPT's appendix) and CIFAR-100: the python pickles, unpacked into PNGs and a split
file; and CIFAR-10N / CIFAR-100N, their published human labels (Wei et al., ICLR 2022).

The train split lists the images in the pickles' order (CIFAR-10's `data_batch_1` … `_5`,
CIFAR-100's `train`), which is torchvision's order and the order of CIFAR-N's label arrays:
the i-th human label belongs to the i-th training image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlp_cli.datasets.spec import DatasetSpec, Source, register
from nlp_cli.datasets.splits import Split, save_split_file
from nlp_cli.errors import NlpError

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def _unpack(
    folder: Path,
    batches: Sequence[tuple[str, str]],
    label_key: bytes,
    classnames: Sequence[str],
    split_file: str,
) -> None:
    """Write each pickled batch's images as PNGs under images/<split>/<class>/ and the split."""
    import pickle

    import numpy as np
    from PIL import Image

    items: Split = {"train": [], "val": [], "test": []}
    used: set[str] = set()
    for split, batch in batches:
        with open(folder / batch, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        for img, label, fname in zip(data, d[label_key], d[b"filenames"], strict=True):
            cname = classnames[label]
            rel = f"{split}/{cname.replace(' ', '_')}/{Path(fname.decode()).stem}.png"
            if rel in used:  # two images of one name: keep both, in order
                rel = rel.removesuffix(".png") + f"_{len(items[split])}.png"
            used.add(rel)
            (folder / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / "images" / rel)
            items[split].append((rel, int(label), cname))
    save_split_file(items, folder / split_file)


def _prepare_cifar10(folder: Path) -> None:
    """Unpickle CIFAR-10's batches into PNGs per class and write its split file."""
    src = "cifar-10-batches-py"
    if (folder / "split_cifar10.json").is_file() or not (folder / src).is_dir():
        return
    batches = [("train", f"{src}/data_batch_{i}") for i in range(1, 6)]
    _unpack(
        folder,
        [*batches, ("test", f"{src}/test_batch")],
        b"labels",
        CIFAR10_CLASSES,
        "split_cifar10.json",
    )


def _prepare_cifar100(folder: Path) -> None:
    """Unpickle CIFAR-100's train and test pickles (fine labels) into PNGs and a split file."""
    import pickle

    src = folder / "cifar-100-python"
    if (folder / "split_cifar100.json").is_file() or not src.is_dir():
        return
    with open(src / "meta", "rb") as f:
        names = [
            n.decode().replace("_", " ")
            for n in pickle.load(f, encoding="bytes")[b"fine_label_names"]
        ]
    batches = [("train", "cifar-100-python/train"), ("test", "cifar-100-python/test")]
    _unpack(folder, batches, b"fine_labels", names, "split_cifar100.json")


register(
    DatasetSpec(
        "cifar10",
        "cifar-10",
        "images",
        "split_cifar10.json",
        (
            Source(
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "cifar-10-python.tar.gz",
                "md5:c58f30108f718f92721af3b95e74349a",
                creates="cifar-10-batches-py",
            ),
        ),
        "CIFAR-10: 10 classes, 50000 train / 10000 test (DSPT's appendix)",
        prepare=_prepare_cifar10,
    )
)

register(
    DatasetSpec(
        "cifar100",
        "cifar-100",
        "images",
        "split_cifar100.json",
        (
            Source(
                "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                "cifar-100-python.tar.gz",
                "md5:eb9058c3a382ffc7106e4002c42a8d85",
                creates="cifar-100-python",
            ),
        ),
        "CIFAR-100: 100 classes (fine labels), 50000 train / 10000 test",
        prepare=_prepare_cifar100,
    )
)


@dataclass(frozen=True)
class HumanLabels:
    """A published file of human labels for the training images of a catalog dataset."""

    name: str  # its catalog entry (`nlp download NAME`)
    dataset: str  # the catalog entry whose training images it labels
    filename: str
    num_train: int
    num_classes: int
    sets: dict[str, str]  # label set name (`nlp corrupt --human NAME`) → key in the file
    clean_key: str = "clean_label"


_CIFAR_N = "https://github.com/UCSC-REAL/cifar-10-100n/raw/main/data/"
_CIFAR_N_MIRROR = "https://raw.githubusercontent.com/UCSC-REAL/cifar-10-100n/main/data/"
# The repository publishes no licence and no checksum for its label files; the sizes are the
# files' lengths as a third-party loader records them. Cite Wei et al., ICLR 2022.
_CIFAR_N_NOTE = (
    "labels by Wei et al. (ICLR 2022, github.com/UCSC-REAL/cifar-10-100n, noisylabels.com); "
    "the repository states no licence and publishes no checksum: the SHA-256 is pinned on "
    "first download"
)

HUMAN: dict[str, HumanLabels] = {
    h.dataset: h
    for h in (
        HumanLabels(
            "cifar10n",
            "cifar10",
            "CIFAR-10_human.pt",
            50000,
            10,
            {
                "aggre": "aggre_label",
                "random1": "random_label1",
                "random2": "random_label2",
                "random3": "random_label3",
                "worst": "worse_label",  # the file spells it so
            },
        ),
        HumanLabels(
            "cifar100n", "cifar100", "CIFAR-100_human.pt", 50000, 100, {"noisy": "noisy_label"}
        ),
    )
}

# The upstream repository publishes neither checksums nor sizes, so none is enforced (a wrong
# guess would refuse every real download): the SHA-256 is pinned on first download instead.
for _h, _size, _folder in (
    (HUMAN["cifar10"], None, "cifar-10n"),
    (HUMAN["cifar100"], None, "cifar-100n"),
):
    register(
        DatasetSpec(
            _h.name,
            _folder,
            "",
            None,
            (
                Source(
                    _CIFAR_N + _h.filename,
                    _h.filename,
                    None,
                    extract=False,
                    mirrors=(_CIFAR_N_MIRROR + _h.filename,),
                    size=_size,
                    pin=True,
                ),
            ),
            f"{_h.dataset.upper().replace('CIFAR', 'CIFAR-')}N: human labels of {_h.dataset}'s "
            f"training images ({', '.join(_h.sets)}) for `nlp corrupt --human`",
            note=_CIFAR_N_NOTE,
            labels_for=_h.dataset,
        )
    )


def human_sets() -> list[str]:
    """Every human label set name, in catalog order (CIFAR-10N's, then CIFAR-100N's)."""
    return [name for h in HUMAN.values() for name in h.sets]


def human_for(dataset: str | None, label_set: str) -> HumanLabels:
    """The human labels whose set `label_set` labels `dataset`'s training images."""
    from nlp_cli.errors import UsageError, did_you_mean

    h = HUMAN.get(dataset or "")
    if h is None:
        owner = next((x for x in HUMAN.values() if label_set in x.sets), None)
        whose = f" ({label_set!r} labels {owner.dataset})" if owner else ""
        raise UsageError(
            f"--human needs {' or '.join(HUMAN)} training features (`nlp embed "
            f"{next(iter(HUMAN))}`), these are {dataset or 'an unnamed dataset'}'s{whose}"
        )
    if label_set not in h.sets:
        raise UsageError(
            f"{h.name} has no label set {label_set!r}{did_you_mean(label_set, list(h.sets))}: "
            f"its sets are {', '.join(h.sets)}"
        )
    return h


def _numpy_globals() -> list[Any]:
    """The numpy names a pickled integer array needs, under numpy 1's and numpy 2's spellings."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray
    allowed: list[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    for spelling in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [
            (multiarray._reconstruct, f"{spelling}._reconstruct"),
            (multiarray.scalar, f"{spelling}.scalar"),
        ]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def load_human_labels(path: Path, h: HumanLabels) -> dict[str, Any]:
    """The file's label arrays by key (torch.Tensor, int64), read without running its code.

    The file is a pickled dict of numpy arrays; it is read with torch's weights-only unpickler,
    which builds nothing but tensors, containers and the numpy array names allowed here.
    """
    import pickle

    import numpy as np
    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NlpError(
            f"{path}: no such file (run `nlp download {h.name}`, or pass the file you have)"
        ) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NlpError(f"{path} is not a readable {h.name} label file ({first[:160]})") from None
    if not isinstance(raw, dict):
        raise NlpError(
            f"{path} is not a {h.name} label file: it holds a {type(raw).__name__}, not a dict"
        )
    out: dict[str, Any] = {}
    for key in (h.clean_key, *h.sets.values()):
        if key not in raw:
            have = ", ".join(sorted(map(str, raw))) or "nothing"
            raise NlpError(f"{path} is not a {h.name} label file: no {key!r} (it has {have})")
        arr = np.asarray(raw[key]).reshape(-1)
        if arr.dtype.kind not in "iu" or (
            arr.size and (arr.min() < 0 or arr.max() >= h.num_classes)
        ):
            raise NlpError(f"{path}: {key!r} is not a list of labels in 0..{h.num_classes - 1}")
        out[key] = torch.from_numpy(arr.astype(np.int64))
    lengths = sorted({len(v) for v in out.values()})
    if lengths != [h.num_train]:
        raise NlpError(
            f"{path} is not a {h.name} label file: it labels {'/'.join(map(str, lengths))} "
            f"images, {h.dataset}'s training set has {h.num_train}"
        )
    return out
