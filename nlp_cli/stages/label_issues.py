"""`find_label_issues`: which given labels look wrong, in every split, with a trust check.

Reads a features artifact (the labels as the user gave them, every split), a label set or a
partition (its train labels; val and test from the features). All splits are pooled, CLIP's
class probabilities (hand prompt, or `prompt`) are computed, and confident learning
(`nlp_cli.label_issues`) estimates how many labels are wrong and ranks every image.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nlp_cli import artifacts, contact_sheet, detection
from nlp_cli import label_issues as cl
from nlp_cli import purify as purifiers
from nlp_cli.errors import UsageError
from nlp_cli.stages.purify import text_prototypes
from nlp_cli.stages.result import StageResult

SPLITS = ("train", "val", "test")
COLUMNS = [
    "path",
    "split",
    "given_label",
    "suggested_label",
    "score",
    "rank",
    "flagged",
    "index",
]
SHEET_SIZE = 36
PROBS = ("zeroshot", "probe")


@dataclass
class LabelIssueOptions:
    """Which probabilities, which scores, which splits."""

    method: str = "cleanlab"  # the purifier whose scores rank the images
    probs: str = "zeroshot"  # zeroshot: CLIP's (hand prompt or `prompt`); probe: a linear probe
    prompt: Path | None = None  # a trained prompt's probabilities instead of the hand prompt's
    model: str | None = None
    device: str = "cpu"
    precision: str | None = None
    template: str | None = None
    splits: tuple[str, ...] = SPLITS
    sheet_size: int = SHEET_SIZE

    def validate(self) -> None:
        """One UsageError line for a wrong option."""
        purifiers.get(self.method)
        if self.probs not in PROBS:
            raise UsageError(f"--probs takes {' or '.join(PROBS)}, got {self.probs!r}")
        if self.probs == "probe" and (self.method != "cleanlab" or self.prompt is not None):
            raise UsageError("--probs probe goes with --method cleanlab and no --prompt")
        bad = [s for s in self.splits if s not in SPLITS]
        if bad or not self.splits:
            raise UsageError(f"--splits takes some of {', '.join(SPLITS)}, got {bad or 'none'}")
        if self.sheet_size < 1:
            raise UsageError(f"--sheet-size must be at least 1, got {self.sheet_size}")


@dataclass
class _Pool:
    features: torch.Tensor
    labels: torch.Tensor
    true_labels: torch.Tensor | None
    split: list[str]
    index: list[int]
    paths: list[str]


def _pool(
    path: Path, splits: tuple[str, ...]
) -> tuple[artifacts.Artifact, artifacts.Artifact, _Pool]:
    from nlp_cli.data import load_data

    data = load_data(path)
    feats, source = data.features, data.source
    meta_paths = feats.meta.get("paths") or {}
    root = feats.meta.get("root") or ""
    parts: dict[str, list] = {"f": [], "y": [], "t": [], "s": [], "i": [], "p": []}
    truth_known = source.kind != "features"
    for split in splits:
        if f"{split}.features" not in feats.tensors:
            continue
        if split == "train":
            index = data.index.tolist()
            x, y, t = data.train_features, data.labels, data.true_labels
        else:
            x = feats.tensors[f"{split}.features"]
            y = feats.tensors[f"{split}.labels"].long()
            t = y.clone()
            index = list(range(len(y)))
        rel = meta_paths.get(split) or []
        parts["f"].append(x.float())
        parts["y"].append(y.long())
        parts["t"].append(t.long())
        parts["s"] += [split] * len(index)
        parts["i"] += index
        parts["p"] += [_join(root, rel[i]) if i < len(rel) else "" for i in index]
    if not parts["s"]:
        raise UsageError(f"{path} has none of the splits {', '.join(splits)}")
    pool = _Pool(
        torch.cat(parts["f"]),
        torch.cat(parts["y"]),
        torch.cat(parts["t"]) if truth_known else None,
        parts["s"],
        parts["i"],
        parts["p"],
    )
    return feats, source, pool


def _join(root: str, rel: str) -> str:
    return str(Path(root) / rel) if root and rel and not Path(rel).is_absolute() else rel


def report_rows(pool: _Pool, issues: cl.LabelIssues, classnames: list[str]) -> list[dict]:
    """One row per image, most suspicious first."""
    order = torch.argsort(issues.rank).tolist()
    return [
        {
            "path": pool.paths[i],
            "split": pool.split[i],
            "given_label": classnames[int(pool.labels[i])],
            "suggested_label": classnames[int(issues.suggested[i])],
            "score": f"{float(issues.scores[i]):.6g}",
            "rank": int(issues.rank[i]),
            "flagged": int(bool(issues.flagged[i])),
            "index": pool.index[i],
        }
        for i in order
    ]


def write_rows(path: Path, rows: list[dict[str, Any]], columns: list[str] = COLUMNS) -> None:
    """A CSV with `columns`, written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    artifacts.atomic_write_text(path, buf.getvalue())


