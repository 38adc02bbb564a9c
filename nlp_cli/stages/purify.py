"""`make_partition`: a clean/noisy verdict on every training label (PromptOT, zero-shot, GMM)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nlp_cli import artifacts, detection
from nlp_cli import label_issues as cl
from nlp_cli import purify as purifiers
from nlp_cli.data import LABEL_KINDS, load_data
from nlp_cli.errors import UsageError
from nlp_cli.stages.result import StageResult

LABELSET_TENSORS = ("labels", "true_labels", "index", "transition")
# The first five are what scripts read; split and rank came with `nlp label-issues`.
REPORT_FIELDS = ["path", "given_label", "suggested_label", "score", "index", "split", "rank"]


@dataclass
class PurifyOptions:
    """A purifier by name with its options (`options` = the purifier's own, e.g. reg, solver)."""

    method: str = "ot"
    options: dict[str, Any] = field(default_factory=dict)
    prompt: Path | None = None  # a trained prompt file for the prototypes (default: hand prompt)
    model: str | None = None  # override the CLIP model recorded in the features
    device: str = "cpu"
    precision: str | None = None
    template: str | None = None  # hand prompt: None = the dataset's CoOp template; "ensemble"

    def validate(self) -> dict[str, Any]:
        """The purifier's options with its defaults filled in; one UsageError line if wrong."""
        spec = purifiers.get(self.method)
        unknown = [k for k in self.options if k not in spec.defaults]
        if unknown:
            have = ", ".join(spec.defaults) or "none"
            raise UsageError(
                f"purifier {self.method!r} has no option {unknown[0]!r} (its options: {have})"
            )
        if self.method == "ot":
            reg = self.options.get("reg", spec.defaults["reg"])
            if not reg > 0:
                raise UsageError(f"--reg must be positive, got {reg:g}")
            solver = self.options.get("solver", spec.defaults["solver"])
            if solver not in purifiers.SOLVERS:
                raise UsageError(
                    f"unknown --solver {solver!r}: choose from {', '.join(purifiers.SOLVERS)}"
                )
        return dict(self.options)


def text_prototypes(
    feats: artifacts.Artifact, loaded: Any, prompt: Path | None, template: str | None = None
):
    """Class text features: the dataset's hand prompt (or `template`), or a trained prompt's."""
    import torch

    from nlp_cli import clip_model
    from nlp_cli.prompt import prompt_text_features

    with torch.no_grad():
        if prompt is None:
            dataset = feats.meta.get("dataset")
            return clip_model.class_prototypes(loaded.model, feats.classnames, dataset, template)
        art = artifacts.load(prompt, "prompt")
        artifacts.check_compatible(art, feats, f"{art.path} and {feats.path}")
        return prompt_text_features(loaded.model, art)


def report_rows(
    result: purifiers.PartitionResult,
    labels: Any,
    index: Any,
    classnames: list[str],
    paths: list[str],
    root: str,
) -> list[dict[str, Any]]:
    """The samples flagged noisy, most suspicious (lowest score) first."""
    flagged = (~result.clean).nonzero().flatten().tolist()
    flagged.sort(key=lambda i: (float(result.scores[i]), i))
    rows = []
    for rank, i in enumerate(flagged, start=1):
        row = int(index[i])
        rel = paths[row] if row < len(paths) else ""
        rows.append(
            {
                "path": str(Path(root) / rel) if root and rel else rel,
                "given_label": classnames[int(labels[i])],
                "suggested_label": classnames[int(result.pseudo_labels[i])],
                "score": f"{float(result.scores[i]):.6g}",
                "index": row,
                "split": "train",
                "rank": rank,
            }
        )
    return rows


def write_report(path: Path, rows: list[dict[str, Any]]) -> None:
    """CSV path,given_label,suggested_label,score,index; written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=REPORT_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    artifacts.atomic_write_text(path, buf.getvalue())


def make_partition(
    labels: Path | str,
    opts: PurifyOptions | None = None,
    out: Path | None = None,
    report: Path | None = None,
    on_progress: purifiers.Progress | None = None,
) -> StageResult:
    """Purify a label set (or re-purify a partition); with `report`, also a CSV of suspects.
    `on_progress(iteration, max_iterations, error)` follows PromptOT's Sinkhorn iterations."""
    from nlp_cli import clip_model

    opts = opts or PurifyOptions()
    purifier_opts = opts.validate()
    spec = purifiers.get(opts.method)
    path = Path(labels)
    data = load_data(path, LABEL_KINDS)
    ls, feats = data.source, data.features

    upstream = {"labelset": ls.digest}
    if opts.prompt is not None:
        upstream["prompt"] = artifacts.file_digest(opts.prompt)
    options = {"method": spec.name, **purifier_opts}
    if opts.template is not None:
        options["template"] = opts.template
    # The algorithm version is part of the key: a partition that an older purifier made is
    # recomputed, not served.
    version = {"algorithm_version": purifiers.ALGORITHM_VERSION}
    key = artifacts.cache_key("partition", upstream, {**options, **version})
    target = (
        Path(out)
        if out is not None
        else artifacts.default_out("partition", f"{path.stem}-{opts.method}", key)
    )
    artifacts.check_output(target, [path, opts.prompt])
    if report is not None:
        artifacts.check_output(report, [path, target, opts.prompt], what="--report")
    if report is None and artifacts.cached(target, key, "partition"):
        meta = artifacts.read_meta(target)
        trust = meta.get("label_issues") or {}
        summary = {
            "method": opts.method,
            "detection": meta.get("detection"),
            "num_label_issues": trust.get("num_label_issues"),
        }
        return StageResult(target, summary, cache_hit=True, warnings=trust.get("warnings", []))

    result = StageResult(target)
    loaded = clip_model.load_for(
        feats.meta, override=opts.model, device=opts.device, precision=opts.precision, image=False
    )
    text = text_prototypes(feats, loaded, opts.prompt, opts.template)
    given, true = data.labels, data.true_labels
    # The stored (float16) features: the purifiers upcast them a chunk at a time.
    x, text = data.train_features, text.float().cpu()
    verdict = purifiers.purify(
        opts.method, x, text, given, loaded.logit_scale, on_progress=on_progress, **purifier_opts
    )
    if verdict.info.get("converged") is False:
        result.notes.append(
            f"Sinkhorn stopped after {verdict.info['iterations']} iterations "
            f"(marginal error {verdict.info['marginal_error']:.2g})"
        )
    det = detection.detection_metrics(verdict.clean, verdict.scores, given, true)
    probs = purifiers.class_probs(x, text, loaded.logit_scale)
    trust = cl.find_label_issues(probs, given, x.float())
    result.warnings += trust.warnings
    result.notes.append(
        f"confident learning estimates {trust.num_issues} wrong labels of {len(given)} "
        f"(noise rate {trust.noise_rate:.1%})"
    )
    result.notes.append(
        f"{opts.method}: {det['n_flagged']} of {len(given)} labels flagged as noisy"
    )
    if det["n_noisy"]:
        result.notes.append(
            f"noisy-label detection: precision {_fmt(det['precision'])}, "
            f"recall {_fmt(det['recall'])}, F1 {_fmt(det['f1'])}, "
            f"AUROC {_fmt(det['auroc'])} ({det['n_noisy']} labels are wrong)"
        )
    if report is not None:
        paths = (feats.meta.get("paths") or {}).get("train") or []
        rows = report_rows(
            verdict, given, data.index, feats.classnames, paths, feats.meta.get("root") or ""
        )
        write_report(Path(report), rows)
        result.notes.append(
            f"report: {report} ({len(rows)} suspected wrong labels, training split only; "
            "`nlp label-issues` checks every split)"
        )

    info = {k: v for k, v in verdict.info.items() if k not in ("method", "options")}
    meta = {
        "model": feats.model,
        "dataset": feats.meta.get("dataset"),
        "classnames": feats.classnames,
        "options": options,
        "upstream": {"labelset": ls.ref(), "features": feats.ref()},
        "noise": ls.meta.get("noise"),
        "method": spec.name,
        "purifier": {"name": spec.name, **verdict.info.get("options", {}), **info, **version},
        "detection": det,
        "label_issues": {"num_label_issues": trust.num_issues, "warnings": trust.warnings},
        "key": key,
    }
    if opts.prompt is not None:
        meta["upstream"]["prompt"] = artifacts.load(opts.prompt, "prompt").ref()
    tensors = {k: ls.tensors[k] for k in LABELSET_TENSORS if k in ls.tensors}
    tensors.update(
        clean=verdict.clean.bool(),
        pseudo_labels=verdict.pseudo_labels.long(),
        scores=verdict.scores.float(),
    )
    artifacts.save(target, "partition", tensors, meta)
    result.summary = {
        "method": spec.name,
        "detection": det,
        "purifier": info,
        "num_label_issues": trust.num_issues,
    }
    return result


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"
