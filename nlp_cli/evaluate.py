"""Accuracy of a trained prompt (or of the hand prompt, zero-shot) on a cached split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nlp_cli import artifacts, clip_model, metrics
from nlp_cli.errors import UsageError
from nlp_cli.prompt import prompt_text_features

LAST_K = 5


def last_k_mean(history: list[dict[str, Any]], k: int = LAST_K) -> float | None:
    """Mean test accuracy over the last k epochs of a history (DSPT's reported number)."""
    accs = [h.get("test_acc") for h in history[-k:]]
    accs = [a for a in accs if a is not None]
    return sum(accs) / len(accs) if accs else None


def evaluate(
    prompt: Path | None = None,
    features: Path | None = None,
    split: str = "test",
    model: str | None = None,
    device: str = "cpu",
    precision: str | None = None,
    template: str | None = None,
    untrained: int | None = None,
) -> dict[str, Any]:
    """Metrics of a prompt file on a split of its own features (or `features`); zero-shot with
    the hand prompt when `prompt` is None; with `untrained = SEED`, of a random 16-token context
    as CoOp initialises it (N(0, 0.02²), nlp train's init for that seed) and never trained: the
    baseline that shows what training added."""
    if prompt is None and features is None:
        raise UsageError("nothing to evaluate: give a prompt file or --zero-shot FEATURES")
    prompt_art = artifacts.load(prompt, "prompt") if prompt is not None else None
    if features is not None:
        feats = artifacts.load(features, "features")
    else:
        feats = artifacts.load_upstream(prompt_art, "features", "features")
    if prompt_art is not None:
        artifacts.check_compatible(prompt_art, feats, f"{prompt_art.path} and {feats.path}")
    key = f"{split}.features"
    if key not in feats.tensors:
        have = sorted({k.split(".")[0] for k in feats.tensors if k.endswith(".features")})
        raise UsageError(f"{feats.path} has no {split} split (it has: {', '.join(have)})")
    # the features are cached: the text tower is all this needs
    loaded = clip_model.load_for(feats.meta, model, device=device, precision=precision, image=False)
    with torch.no_grad():
        if untrained is not None:
            from nlp_cli.prompt import PromptLearner, text_features

            learner = PromptLearner(
                loaded.model, feats.classnames, generator=torch.Generator().manual_seed(untrained)
            ).to(device)
            text = text_features(loaded.model, learner).float()
            text = text / text.norm(dim=-1, keepdim=True)
        elif prompt_art is None:
            dataset = feats.meta.get("dataset")
            text = clip_model.class_prototypes(loaded.model, feats.classnames, dataset, template)
        else:
            text = prompt_text_features(loaded.model, prompt_art)
        text = text.to(device)
        x = feats.tensors[key].to(device).float()
        x = x / x.norm(dim=-1, keepdim=True)
        scores = x @ text.T
        pred = scores.argmax(dim=1).cpu()
        top5 = scores.topk(min(5, scores.shape[1]), dim=1).indices.cpu()
    target = feats.tensors[f"{split}.labels"].long()
    result = metrics.summary(pred, target, feats.classnames)
    acc5 = float((top5 == target[:, None]).any(dim=1).float().mean()) if len(target) else 0.0
    result["acc5"] = acc5
    # CLIP_benchmark's layout beside nlp's own keys: a `metrics` object, dataset, model, task
    result["metrics"] = {
        "acc1": result["acc1"],
        "acc5": acc5,
        "mean_per_class_recall": result["mean_per_class_recall"],
    }
    result["dataset"] = feats.meta.get("dataset")
    result["model"] = (feats.meta.get("model") or {}).get("name")
    if untrained is not None:
        result["task"] = "untrained_prompt_classification"
    elif prompt_art is None:
        result["task"] = "zeroshot_classification"
    else:
        result["task"] = "prompt_classification"
    result["split"] = split
    if untrained is not None:
        result["untrained_seed"] = untrained
    elif prompt_art is None:
        from nlp_cli import templates

        result["template"] = template or templates.template_for(feats.meta.get("dataset"))
    result["features"] = str(feats.path.resolve())
    result["prompt"] = str(prompt_art.path.resolve()) if prompt_art is not None else None
    if prompt_art is not None:
        result["last5_mean_acc"] = last_k_mean(prompt_art.meta.get("history") or [])
        result["loss"] = prompt_art.meta.get("loss")
        # how the prompt was made: its resolved training config and what ran it
        for key in ("protocol", "config", "environment"):
            if key in prompt_art.meta:
                result[key] = prompt_art.meta[key]
    return result
