"""Encode a dataset's images once with CLIP's frozen image encoder (the `features` artifact).

* The plain view is CLIP's own preprocessing (resize, center crop). `views=K` adds K augmented
  views per *training* image with CoOp's augmentation: RandomResizedCrop(scale=(0.08, 1),
  bicubic) and a horizontal flip with probability 0.5, drawn from a generator seeded by
  (seed, split, image index), so the views do not depend on batching, workers or ranks.
  The default is K = 0 (no augmented views): encoding K views costs K more encoder passes.
* Images are opened with PIL and converted to RGB, so grayscale, CMYK, palette and RGBA PNGs
  and any size work. An image that cannot be decoded fails the run with one line naming it;
  with `skip_bad=True` such images are left out, counted, and listed in the artifact's
  metadata under `skipped` (`{split: [paths]}`), and the `paths`/labels hold only the rest.
* Work is done in shards of `shard_size` images written atomically into a work folder beside
  the output (`.<out name>.<key>.work/`); an interrupted run resumes from the shards present
  whose recorded content (split, start, count, options, key) matches what it needs, so a rerun
  with another `shard_size` re-encodes the shards that differ instead of failing. The shards
  are merged into the artifact at the end and the work folder is removed. An
  identical rerun finds the artifact by its cache key and does nothing. A lock file beside the
  output (`.<out name>.lock`, flock) makes two processes embedding the same dataset take turns:
  the second finds the first's artifact and does nothing.
* `on_shard()` runs after each shard is written (the CLI's test hook pauses there, so that
  tests can interrupt a run part-way on purpose).
* Under torchrun / torch.distributed (gloo on CPU, NCCL on GPU), shards are dealt round-robin
  to the ranks; rank 0 waits for all of them and merges.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from nlp_cli import artifacts
from nlp_cli.datasets import Dataset
from nlp_cli.errors import NlpError, UsageError

SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class EmbedOptions:
    """What the features depend on (views, seed, skip_bad) and how the work is run.

    `precision` (clip_model.PRECISIONS; None: fp16 on CUDA, fp32 on CPU) is how the work is
    run, like the device: it stays out of the cache key and the features are fp16 either way.
    """

    views: int = 0
    seed: int = 0
    skip_bad: bool = False
    batch_size: int = 64
    workers: int = 0
    device: str = "cpu"
    shard_size: int = 1024
    precision: str | None = None

    def validate(self) -> None:
        """Refuse impossible settings in one line."""
        if self.batch_size < 1 or self.shard_size < 1 or self.workers < 0 or self.views < 0:
            raise UsageError("--batch-size and --shard-size must be ≥ 1, --workers and --views ≥ 0")

    def key_options(self) -> dict[str, Any]:
        """The options that change the artifact (and so enter its cache key)."""
        return {"views": self.views, "seed": self.seed, "skip_bad": self.skip_bad}


@dataclass
class EmbedResult:
    """The artifact written (or found) and a summary for the CLI."""

    path: Path
    cache_hit: bool
    counts: dict[str, int]
    skipped: dict[str, list[str]] = field(default_factory=dict)


def rrc_params(
    width: int,
    height: int,
    g: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, drawing from generator `g`: (top, left, h, w)."""
    area = width * height
    # Same float32 arithmetic as torchvision, so a seeded generator gives the same crops.
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=g).item()
        r = torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g)
        aspect = torch.exp(r).item()
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, (1,), generator=g).item())
            j = int(torch.randint(0, width - w + 1, (1,), generator=g).item())
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def augment(img: Any, size: int, g: torch.Generator) -> torch.Tensor:
    """One CoOp training view: random resized crop (0.08–1, bicubic), flip, CLIP normalisation."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    top, left, h, w = rrc_params(img.width, img.height, g)
    img = TF.resized_crop(img, top, left, h, w, [size, size], InterpolationMode.BICUBIC)
    if torch.rand(1, generator=g).item() < 0.5:
        img = TF.hflip(img)
    return TF.normalize(TF.to_tensor(img), CLIP_MEAN, CLIP_STD)


def view_generator(seed: int, split: str, index: int) -> torch.Generator:
    """The generator for one image's augmented views: fixed by (seed, split, index)."""
    return torch.Generator().manual_seed((seed * 3 + SPLIT_CODE[split]) * 1_000_000_007 + index)


