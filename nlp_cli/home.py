"""Where `nlp` keeps its defaults: one home folder, overridable with NLP_HOME, and the cores it
may use."""

from __future__ import annotations

import os
from pathlib import Path


def nlp_home() -> Path:
    """The home folder: $NLP_HOME, else $XDG_CACHE_HOME/nlp, else ~/.cache/nlp."""
    env = os.environ.get("NLP_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "nlp"


def data_dir() -> Path:
    """Where downloaded datasets live."""
    return nlp_home() / "data"


def models_dir() -> Path:
    """Where CLIP weights live."""
    return nlp_home() / "models"


def artifacts_dir(kind: str) -> Path:
    """Where artifacts of one kind go when no --out is given."""
    return nlp_home() / "artifacts" / kind


def cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
