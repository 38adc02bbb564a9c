"""`nlp purify`: split a label set into clean and noisy samples (PromptOT, zero-shot, GMM)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import typer

from nlp_cli import artifacts, detection
from nlp_cli import purify as purifiers
from nlp_cli.cli import output
from nlp_cli.errors import ArtifactError, UsageError

LABELSET_TENSORS = ("labels", "true_labels", "index", "transition")


def text_prototypes(feats: artifacts.Artifact, loaded: Any, prompt: Path | None):
    """Class text features: the hand prompt, or a trained prompt file's context."""
    import torch

    from nlp_cli import clip_model
    from nlp_cli.prompt import prompt_text_features

    with torch.no_grad():
        if prompt is None:
            return clip_model.hand_prompt_features(loaded.model, feats.classnames)
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
    for i in flagged:
        row = int(index[i])
        rel = paths[row] if row < len(paths) else ""
        rows.append(
            {
                "path": str(Path(root) / rel) if root and rel else rel,
                "given_label": classnames[int(labels[i])],
                "suggested_label": classnames[int(result.pseudo_labels[i])],
                "score": f"{float(result.scores[i]):.6g}",
                "index": row,
            }
        )
    return rows


def write_report(path: Path, rows: list[dict[str, Any]]) -> None:
    """CSV path,given_label,suggested_label,score,index; written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=["path", "given_label", "suggested_label", "score", "index"]
    )
    writer.writeheader()
    writer.writerows(rows)
    artifacts.atomic_write_text(path, buf.getvalue())


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def register(app: typer.Typer) -> None:
    """Add the `purify` command."""

    @app.command("purify")
    def purify(
        labels: Path | None = typer.Argument(
            None, help="Label set from `nlp corrupt` (default: a path piped on stdin)."
        ),
        method: str = typer.Option(
            "ot", "--method", help=f"Purifier: {', '.join(purifiers.list_purifiers())}."
        ),
        reg: float = typer.Option(0.01, "--reg", help="Entropic regularisation of PromptOT."),
        solver: str = typer.Option(
            "torch", "--solver", help="Sinkhorn for PromptOT: torch (fast) or pot (POT's)."
        ),
        prompt: Path | None = typer.Option(
            None, "--prompt", help="Trained prompt file for the prototypes (default: hand prompt)."
        ),
        model: str | None = typer.Option(
            None, "--model", help="CLIP model name or checkpoint (default: the features' model)."
        ),
        report: Path | None = typer.Option(
            None, "--report", help="Also write the suspected wrong labels as CSV, worst first."
        ),
        out: Path | None = typer.Option(
            None, "--out", help="Output file (default under NLP_HOME)."
        ),
        as_json: bool = typer.Option(False, "--json", help="JSON summary on stdout."),
    ) -> None:
        """Clean/noisy partition of the training labels, with scores and pseudo-labels."""
        from nlp_cli import clip_model

        spec = purifiers.get(method)
        if method == "ot":
            if reg <= 0:
                raise UsageError(f"--reg must be positive, got {reg:g}")
            if solver not in purifiers.SOLVERS:
                raise UsageError(
                    f"unknown --solver {solver!r}: choose from {', '.join(purifiers.SOLVERS)}"
                )
            opts: dict[str, Any] = {"reg": reg, "solver": solver}
        else:
            if reg != 0.01 or solver != "torch":
                raise UsageError(f"--reg and --solver apply to --method ot, not {method}")
            opts = {}
        path = output.input_path(labels, "label set")
        ls = artifacts.load(path, ("labelset", "partition"))
        feats = artifacts.load_upstream(ls, "features", "features")
        artifacts.check_compatible(ls, feats, f"{ls.path} and its features {feats.path}")
        index = ls.tensors["index"].long()
        train = feats.tensors["train.features"]
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= train.shape[0]):
            raise ArtifactError(f"{ls.path}: its index points outside {feats.path}'s train split")

        upstream = {"labelset": ls.digest}
        if prompt is not None:
            upstream["prompt"] = artifacts.file_digest(prompt)
        options = {"method": spec.name, **opts}
        key = artifacts.cache_key("partition", upstream, options)
        target = out or artifacts.default_out("partition", f"{path.stem}-{method}", key)
        artifacts.ensure_writable(target)
        if report is None and artifacts.cached(target, key, "partition"):
            output.info(f"cache hit: {target}")
            meta = artifacts.read_meta(target)
            output.emit(target, {"method": method, "detection": meta.get("detection")}, as_json)
            return

        loaded = clip_model.load_for(feats.meta, override=model)
        text = text_prototypes(feats, loaded, prompt)
        given = ls.tensors["labels"].long()
        true = ls.tensors["true_labels"].long()
        result = purifiers.purify(
            method, train[index].float(), text, given, loaded.logit_scale, **opts
        )
        if result.info.get("converged") is False:
            output.info(
                f"Sinkhorn stopped after {result.info['iterations']} iterations "
                f"(marginal error {result.info['marginal_error']:.2g})"
            )
        det = detection.detection_metrics(result.clean, result.scores, given, true)
        n, flagged = len(given), det["n_flagged"]
        output.info(f"{method}: {flagged} of {n} labels flagged as noisy")
        if det["n_noisy"]:
            output.info(
                f"noisy-label detection: precision {_fmt(det['precision'])}, "
                f"recall {_fmt(det['recall'])}, F1 {_fmt(det['f1'])}, "
                f"AUROC {_fmt(det['auroc'])} ({det['n_noisy']} labels are wrong)"
            )
        if report is not None:
            paths = (feats.meta.get("paths") or {}).get("train") or []
            rows = report_rows(
                result, given, index, feats.classnames, paths, feats.meta.get("root") or ""
            )
            write_report(report, rows)
            output.info(f"report: {report} ({len(rows)} suspected wrong labels)")

        info = {k: v for k, v in result.info.items() if k not in ("method", "options")}
        meta = {
            "model": feats.model,
            "dataset": feats.meta.get("dataset"),
            "classnames": feats.classnames,
            "options": options,
            "upstream": {"labelset": ls.ref(), "features": feats.ref()},
            "noise": ls.meta.get("noise"),
            "method": spec.name,
            "purifier": {"name": spec.name, **result.info.get("options", {}), **info},
            "detection": det,
            "key": key,
        }
        if prompt is not None:
            meta["upstream"]["prompt"] = artifacts.load(prompt, "prompt").ref()
        tensors = {k: ls.tensors[k] for k in LABELSET_TENSORS if k in ls.tensors}
        tensors.update(
            clean=result.clean.bool(),
            pseudo_labels=result.pseudo_labels.long(),
            scores=result.scores.float(),
        )
        artifacts.save(target, "partition", tensors, meta)
        output.emit(target, {"method": spec.name, "detection": det, "purifier": info}, as_json)