class ImageSet(torch.utils.data.Dataset):
    """Images of one split as (plain view, K augmented views, ok) by index."""

    def __init__(
        self,
        root: Path,
        paths: list[str],
        split: str,
        indices: list[int],
        preprocess: Callable,
        size: int,
        views: int,
        seed: int,
    ) -> None:
        self.root, self.paths, self.split, self.indices = root, paths, split, indices
        self.preprocess, self.size, self.views, self.seed = preprocess, size, views, seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        from PIL import Image

        idx = self.indices[i]
        try:
            with Image.open(self.root / self.paths[idx]) as im:
                img = im.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):
            empty = torch.zeros(3, self.size, self.size)
            return empty, empty.expand(self.views, -1, -1, -1).clone(), False
        plain = self.preprocess(img)
        g = view_generator(self.seed, self.split, idx)
        aug = [augment(img, self.size, g) for _ in range(self.views)]
        views = torch.stack(aug) if aug else torch.zeros(0, 3, self.size, self.size)
        return plain, views, True


class _FreshViews(torch.utils.data.Dataset):
    """One fresh CoOp augmentation of each image, drawn from (seed, epoch, index)."""

    def __init__(self, root: Path, paths: list[str], size: int, seed: int, epoch: int) -> None:
        self.root, self.paths, self.size, self.seed, self.epoch = root, paths, size, seed, epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        g = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.epoch) * 7919 + i) % 2**63)
        with Image.open(self.root / self.paths[i]) as im:
            return augment(im.convert("RGB"), self.size, g)


class OnlineViews:
    """The training images of a features artifact, freshly augmented (random resized crop
    0.08–1 + flip, as CoOp's loader) and encoded by the frozen image encoder once per epoch:
    what CoOp trains on, where cached `--views` draw from a fixed set of K crops."""

    def __init__(
        self, meta: dict[str, Any], model: Any, index: torch.Tensor, batch_size: int = 64
    ) -> None:
        root = Path(meta.get("root") or "")
        listed = (meta.get("paths") or {}).get("train") or []
        if len(index) and len(listed) <= int(index.max()):
            raise NlpError("--augment online needs the training images' paths in the features")
        self.paths = [listed[i] for i in index.tolist()]
        missing = [p for p in self.paths if not (root / p).is_file()]
        if missing:
            raise NlpError(
                f"--augment online needs the training images: {root / missing[0]} is missing "
                f"({len(missing)} of {len(self.paths)})"
            )
        self.root, self.model, self.batch_size = root, model, batch_size
        self.size = int(model.visual.input_resolution)

    @torch.no_grad()
    def epoch(self, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
        """Normalised float32 features [N, D] of this epoch's views."""
        loader = torch.utils.data.DataLoader(
            _FreshViews(self.root, self.paths, self.size, seed, epoch), batch_size=self.batch_size
        )
        dtype = self.model.dtype
        parts = [self.model.encode_image(x.to(device, dtype)).float() for x in loader]
        feats = torch.cat(parts)
        return feats / feats.norm(dim=-1, keepdim=True)


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _shards(ds: Dataset, size: int) -> list[tuple[str, int, int]]:
    out = []
    for split in ds.splits():
        n = len(ds.paths[split])
        out += [(split, a, min(a + size, n)) for a in range(0, n, size)]
    return out


def _shard_file(work: Path, split: str, start: int) -> Path:
    return work / f"{split}-{start:09d}.safetensors"


def _shard_meta(split: str, a: int, b: int, opts: EmbedOptions, key: str) -> dict[str, str]:
    """What a shard holds, recorded in its metadata: split, start, count, options and key."""
    return {
        "split": split,
        "start": str(a),
        "count": str(b - a),
        "options": json.dumps(opts.key_options(), sort_keys=True),
        "key": key,
    }


def _shard_ok(path: Path, split: str, a: int, b: int, opts: EmbedOptions, key: str) -> bool:
    """True when the shard at `path` holds exactly images a..b of `split` made with `opts`.

    Shards are trusted by their recorded content, not by their file name: a shard left by a run
    with another --shard-size (or other options, damaged, or from before shards recorded their
    content) does not match, and is encoded again. Only the header is read.
    """
    from safetensors import safe_open

    n = b - a
    views = opts.views if split == "train" else 0
    try:
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}) != _shard_meta(split, a, b, opts, key):
                return False
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception:  # a damaged shard is simply redone
        return False
    if shapes.get("features", (None,))[0] != n or shapes.get("ok") != (n,):
        return False
    return not views or shapes.get("views", ())[:2] == (views, n)


