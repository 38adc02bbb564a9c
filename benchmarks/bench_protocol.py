"""Wall time of a whole DSPT-protocol run (50 epochs, batch 32, SGD cosine) on synthetic features.

Run from the repository root, e.g.:

    PYTHONPATH=$PWD python benchmarks/bench_protocol.py --classes 10 --n-train 1000
    PYTHONPATH=$PWD python benchmarks/bench_protocol.py --classes 100 --n-train 4128 --device cuda

The CLIP is a randomly initialised ViT-B/16-sized model saved to a temporary checkpoint; the
features are random unit vectors near the hand-prompt prototypes (as `embed` would cache them),
so the run does all the work of `nlp train --protocol dspt` except reading real images.
`--epochs` shortens the run; the line printed gives seconds per epoch and the projected time of
the 50-epoch protocol.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_step import classnames, vit_b16

from nlp_cli import artifacts, clip_model
from nlp_cli import train as lib


class _Stop(Exception):
    """Ends a shortened run after its last epoch (the schedule stays the 50-epoch one)."""


def synthetic_features(path: Path, ckpt: Path, n_cls: int, n_train: int, n_test: int) -> Path:
    loaded = clip_model.load(str(ckpt))
    names = classnames(n_cls)
    protos = clip_model.hand_prompt_features(loaded.model, names)
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = torch.arange(n) % n_cls
        noise = torch.nn.functional.normalize(torch.randn(n, protos.shape[1], generator=g), dim=-1)
        tensors[f"{split}.features"] = (2.0 * protos[labels] + noise).half()
        tensors[f"{split}.labels"] = labels
    meta = {
        "model": loaded.identity,
        "dataset": "synthetic",
        "classnames": names,
        "options": {},
        "upstream": {},
        "key": "bench",
    }
    return artifacts.save(path, "features", tensors, meta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=50, help="epochs to run (the protocol has 50)")
    ap.add_argument("--loss", default="dsoftmax")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = clip_model.save_checkpoint(vit_b16(), Path(tmp) / "vit-b16-random.pt", fp16=False)
        feats = synthetic_features(
            Path(tmp) / "f.safetensors", ckpt, args.classes, args.n_train, args.n_test
        )
        cfg = lib.make_config("dspt", loss=args.loss, device=args.device)
        run_epochs = min(args.epochs, cfg.epochs)
        loaded = clip_model.load(str(ckpt), args.device)
        done: list[float] = []

        def stop(rec):
            done.append(time.perf_counter())
            if rec["epoch"] >= run_epochs:
                raise _Stop

        t0 = time.perf_counter()
        try:
            lib.train_prompt(feats, cfg, loaded=loaded, on_epoch=stop)
        except _Stop:
            pass
        total = time.perf_counter() - t0
    per_epoch = total / len(done)
    steps = -(-args.n_train // cfg.batch_size)
    print(
        f"DSPT protocol, {args.classes} classes, {args.n_train} train samples, "
        f"{steps} steps/epoch, "
        f"{args.device}, {torch.get_num_threads()} threads: {len(done)} epochs in {total:.1f} s "
        f"({per_epoch:.2f} s/epoch, {per_epoch / steps * 1e3:.1f} ms/step incl. per-epoch test); "
        f"50 epochs: {50 * per_epoch / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
