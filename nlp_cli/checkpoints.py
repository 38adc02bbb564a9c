"""Resumable training checkpoints, and CoOp/NLPrompt (Dassl) prompt checkpoints in and out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nlp_cli import artifacts
from nlp_cli.errors import ArtifactError
from nlp_cli.prompt import learner_from_artifact


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a resumable checkpoint atomically."""
    try:
        with artifacts.atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as e:
        # a full disk surfaces from torch's zip writer as a RuntimeError (inline_container.cc)
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0][-120:]
        raise ArtifactError(
            f"cannot write the checkpoint {path}: {reason} (is the disk full?)"
        ) from e


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by save_checkpoint."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ArtifactError(
            f"{path} is not a readable training checkpoint: delete it to start over"
        ) from e


def import_coop(path: Path | str) -> tuple[torch.Tensor, dict[str, Any]]:
    """The `ctx` of a CoOp/NLPrompt (Dassl) prompt-learner checkpoint, and its other fields."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ArtifactError(f"{path} is not a readable PyTorch checkpoint") from e
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or "ctx" not in state:
        raise ArtifactError(f"{path} holds no prompt learner: its state dict has no 'ctx'")
    extra = {k: v for k, v in obj.items() if k in ("epoch",)} if isinstance(obj, dict) else {}
    return state["ctx"].float(), extra


def export_coop(
    path: Path | str, model: Any, prompt: artifacts.Artifact, epoch: int | None = None
) -> Path:
    """Write a prompt artifact as a Dassl checkpoint CoOp/NLPrompt load (`model.pth.tar-N`)."""
    learner = learner_from_artifact(model, prompt)
    history = prompt.meta.get("history") or []
    state = {
        "state_dict": {
            "ctx": learner.ctx.detach().cpu().clone(),
            "token_prefix": learner.token_prefix.cpu().clone(),
            "token_suffix": learner.token_suffix.cpu().clone(),
        },
        "epoch": int(epoch if epoch is not None else len(history)),
        "optimizer": None,
        "scheduler": None,
    }
    path = Path(path)
    with artifacts.atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path
