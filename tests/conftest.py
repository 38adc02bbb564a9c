"""Shared fixtures: a temporary NLP_HOME, a tiny CLIP, synthetic features, a CLI runner."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from nlp_cli import artifacts, clip_model

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def nlp_home(tmp_path, monkeypatch):
    home = tmp_path / "nlp-home"
    monkeypatch.setenv("NLP_HOME", str(home))
    monkeypatch.delenv("NLP_DEBUG", raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A random tiny ViT CLIP saved as an OpenAI-layout fp16 state dict."""
    path = tmp_path_factory.mktemp("clip") / "tiny-clip.pt"
    clip_model.save_checkpoint(clip_model.build_tiny(seed=0), path)
    return path


def make_features(
    path: Path,
    clip_path: Path,
    n_classes: int = 5,
    n_train: int = 20,
    n_test: int = 10,
    signal: float = 3.0,
    seed: int = 0,
) -> Path:
    """A features artifact whose image features sit near the hand-prompt text prototypes."""
    loaded = clip_model.load(str(clip_path))
    classnames = [f"class {chr(97 + i)}" for i in range(n_classes)]
    protos = clip_model.hand_prompt_features(loaded.model, classnames)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    paths = {}
    for split, n in (("train", n_train), ("val", n_test), ("test", n_test)):
        labels = torch.arange(n_classes).repeat_interleave(n)
        noise = torch.randn(len(labels), protos.shape[1], generator=g)
        noise = noise / noise.norm(dim=1, keepdim=True)
        tensors[f"{split}.features"] = (signal * protos[labels] + noise).half()
        tensors[f"{split}.labels"] = labels
        paths[split] = [f"{classnames[y]}/{split}_{i}.jpg" for i, y in enumerate(labels.tolist())]
    meta = {
        "model": loaded.identity,
        "dataset": "synthetic",
        "classnames": classnames,
        "paths": paths,
        "root": "",
        "options": {"seed": seed},
        "upstream": {},
    }
    meta["key"] = artifacts.cache_key("features", {}, meta["options"])
    return artifacts.save(path, "features", tensors, meta)


def make_image_folder(root: Path, train: int = 6, test: int = 3) -> Path:
    """A user folder of small generated images: train/ and test/, three colour classes."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", train), ("test", test)):
        for c, colour in enumerate(((220, 30, 30), (30, 220, 30), (30, 30, 220))):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise = (torch.rand(40, 48, 3, generator=g) * 60).to(torch.uint8).numpy()
                img = Image.new("RGB", (48, 40), colour)
                img.paste(Image.fromarray(noise), (0, 0), Image.new("L", (48, 40), 90))
                img.save(folder / f"{i}.png")
    return root


def make_sym_labelset(features: Path, out: Path, rate: float = 0.5, seed: int = 0) -> Path:
    """A label set with round(rate·N) train labels moved uniformly to one of the other classes."""
    feats = artifacts.load(features, "features")
    true = feats.tensors["train.labels"]
    c = len(feats.classnames)
    g = torch.Generator().manual_seed(seed)
    n = len(true)
    flip = torch.randperm(n, generator=g)[: round(rate * n)]
    labels = true.clone()
    labels[flip] = (true[flip] + torch.randint(1, c, (len(flip),), generator=g)) % c
    transition = torch.zeros(c, c, dtype=torch.float64)
    transition.index_put_((true, labels), torch.ones(n, dtype=torch.float64), accumulate=True)
    transition /= transition.sum(1, keepdim=True)
    meta = {
        "model": feats.model,
        "dataset": feats.meta["dataset"],
        "classnames": feats.classnames,
        "options": {"sym": rate, "seed": seed},
        "upstream": {"features": feats.ref()},
        "noise": {"type": "sym", "rate": rate, "seed": seed},
        "key": f"test-{seed}",
    }
    tensors = {
        "labels": labels,
        "true_labels": true,
        "index": torch.arange(n),
        "transition": transition,
    }
    return artifacts.save(out, "labelset", tensors, meta)


@pytest.fixture
def features(tmp_path, tiny_clip) -> Path:
    return make_features(tmp_path / "feats.safetensors", tiny_clip)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `nlp ARGS` in this process, with optional stdin text; returns code, stdout, stderr."""
    from nlp_cli.cli import run

    def invoke(*args: str, stdin: str | None = None) -> Result:
        capsys.readouterr()
        stream = io.StringIO(stdin if stdin is not None else "")
        if stdin is None:
            stream.isatty = lambda: True  # type: ignore[method-assign]
        monkeypatch.setattr(sys, "stdin", stream)
        code = run([str(a) for a in args])
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return invoke


def tree_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder`, by its relative path: a folder's exact bytes."""
    import hashlib

    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def load_script(name: str):
    """A script of `scripts/` imported as a module (they are not part of the package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
