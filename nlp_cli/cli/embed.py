"""`nlp embed`: encode a dataset with CLIP's frozen image encoder; print the features' path."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from nlp_cli.cli import output
from nlp_cli.cli.common import (
    AsJson,
    Device,
    Precision,
    Pretrained,
    finish,
    resolve_run,
    said,
    test_pause,
    weights,
)
from nlp_cli.cli.progress import Meter


def _init_distributed(device: str) -> bool:
    """Join the torchrun process group when launched with WORLD_SIZE > 1; True if joined here."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        if device.startswith("cuda"):
            # One GPU per rank: cuda becomes cuda:<LOCAL_RANK>.
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        return True
    return False


def register(app: typer.Typer) -> None:
    """Add the `embed` command."""

    @app.command("embed")
    def embed(
        dataset: str = typer.Argument(
            ..., help="Catalog name (under --root), a dataset folder, or a CSV path,label[,split]."
        ),
        model: str = typer.Option(
            ..., "--model", help="CLIP model name, checkpoint path, or open_clip:ARCH."
        ),
        pretrained: Pretrained = None,
        views: int = typer.Option(
            0, "--views", help="Augmented views per training image (0 = only the center crop)."
        ),
        batch_size: int = typer.Option(64, "--batch-size", help="Images per encoder batch."),
        workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
        device: Device = "auto",
        precision: Precision = None,
        seed: int = typer.Option(0, "--seed", help="Seed of the augmented views."),
        skip_bad: bool = typer.Option(
            False, "--skip-bad", help="Leave out undecodable images (listed in the metadata)."
        ),
        shard_size: int = typer.Option(
            1024, "--shard-size", help="Images per resumable shard (and per rank under torchrun)."
        ),
        root: Path | None = typer.Option(
            None, "--root", help="Where catalog datasets live (default: NLP_HOME/data)."
        ),
        out: Path | None = typer.Option(
            None, "--out", help="Output file (default under NLP_HOME)."
        ),
        as_json: AsJson = False,
    ) -> None:
        """Encode train/val/test images once; later stages read the cached features."""
        from nlp_cli.embed import EmbedOptions
        from nlp_cli.stages.prepare import embed as run_embed

        opts = EmbedOptions(
            views=views,
            seed=seed,
            skip_bad=skip_bad,
            batch_size=batch_size,
            workers=workers,
            device=device,
            shard_size=shard_size,
            precision=precision,
        )
        opts.validate()
        device, opts.precision = resolve_run(device, precision)
        opts.device = device
        joined = _init_distributed(device)
        if joined and device == "cuda":
            import torch

            opts.device = f"cuda:{torch.cuda.current_device()}"
        try:
            with Meter("embedding", "images") as bar:
                result = run_embed(
                    dataset,
                    weights(model, pretrained),
                    opts,
                    root,
                    out,
                    on_progress=bar.update,
                    on_shard=test_pause,
                    on_wait=lambda lock: output.info(
                        f"waiting for the lock {lock}: another process is embedding this dataset"
                    ),
                )
        finally:
            if joined:
                import torch

                torch.distributed.destroy_process_group()
        if result.path is None:  # another rank writes the artifact
            return
        if not result.cache_hit:
            said(opts.device, opts.precision)
        finish(result, as_json)