def encode_shards(
    ds: Dataset,
    loaded: Any,
    opts: EmbedOptions,
    work: Path,
    on_progress: Callable[[int, int], None] | None = None,
    key: str = "",
    on_shard: Callable[[], None] | None = None,
) -> None:
    """Encode every shard of `ds` this rank owns that `work` does not already hold.

    `key` (the artifact's cache key) is recorded in each shard next to its split, start, count
    and options; a shard whose record does not match is encoded again. `on_shard()` runs after
    each shard is safely on disk.
    """
    from safetensors.torch import save_file

    from nlp_cli.clip_model import autocast

    rank, world = _dist()
    work.mkdir(parents=True, exist_ok=True)
    shards = [s for k, s in enumerate(_shards(ds, opts.shard_size)) if k % world == rank]
    todo = [s for s in shards if not _shard_ok(_shard_file(work, s[0], s[1]), *s, opts, key)]
    total = sum(b - a for _, a, b in shards)
    done = total - sum(b - a for _, a, b in todo)
    if on_progress:
        on_progress(done, total)
    model = loaded.model
    device = torch.device(opts.device)
    size = int(model.visual.input_resolution)
    # model.dtype, not a parameter's: under CLIP's half layout class_embedding stays fp32.
    dtype = model.dtype
    pin = device.type == "cuda"
    for split, a, b in todo:
        images = ImageSet(
            ds.root,
            ds.paths[split],
            split,
            list(range(a, b)),
            loaded.preprocess,
            size,
            opts.views if split == "train" else 0,
            opts.seed,
        )
        loader = torch.utils.data.DataLoader(
            images, batch_size=opts.batch_size, num_workers=opts.workers, pin_memory=pin
        )
        feats, views, oks = [], [], []
        for plain, aug, ok in loader:
            with torch.no_grad(), autocast(device, loaded.precision):
                feats.append(model.encode_image(plain.to(device, dtype)).half().cpu())
                if aug.shape[1]:
                    k = aug.shape[1]
                    flat = aug.transpose(0, 1).reshape(-1, *aug.shape[2:]).to(device, dtype)
                    v = model.encode_image(flat).half().cpu()
                    views.append(v.reshape(k, len(plain), -1))
            oks.append(ok)
            done += len(plain)
            if on_progress:
                on_progress(done, total)
        tensors = {"features": torch.cat(feats), "ok": torch.cat(oks)}
        if views:
            tensors["views"] = torch.cat(views, dim=1)
        with artifacts.atomic_path(_shard_file(work, split, a)) as tmp:
            save_file(tensors, str(tmp), _shard_meta(split, a, b, opts, key))
        if on_shard is not None:
            on_shard()


