"""`download` and `embed`: a dataset on disk, then its image features cached once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nlp_cli.errors import NlpError
from nlp_cli.stages.result import StageResult


def download(
    dataset: str,
    root: Path | None = None,
    from_dir: Path | None = None,
    seed: int = 1,
    on_progress: Callable[[str, int, int | None], None] | None = None,
) -> StageResult:
    """Fetch a catalog dataset into `root` (or adopt `from_dir`); the path is its folder."""
    from nlp_cli import datasets
    from nlp_cli.datasets import download as dl
    from nlp_cli.home import data_dir

    spec = datasets.get(dataset)
    root = Path(root) if root is not None else data_dir()
    folder, notes = dl.fetch_dataset(spec, root, from_dir, seed=seed, progress=on_progress)
    return StageResult(folder, {"dataset": spec.name}, warnings=list(notes))


def download_model(
    name: str, on_progress: Callable[[str, int, int | None], None] | None = None
) -> StageResult:
    """Fetch an OpenAI CLIP checkpoint into NLP_HOME/models; the result's path is the file."""
    from nlp_cli.datasets import download as dl

    return StageResult(dl.fetch_model(name, progress=on_progress), {"model": name})


def download_open_clip(model: str, pretrained: str) -> StageResult:
    """Fetch open_clip weights `pretrained` (a tag) of `model` (open_clip:ARCH) into
    NLP_HOME/models/open_clip/ARCH/TAG; the result's path is the file."""
    from nlp_cli import clip_model
    from nlp_cli.datasets import download as dl

    arch, weights = clip_model.split_ref(clip_model.model_ref(model, pretrained))
    path = dl.fetch_open_clip(arch, weights)
    return StageResult(path, {"model": model, "pretrained": pretrained})


def embed(
    dataset: str,
    model: str,
    opts=None,
    root: Path | None = None,
    out: Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_shard: Callable[[], None] | None = None,
    on_wait: Callable[[Path], None] | None = None,
) -> StageResult:
    """Encode a dataset (catalog name, folder or CSV) with CLIP's image encoder, once.

    Returns a result whose path is None on torchrun ranks other than 0 (rank 0 writes)."""
    from nlp_cli import artifacts, datasets
    from nlp_cli.embed import EmbedOptions
    from nlp_cli.embed import embed as run_embed

    opts = opts or EmbedOptions()
    opts.validate()
    source = Path(dataset)
    artifacts.check_output(out, [source] if source.is_file() else [])
    ds = datasets.load(dataset, root)
    if len(ds.classnames) < 2:
        raise NlpError(
            f"{ds.name} has {len(ds.classnames)} class{'' if len(ds.classnames) == 1 else 'es'}: "
            "classifying needs at least 2 (one sub-folder, or one CSV label, per class)"
        )
    missing = [p for s in ds.splits() for p in ds.paths[s] if not (ds.root / p).is_file()]
    if missing and not opts.skip_bad:
        raise NlpError(
            f"{ds.name}: {len(missing)} listed image(s) do not exist, e.g. {ds.root / missing[0]} "
            "(pass --skip-bad to leave them out)"
        )
    done = run_embed(
        ds, model, opts, out, on_progress=on_progress, on_shard=on_shard, on_wait=on_wait
    )
    if done is None:
        return StageResult(None, {}, warnings=list(ds.notes))
    warnings = list(ds.notes)
    for split, bad in done.skipped.items():
        warnings.append(f"skipped {len(bad)} undecodable {split} image(s), e.g. {bad[0]}")
    summary = {"counts": done.counts, "cache_hit": done.cache_hit}
    return StageResult(done.path, summary, cache_hit=done.cache_hit, warnings=warnings)
