"""Registry names for option help and completion, written out so that `nlp --help` and TAB
need not import the registries' modules (and torch with them).

tests/test_cli_start.py holds each tuple equal to its registry, so they cannot drift.
"""

LOSSES = (
    "ce", "mae", "gce", "dsoftmax", "ls", "logitnorm", "logitclip", "nce", "bootstrap",
    "bootstrap-hard", "logitclip-code", "square", "select", "nlprompt",
)  # fmt: skip
PURIFIERS = ("ot", "zeroshot", "gmm", "cleanlab")
# `nlp corrupt --human`: CIFAR-10N's label sets, then CIFAR-100N's (datasets.cifar.human_sets()).
HUMAN_LABELS = ("aggre", "random1", "random2", "random3", "worst", "noisy")
COMPILE = ("auto", "on", "off")  # train.COMPILE