def merge_shards(
    ds: Dataset, opts: EmbedOptions, work: Path, key: str = ""
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]], dict[str, list[str]]]:
    """The artifact's tensors, the kept paths per split and the skipped paths per split."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    paths: dict[str, list[str]] = {}
    skipped: dict[str, list[str]] = {}
    for split in ds.splits():
        parts = []
        for s, a, b in _shards(ds, opts.shard_size):
            if s != split:
                continue
            path = _shard_file(work, s, a)
            if not _shard_ok(path, s, a, b, opts, key):  # encode_shards has just checked them
                raise NlpError(
                    f"{path} changed while it was merged (another process in {work}?): "
                    "run the command again to encode it anew"
                )
            parts.append(load_file(str(path)))
        ok = torch.cat([p["ok"] for p in parts])
        bad = [ds.paths[split][i] for i in torch.nonzero(~ok).flatten().tolist()]
        if bad and not opts.skip_bad:
            raise NlpError(
                f"cannot decode {len(bad)} image(s), e.g. {ds.root / bad[0]} "
                "(pass --skip-bad to leave them out)"
            )
        if bad:
            skipped[split] = bad
        tensors[f"{split}.features"] = torch.cat([p["features"] for p in parts])[ok]
        tensors[f"{split}.labels"] = torch.tensor(ds.labels[split], dtype=torch.int64)[ok]
        if split == "train" and opts.views:
            tensors["train.views"] = torch.cat([p["views"] for p in parts], dim=1)[:, ok]
        paths[split] = [p for p, keep in zip(ds.paths[split], ok.tolist(), strict=True) if keep]
    return tensors, paths, skipped


def embed(
    ds: Dataset,
    model: str,
    opts: EmbedOptions | None = None,
    out: Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_shard: Callable[[], None] | None = None,
    on_wait: Callable[[Path], None] | None = None,
) -> EmbedResult | None:
    """Encode `ds` with CLIP `model` into a features artifact; None on ranks other than 0.
    `on_wait(lock)` hears when another process embeds the same dataset and this one waits."""
    from nlp_cli import clip_model

    opts = opts or EmbedOptions()
    if opts.views < 0:
        raise NlpError("--views must be 0 or more")
    device = clip_model.resolve_device(opts.device)
    precision = clip_model.resolve_precision(opts.precision, device)
    opts = replace(opts, device=device, precision=precision)
    loaded = clip_model.load(model, device=device, precision=precision)
    options = opts.key_options()
    key = artifacts.cache_key(
        "features", {"model": loaded.identity["digest"], "data": ds.digest()}, options
    )
    stem = f"{ds.name}-{loaded.identity['name']}".replace("/", "-")
    out = Path(out) if out is not None else artifacts.default_out("features", stem, key)
    rank, world = _dist()
    if artifacts.cached(out, key, "features"):
        return _found(out) if rank == 0 else None
    # Ranks of one torchrun job share the work through the barrier; only rank 0 locks.
    lock = out.parent / f".{out.name}.lock"
    with artifacts.locked(lock, on_wait) if rank == 0 else contextlib.nullcontext():
        if world == 1 and artifacts.cached(out, key, "features"):
            return _found(out)
        return _encode_and_merge(ds, loaded, opts, out, key, options, on_progress, on_shard)


def _found(out: Path) -> EmbedResult:
    meta = artifacts.read_meta(out)
    counts = {s: len(p) for s, p in meta["paths"].items() if p}
    return EmbedResult(out, True, counts, meta.get("skipped") or {})


def _encode_and_merge(
    ds: Dataset,
    loaded: Any,
    opts: EmbedOptions,
    out: Path,
    key: str,
    options: dict[str, Any],
    on_progress: Callable[[int, int], None] | None,
    on_shard: Callable[[], None] | None = None,
) -> EmbedResult | None:
    rank, world = _dist()
    work = out.parent / f".{out.name}.{key}.work"
    encode_shards(ds, loaded, opts, work, on_progress, key, on_shard)
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        return None
    tensors, paths, skipped = merge_shards(ds, opts, work, key)
    meta = {
        "model": loaded.identity,
        "dataset": ds.name,
        "classnames": ds.classnames,
        "paths": paths,
        "root": str(ds.root),
        "options": options,
        "key": key,
        "upstream": {},
    }
    if skipped:
        meta["skipped"] = skipped
    artifacts.save(out, "features", tensors, meta)
    shutil.rmtree(work, ignore_errors=True)
    return EmbedResult(out, False, {s: len(p) for s, p in paths.items()}, skipped)