def find_label_issues(
    path: Path | str,
    opts: LabelIssueOptions | None = None,
    out: Path | None = None,
    sheet: Path | None = None,
    html: Path | None = None,
) -> StageResult:
    """A CSV ranking every image of `path`'s splits by how likely its label is wrong."""
    from nlp_cli import clip_model

    opts = opts or LabelIssueOptions()
    opts.validate()
    path = Path(path)
    upstream = {"input": artifacts.file_digest(path)}
    if opts.prompt is not None:
        upstream["prompt"] = artifacts.file_digest(opts.prompt)
    key = artifacts.cache_key(
        "label-issues",
        upstream,
        {"method": opts.method, "probs": opts.probs, "splits": list(opts.splits)},
    )
    target = (
        Path(out)
        if out is not None
        else artifacts.default_out("label-issues", f"{path.stem}-{opts.method}", key, ".csv")
    )
    for what, p in (("--out", target), ("--sheet", sheet), ("--html", html)):
        artifacts.check_output(p, [path, opts.prompt], what=what)

    feats, _, pool = _pool(path, opts.splits)
    scores = None
    if opts.probs == "probe":
        probs = cl.probe_probabilities(pool.features, pool.labels, len(feats.classnames))
    else:
        loaded = clip_model.load_for(
            feats.meta,
            override=opts.model,
            device=opts.device,
            precision=opts.precision,
            image=False,
        )
        text = text_prototypes(feats, loaded, opts.prompt, opts.template).float().cpu()
        probs = purifiers.class_logits(pool.features, text, loaded.logit_scale).softmax(dim=-1)
    if opts.method != "cleanlab":
        verdict = purifiers.purify(
            opts.method, pool.features, text, pool.labels, loaded.logit_scale
        )
        scores = verdict.scores
    issues = cl.find_label_issues(probs, pool.labels, pool.features, scores, feats.classnames)
    rows = report_rows(pool, issues, feats.classnames)
    write_rows(target, rows)

    result = StageResult(target)
    n = len(rows)
    result.warnings += issues.warnings
    per_split = {
        s: {
            "n": pool.split.count(s),
            "flagged": sum(1 for r in rows if r["split"] == s and r["flagged"]),
        }
        for s in dict.fromkeys(pool.split)
    }
    flagged_txt = ", ".join(f"{s} {v['flagged']} of {v['n']}" for s, v in per_split.items())
    result.notes.append(
        f"estimated {issues.num_issues} wrong labels of {n} "
        f"(noise rate {issues.noise_rate:.1%}); flagged: {flagged_txt}"
    )
    summary: dict[str, Any] = {
        "method": opts.method,
        "probs": opts.probs,
        "num_label_issues": issues.num_issues,
        "noise_rate": issues.noise_rate,
        "n": n,
        "splits": per_split,
        "warnings": [w.split(":")[0] for w in issues.warnings],
        "stats": issues.stats,
    }
    if pool.true_labels is not None:
        det = detection.detection_metrics(
            ~issues.flagged, issues.scores, pool.labels, pool.true_labels
        )
        summary["detection"] = det
        if det["n_noisy"]:
            result.notes.append(
                f"against the known true labels: precision {_fmt(det['precision'])}, "
                f"recall {_fmt(det['recall'])}, F1 {_fmt(det['f1'])}, "
                f"AUROC {_fmt(det['auroc'])} ({det['n_noisy']} labels are wrong)"
            )
    top = [r for r in rows if r["flagged"]][: opts.sheet_size] or rows[: opts.sheet_size]
    if sheet is not None:
        contact_sheet.save_sheet(Path(sheet), top)
        summary["sheet"] = str(sheet)
        result.notes.append(f"contact sheet: {sheet} ({len(top)} suspects)")
    if html is not None:
        page = contact_sheet.render_html(
            top, f"Suspected wrong labels: {path.name}", result.warnings + result.notes
        )
        artifacts.atomic_write_text(Path(html), page)
        summary["html"] = str(html)
        result.notes.append(f"page: {html}")
    result.summary = summary
    return result


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"
