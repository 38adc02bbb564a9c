"""The GPU suite: every figure the GPU path needs, in one run, written as one JSON.

    bash benchmarks/gpu_suite.sh            # on a GPU machine (ViT-B/16-sized random CLIP)
    bash benchmarks/gpu_suite.sh --quick    # anywhere, in a minute or two (tiny CLIP, CPU ok)

Measures, on the device it finds (CUDA when present):

* `step`: one training step of ours (cached features, the exact fast text encoder) against the
  plain CoOp step (image encoder + 77-token text encoder), at C = 10 / 100 / 1000 classes, and
  ours alone at C = 10 000, with peak GPU memory of each;
* `full_run`: a whole DSPT-protocol run of a Caltech101-sized task (4 128 samples, 100 classes,
  50 epochs) on synthetic features;
* `embed`: images per second of `nlp embed`'s path (DataLoader workers, pinned memory);
* `batched`: R runs (seeds) trained together in one forward against the same R runs one by one;
* `compile`: the training step eager vs through torch.compile (`nlp train --compile`; mode
  reduce-overhead, i.e. CUDA graphs, on CUDA) at C = 10 / 100 / 1000 (10 with --quick; at 1000
  the four class chunks are padded to one shape, so it compiles once): what `--compile auto`
  should pick on this device.

Every timing synchronises the device before reading the clock. Weights are random (no network
for checkpoints), which changes no timing.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compile import Case, side_by_side  # noqa: E402
from bench_protocol import synthetic_features  # noqa: E402
from bench_step import classnames, vit_b16  # noqa: E402

from nlp_cli import clip_model  # noqa: E402
from nlp_cli import train as lib  # noqa: E402
from nlp_cli.prompt import PromptLearner, plain_text_features, text_features  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of `fn` over `repeats`, the device synchronised around each call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_mb(fn, device: torch.device) -> float | None:
    """Peak GPU memory (MiB) while `fn` runs; None off CUDA."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def step_case(model, n_cls: int, device, repeats: int, plain: bool) -> dict[str, Any]:
    """Ours vs the plain CoOp step at `n_cls` classes (batch 32)."""
    names = classnames(n_cls)
    learner = PromptLearner(model, names, generator=torch.Generator().manual_seed(0)).to(device)
    optim = torch.optim.SGD([learner.ctx], lr=0.002)
    labels = torch.randint(n_cls, (32,), device=device)
    res = int(model.visual.input_resolution)
    images = torch.randn(32, 3, res, res, device=device, dtype=model.dtype)
    cached = F.normalize(torch.randn(32, model.text_projection.shape[1], device=device), dim=-1)
    scale = float(model.logit_scale.exp())

    def step(text_fn, image_fn):
        text = F.normalize(text_fn(model, learner).float(), dim=-1)
        loss = F.cross_entropy(scale * image_fn() @ text.T, labels)
        optim.zero_grad()
        loss.backward()
        optim.step()

    def plain_images():
        with torch.no_grad():
            return F.normalize(model.encode_image(images).float(), dim=-1)

    out: dict[str, Any] = {"classes": n_cls}
    ours = lambda: step(text_features, lambda: cached)  # noqa: E731
    out["ours_s"] = timed(ours, device, repeats)
    out["ours_peak_mb"] = peak_mb(ours, device)
    if plain:
        theirs = lambda: step(plain_text_features, plain_images)  # noqa: E731
        out["plain_s"] = timed(theirs, device, max(1, repeats // 3), warmup=1)
        out["plain_peak_mb"] = peak_mb(theirs, device)
        out["speedup"] = out["plain_s"] / out["ours_s"]
    return out


def full_run(loaded, feats: Path, device, epochs: int) -> dict[str, Any]:
    """One DSPT-protocol run (dsoftmax), its wall time and peak memory."""
    cfg = lib.make_config("dspt", loss="dsoftmax", epochs=epochs, device=str(device))
    cfg.precision = loaded.precision
    data = lib.load_data(feats)
    t0 = time.perf_counter()
    peak = peak_mb(lambda: lib.train_prompt(data, cfg, loaded=loaded), device)
    sync(device)
    return {
        "epochs": epochs,
        "n_train": len(data.labels),
        "classes": len(data.classnames),
        "seconds": time.perf_counter() - t0,
        "peak_mb": peak,
    }


def batched(loaded, feats: Path, device, runs: int, epochs: int) -> dict[str, Any]:
    """`runs` seeds trained together vs one by one (same configs, same results)."""
    data = lib.load_data(feats)
    cfgs = [
        lib.make_config("dspt", loss="ce", epochs=epochs, seed=s + 1, device=str(device))
        for s in range(runs)
    ]
    for c in cfgs:
        c.precision = loaded.precision
    t0 = time.perf_counter()
    lib.train_many([data] * runs, cfgs, loaded=loaded)
    sync(device)
    together = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c in cfgs:
        lib.train_prompt(data, c, loaded=loaded)
    sync(device)
    alone = time.perf_counter() - t0
    return {
        "runs": runs,
        "epochs": epochs,
        "together_s": together,
        "one_by_one_s": alone,
        "speedup": alone / together,
    }


def embed_case(ckpt: Path, device, n_images: int, workers: int, batch: int) -> dict[str, Any]:
    """Images per second of nlp embed's path on generated JPEGs."""
    from PIL import Image

    from nlp_cli import datasets
    from nlp_cli.embed import EmbedOptions, embed

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imgs"
        g = torch.Generator().manual_seed(0)
        for i in range(n_images):
            split = "train" if i % 4 else "test"
            folder = root / split / f"class{i % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (torch.rand(256, 320, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
        ds = datasets.load(str(root))
        opts = EmbedOptions(batch_size=batch, workers=workers, device=str(device))
        t0 = time.perf_counter()
        embed(ds, str(ckpt), opts, Path(tmp) / "f.safetensors")
        sync(device)
        seconds = time.perf_counter() - t0
    return {
        "images": n_images,
        "workers": workers,
        "batch": batch,
        "seconds": seconds,
        "images_per_s": n_images / seconds,
    }


def compile_cases(model, sizes: list[int], device, precision: str, repeats: int) -> list:
    """Eager vs compiled step at each size; `ran` says whether compiling worked."""
    out = []
    for n_cls in sizes:
        eager = Case(model, precision, False, n_cls, device)
        comp = Case(model, precision, True, n_cls, device)
        side_by_side([eager, comp], repeats)
        g_eager, g_comp = eager.grad, comp.grad
        out.append(
            {
                "classes": n_cls,
                "eager_s": eager.seconds,
                "compiled_s": comp.seconds,
                "speedup": eager.seconds / comp.seconds,
                "first_call_s": comp.first,
                "ran": comp.ran,
                "grad_rel_diff": float((g_comp - g_eager).abs().max() / g_eager.abs().max()),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny CLIP, small sizes (any machine)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--no-compile", action="store_true", help="leave out eager vs compiled")
    args = ap.parse_args()
    device = torch.device(clip_model.resolve_device(args.device))
    precision = clip_model.resolve_precision(None, device)
    report: dict[str, Any] = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "precision": precision,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "quick": args.quick,
    }
    with tempfile.TemporaryDirectory() as tmp:
        model = clip_model.build_tiny(seed=0) if args.quick else vit_b16()
        ckpt = clip_model.save_checkpoint(model, Path(tmp) / "clip.pt", fp16=False)
        loaded = clip_model.load(str(ckpt), device, precision)
        # Ours at C = 10 000 too (chunks of 256 classes, each recomputed in backward), the
        # plain path up to C = 1000.
        sizes = [10, 100] if args.quick else [10, 100, 1000, 10000]
        report["step"] = [
            step_case(loaded.model, c, device, 3 if args.quick or c > 1000 else 20, plain=c <= 1000)
            for c in sizes
        ]
        n_cls, n_train = (10, 256) if args.quick else (100, 4128)
        feats = synthetic_features(Path(tmp) / "f.safetensors", ckpt, n_cls, n_train, 512)
        report["full_run"] = full_run(loaded, feats, device, 2 if args.quick else 50)
        runs, epochs = (3, 1) if args.quick else (50, 2)
        report["batched"] = batched(loaded, feats, device, runs, epochs)
        n_img, workers, batch = (16, 0, 8) if args.quick else (1024, 8, 128)
        report["embed"] = embed_case(ckpt, device, n_img, workers, batch)
        if not args.no_compile:
            report["compile"] = compile_cases(
                loaded.model,
                [10] if args.quick else [10, 100, 1000],  # 1000: four chunks, one shape
                device,
                precision,
                3 if args.quick else 20,
            )
    text = json.dumps(report, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
