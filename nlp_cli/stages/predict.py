"""`predict`: the top-k labels of images from a trained prompt file (or zero-shot class names),
outside any dataset: a folder, image files or a CSV of paths."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlp_cli import artifacts
from nlp_cli.errors import UsageError
from nlp_cli.stages.result import StageResult

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class PredictOptions:
    """A prompt file, or zero-shot class names with a model; how many labels per image."""

    prompt: Path | None = None
    classnames: list[str] | None = None
    model: str | None = None
    top_k: int = 5
    device: str = "cpu"
    precision: str | None = None
    batch_size: int = 64

    def validate(self) -> None:
        if (self.prompt is None) == (self.classnames is None):
            raise UsageError("give a PROMPT file, or --zero-shot CLASSNAMES (not both)")
        if self.classnames is not None:
            if not self.classnames:
                raise UsageError("--zero-shot needs at least one class name")
            if self.model is None:
                raise UsageError("--zero-shot needs --model (the CLIP to classify with)")
        if self.top_k < 1:
            raise UsageError(f"--top-k must be ≥ 1, got {self.top_k}")


def read_classnames(spec: str) -> list[str]:
    """Class names from a text file (one per line) or a comma-separated list."""
    path = Path(spec)
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines()]
    else:
        names = [n.strip() for n in spec.split(",")]
    return [n for n in names if n]


def collect_images(inputs: list[Path]) -> list[Path]:
    """Image files from folders (recursively), files, and CSVs whose first column is a path."""
    found: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found += sorted(
                p
                for p in item.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")
            )
        elif item.suffix.lower() == ".csv" and item.is_file():
            with item.open(newline="", encoding="utf-8-sig") as f:
                for row in csv.reader(f):
                    if not row or row[0].strip().lower() == "path":
                        continue
                    p = Path(row[0].strip())
                    found.append(p if p.is_absolute() else item.parent / p)
        elif item.is_file():
            found.append(item)
        else:
            raise UsageError(f"{item}: no such image, folder or CSV")
    if not found:
        raise UsageError("no images found in the given paths")
    return found


def predict(images: list[Path | str], opts: PredictOptions) -> StageResult:
    """Top-k labels with probabilities for every image (softmax of CLIP's scaled logits)."""
    import torch
    from PIL import Image

    from nlp_cli import clip_model
    from nlp_cli.prompt import prompt_text_features

    opts.validate()
    files = collect_images([Path(p) for p in images])
    if opts.prompt is not None:
        art = artifacts.load(opts.prompt, "prompt")
        loaded = clip_model.load_for(art.meta, opts.model, opts.device, opts.precision)
        classnames = art.classnames
        with torch.no_grad():
            text = prompt_text_features(loaded.model, art)
    else:
        loaded = clip_model.load(opts.model, opts.device, opts.precision)
        classnames = list(opts.classnames or [])
        text = clip_model.class_prototypes(loaded.model, classnames)
    device = loaded.model.text_projection.device
    text = text.float().to(device)
    k = min(opts.top_k, len(classnames))
    rows: list[dict[str, Any]] = []
    bad: list[str] = []
    for start in range(0, len(files), opts.batch_size):
        batch, kept = [], []
        for f in files[start : start + opts.batch_size]:
            try:
                with Image.open(f) as im:
                    batch.append(loaded.preprocess(im.convert("RGB")))
                kept.append(f)
            except (OSError, ValueError):
                bad.append(str(f))
        if not batch:
            continue
        with torch.no_grad():
            x = loaded.model.encode_image(torch.stack(batch).to(device, loaded.model.dtype))
            x = x.float() / x.float().norm(dim=-1, keepdim=True)
            probs = (loaded.logit_scale * x @ text.T).softmax(dim=-1)
            top = probs.topk(k, dim=-1)
        for f, p, i in zip(kept, top.values.tolist(), top.indices.tolist(), strict=True):
            rows.append(
                {
                    "path": str(f),
                    "top": [
                        {"rank": r + 1, "label": classnames[c], "probability": q}
                        for r, (q, c) in enumerate(zip(p, i, strict=True))
                    ],
                }
            )
    warnings = [f"could not read {len(bad)} image(s), e.g. {bad[0]}"] if bad else []
    summary = {"model": loaded.identity.get("name"), "classes": len(classnames), "images": rows}
    return StageResult(None, summary, warnings=warnings)


def to_csv(rows: list[dict[str, Any]]) -> str:
    """path,rank,label,probability — one line per image and rank."""
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "rank", "label", "probability"])
    for row in rows:
        for t in row["top"]:
            writer.writerow([row["path"], t["rank"], t["label"], f"{t['probability']:.6f}"])
    return buf.getvalue()
