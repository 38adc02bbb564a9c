"""What a stage trains or purifies on: a label set (or partition) with its features, checked.

Every stage that reads labels goes through `load_data`, the one place that loads a label set,
loads the features it was made from, and checks that the two belong together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nlp_cli import artifacts
from nlp_cli.errors import ArtifactError

LABEL_KINDS = ("labelset", "partition")


@dataclass
class TrainData:
    """The train samples' features, given and true labels and, for a partition, its verdict."""

    features: artifacts.Artifact
    source: artifacts.Artifact
    index: torch.Tensor
    labels: torch.Tensor
    true_labels: torch.Tensor
    clean: torch.Tensor | None

    @property
    def classnames(self) -> list[str]:
        return self.features.classnames

    @property
    def train_features(self) -> torch.Tensor:
        """The (raw, un-normalised) features of the samples this label set covers."""
        return self.features.tensors["train.features"][self.index]


def load_data(path: Path | str, kinds: tuple[str, ...] = ("features", *LABEL_KINDS)) -> TrainData:
    """A features artifact (its clean train labels), a label set or a partition, checked."""
    art = artifacts.load(path, kinds)
    if art.kind == "features":
        labels = art.tensors["train.labels"].long()
        index = torch.arange(len(labels))
        return TrainData(art, art, index, labels, labels.clone(), None)
    feats = artifacts.load_upstream(art, "features", "features")
    artifacts.check_compatible(art, feats, f"{art.path} and its features {feats.path}")
    index = art.tensors["index"].long()
    n_train = feats.tensors["train.features"].shape[0]
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= n_train):
        raise ArtifactError(f"{art.path}: its index points outside {feats.path}'s train split")
    clean = art.tensors["clean"].bool() if art.kind == "partition" else None
    return TrainData(
        feats, art, index, art.tensors["labels"].long(), art.tensors["true_labels"].long(), clean
    )
