"""CIFAR-10 (DSPT's appendix): the python pickles, unpacked into PNGs and a split file."""

from __future__ import annotations

from pathlib import Path

from nlp_cli.datasets.spec import DatasetSpec, Source, register
from nlp_cli.datasets.splits import Split, save_split_file

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def _prepare_cifar10(folder: Path) -> None:
    """Unpickle CIFAR-10's batches into PNGs per class and write its split file."""
    import pickle

    import numpy as np
    from PIL import Image

    src = folder / "cifar-10-batches-py"
    if (folder / "split_cifar10.json").is_file() or not src.is_dir():
        return
    items: Split = {"train": [], "val": [], "test": []}
    batches = [("train", f"data_batch_{i}") for i in range(1, 6)] + [("test", "test_batch")]
    for split, batch in batches:
        with open(src / batch, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        for img, label, fname in zip(data, d[b"labels"], d[b"filenames"], strict=True):
            cname = CIFAR10_CLASSES[label]
            rel = f"{split}/{cname}/{Path(fname.decode()).stem}.png"
            (folder / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / "images" / rel)
            items[split].append((rel, int(label), cname))
    save_split_file(items, folder / "split_cifar10.json")


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
