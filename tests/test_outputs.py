"""Outputs: nothing lost, nothing stale.

A stage's output never lands on what it reads, writes never replace a device, a FIFO or a
symlink, files get ordinary permissions, and no artifact holding NaN or inf is ever written.
docs/RELIABILITY.md lists each case with the test that holds it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from nlp_cli import artifacts
from nlp_cli.errors import ArtifactError, UsageError


def _features(path: Path) -> Path:
    t = {
        "train.features": torch.randn(4, 8),
        "train.labels": torch.tensor([0, 1, 0, 1]),
        "test.features": torch.randn(2, 8),
        "test.labels": torch.tensor([0, 1]),
    }
    return artifacts.save(path, "features", t, {"classnames": ["a", "b"], "upstream": {}})


def _made_from(path: Path, kind: str, *sources: Path) -> Path:
    """An artifact of `kind` whose metadata names `sources` as its upstream."""
    upstream = {f"up{i}": artifacts.load(s).ref() for i, s in enumerate(sources)}
    n = 4
    t = {
        "labels": torch.zeros(n, dtype=torch.long),
        "true_labels": torch.zeros(n, dtype=torch.long),
        "index": torch.arange(n),
        "clean": torch.ones(n, dtype=torch.bool),
        "pseudo_labels": torch.zeros(n, dtype=torch.long),
        "scores": torch.zeros(n),
        "ctx": torch.zeros(2, 8),
    }
    keep = {k: t[k] for k in artifacts.REQUIRED_TENSORS[kind]}
    return artifacts.save(path, kind, keep, {"classnames": ["a", "b"], "upstream": upstream})


@pytest.fixture
def chain(tmp_path):
    """features → labelset → partition → prompt (the prompt also names the features)."""
    feats = _features(tmp_path / "feats.st")
    labels = _made_from(tmp_path / "labels.st", "labelset", feats)
    part = _made_from(tmp_path / "part.st", "partition", labels)
    prompt = _made_from(tmp_path / "prompt.st", "prompt", part, feats)
    return feats, labels, part, prompt


# --- check_output: the output is none of the inputs nor what they were made from ---------------


def test_output_that_is_an_input_is_refused(chain, tmp_path, monkeypatch):
    feats, labels, part, prompt = chain
    with pytest.raises(UsageError, match="is the input .*labels.st: writing it would destroy"):
        artifacts.check_output(labels, [labels])
    monkeypatch.chdir(tmp_path)  # ./x and /abs/x name the same file
    with pytest.raises(UsageError, match="is the input"):
        artifacts.check_output(Path("./labels.st"), [labels.resolve()])
    with pytest.raises(UsageError, match="is the input"):
        artifacts.check_output(tmp_path / "sub" / ".." / "labels.st", [Path("labels.st")])
    (tmp_path / "link.st").symlink_to(labels)  # a symlink to the input
    with pytest.raises(UsageError, match="is the input"):
        artifacts.check_output(tmp_path / "link.st", [labels])
    os.link(labels, tmp_path / "hard.st")  # a hard link to it
    with pytest.raises(UsageError, match="is the input"):
        artifacts.check_output(tmp_path / "hard.st", [labels])
    artifacts.check_output(tmp_path / "new.st", [labels, None])  # a fresh path is fine


def test_output_that_is_an_upstream_artifact_is_refused(chain, tmp_path):
    feats, labels, part, prompt = chain
    # three levels up: prompt → partition → labelset → features
    with pytest.raises(
        UsageError,
        match=r"labels.st is an artifact the input .*prompt.st was made"
        r" from through .*part.st: writing it would break .*prompt.st",
    ):
        artifacts.check_output(labels, [prompt])
    with pytest.raises(UsageError, match="feats.st is an artifact the input .*part.st was made"):
        artifacts.check_output(feats, [part])
    (tmp_path / "f-link.st").symlink_to(feats)
    with pytest.raises(UsageError, match=r"f-link.st \(that is .*feats.st\) is an artifact"):
        artifacts.check_output(tmp_path / "f-link.st", [prompt])
    artifacts.check_output(prompt, [labels])  # downstream of the input: fine (a rerun)


def test_missing_upstream_and_non_artifact_inputs_are_passed_over(chain, tmp_path):
    feats, labels, part, prompt = chain
    feats.unlink()
    artifacts.check_output(feats, [part])  # its load will say the features no longer exist
    artifacts.check_output(tmp_path / "x.st", [part, tmp_path / "nope.st", tmp_path])
    (tmp_path / "notes.txt").write_text("not an artifact\n")
    artifacts.check_output(tmp_path / "x.st", [tmp_path / "notes.txt"])


def test_upstream_cycle_terminates(tmp_path):
    a = _features(tmp_path / "a.st")
    b = _made_from(tmp_path / "b.st", "labelset", a)
    _made_from(tmp_path / "a.st", "labelset", b)  # a now names b, which names (old) a
    artifacts.check_output(tmp_path / "c.st", [a])
    with pytest.raises(UsageError, match="b.st is an artifact the input"):
        artifacts.check_output(b, [a])


def test_output_with_a_newline_or_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(UsageError, match="contains a newline"):
        artifacts.check_output(tmp_path / "a\nb.st", [])
    with pytest.raises(UsageError, match="is an existing folder"):
        artifacts.check_output(tmp_path, [])
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ArtifactError, match="cannot write"):  # still checks writability
        artifacts.check_output(blocker / "out.st", [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
