"""The stages as library functions: typed options in, a `StageResult` out.

Each function validates its options, computes the cache key and checks the cache, builds the
metadata and writes its artifact atomically. None of them prints or reads the environment:
the CLI (`nlp_cli.cli`) and the sweep (`nlp_cli.sweep`) are two front ends over them.

    from nlp_cli import stages
    labels = stages.make_labelset("feats.safetensors", stages.CorruptOptions(kind="sym", rate=0.5))
    part = stages.make_partition(labels.path)
    prompt = stages.train_prompts([part.path], stages.TrainOptions(loss="nlprompt"))[0]
    metrics = stages.evaluate(prompt.path)
"""

from nlp_cli.stages.analyze import AnalyzeOptions, analyze_gradients
from nlp_cli.stages.corrupt import CorruptOptions, make_labelset
from nlp_cli.stages.evaluate import evaluate
from nlp_cli.stages.label_issues import LabelIssueOptions, find_label_issues
from nlp_cli.stages.predict import PredictOptions, predict
from nlp_cli.stages.prepare import download, embed
from nlp_cli.stages.purify import PurifyOptions, make_partition
from nlp_cli.stages.result import StageResult
from nlp_cli.stages.train import TrainOptions, train_prompts

__all__ = [
    "AnalyzeOptions",
    "CorruptOptions",
    "LabelIssueOptions",
    "PredictOptions",
    "PurifyOptions",
    "StageResult",
    "TrainOptions",
    "analyze_gradients",
    "download",
    "embed",
    "evaluate",
    "find_label_issues",
    "make_labelset",
    "make_partition",
    "predict",
    "train_prompts",
]
