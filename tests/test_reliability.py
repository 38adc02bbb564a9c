"""Bad input, faults and interrupted work: every failure is one line, local and recoverable.

docs/RELIABILITY.md lists each case with the test that holds it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import make_features
from PIL import Image
from safetensors.torch import save_file

from nlp_cli import __version__, artifacts, clip_model, datasets
from nlp_cli.embed import EmbedOptions, embed
from nlp_cli.errors import ArtifactError, NlpError

REPO = Path(__file__).resolve().parents[1]


def rewrite(src: Path, dst: Path, tensors=None, **meta_changes) -> Path:
    """Copy an artifact with some tensors and metadata replaced (None deletes a key).

    Written without `artifacts.save`, which refuses the NaN tensors some cases need.
    """
    art = artifacts.load(src)
    t = dict(art.tensors) | (tensors or {})
    meta = {k: v for k, v in art.meta.items() if k not in ("kind", "schema", "nlp_version")}
    for k, v in meta_changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    return save_unchecked(dst, art.kind, t, meta)


def save_unchecked(path: Path, kind: str, tensors: dict, meta: dict) -> Path:
    """An artifact as `artifacts.save` writes it, but without its checks (e.g. for NaN)."""
    full = {"kind": kind, "schema": artifacts.SCHEMA, "nlp_version": __version__, **meta}
    encoded = {k: json.dumps(v, sort_keys=True) for k, v in full.items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), encoded)
    return Path(path)


def make_labelset(path: Path, features: Path, flip: int = 5, classnames=None) -> Path:
    """A label set over all training samples of `features` with the first `flip` labels wrong."""
    f = artifacts.load(features, "features")
    true = f.tensors["train.labels"]
    labels = true.clone()
    labels[:flip] = (labels[:flip] + 1) % len(f.classnames)
    meta = {
        "model": f.model,
        "dataset": f.meta["dataset"],
        "classnames": classnames or f.classnames,
        "options": {},
        "upstream": {"features": f.ref()},
    }
    tensors = {"labels": labels, "true_labels": true, "index": torch.arange(len(true))}
    return artifacts.save(path, "labelset", tensors, meta)


def raw_meta(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata())


def load_raw(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# --- the bad-input table: each builder returns the arguments of one failing command ------------

Builder = Callable[[Path, Path, Path, Path], list]


def _with_features(mutate: Callable[[dict], dict]) -> Builder:
    def build(tmp, feats, labels, clip):
        art = artifacts.load(feats)
        bad = rewrite(feats, tmp / "bad-feats.safetensors", mutate(dict(art.tensors)))
        ref = {"kind": "features", "path": str(bad), "digest": artifacts.file_digest(bad)}
        pointing = rewrite(labels, tmp / "l2.safetensors", upstream={"features": ref})
        return ["analyze-grad", pointing, "--model", clip]

    return build


def _nan(t):
    x = t["train.features"].clone()
    x[3, 2] = float("nan")
    return {"train.features": x}


def _inf(t):
    x = t["test.features"].clone()
    x[0, 0] = float("inf")
    return {"test.features": x}


def _nan_view(t):
    views = t["train.features"][None].repeat(2, 1, 1).clone()
    views[1, 7, 0] = float("nan")
    return {"train.views": views}


def _labels_with(tmp, src, **tensors):
    art = artifacts.load(src)
    return rewrite(src, tmp / "bad-labels.safetensors", dict(art.tensors) | tensors)


def _truncated(tmp, feats, labels, clip):
    data = labels.read_bytes()
    (tmp / "t.safetensors").write_bytes(data[: len(data) // 2])
    return ["analyze-grad", tmp / "t.safetensors"]


def _random_bytes(tmp, feats, labels, clip):
    (tmp / "r.safetensors").write_bytes(bytes(torch.randint(0, 256, (4096,)).tolist()))
    return ["analyze-grad", tmp / "r.safetensors"]


def _text_file(tmp, feats, labels, clip):
    (tmp / "notes.txt").write_text("not an artifact\n")
    return ["analyze-grad", tmp / "notes.txt"]


def _plain_safetensors(tmp, feats, labels, clip):
    save_file({"labels": torch.zeros(3, dtype=torch.long)}, str(tmp / "plain.safetensors"))
    return ["analyze-grad", tmp / "plain.safetensors"]


def _other_schema(tmp, feats, labels, clip):
    meta = raw_meta(labels) | {"schema": "99"}
    save_file(load_raw(labels), str(tmp / "s.safetensors"), meta)
    return ["analyze-grad", tmp / "s.safetensors"]


def _lacks_tensor(tmp, feats, labels, clip):
    t = load_raw(labels)
    del t["index"]
    save_file(t, str(tmp / "x.safetensors"), raw_meta(labels))
    return ["analyze-grad", tmp / "x.safetensors"]


def _label_outside(tmp, feats, labels, clip):
    y = artifacts.load(labels).tensors["labels"].clone()
    y[7] = 5
    return ["analyze-grad", _labels_with(tmp, labels, labels=y), "--model", clip]


def _negative_label(tmp, feats, labels, clip):
    y = artifacts.load(labels).tensors["true_labels"].clone()
    y[0] = -1
    return ["analyze-grad", _labels_with(tmp, labels, true_labels=y), "--model", clip]


def _ragged(tmp, feats, labels, clip):
    y = artifacts.load(labels).tensors["labels"][:-3]
    return ["analyze-grad", _labels_with(tmp, labels, labels=y), "--model", clip]


def _index_outside(tmp, feats, labels, clip):
    index = artifacts.load(labels).tensors["index"] + 1
    return ["analyze-grad", _labels_with(tmp, labels, index=index), "--model", clip]


def _upstream_changed(tmp, feats, labels, clip):
    make_features(feats, clip, seed=9)
    return ["analyze-grad", labels, "--model", clip]


def _upstream_gone(tmp, feats, labels, clip):
    feats.unlink()
    return ["analyze-grad", labels, "--model", clip]


def _other_classes_than_features(tmp, feats, labels, clip):
    names = ["v", "w", "x", "y", "z"]
    return ["analyze-grad", make_labelset(tmp / "o.safetensors", feats, classnames=names)]


def _prompt_for_other_classes(tmp, feats, labels, clip):
    prompt = artifacts.save(
        tmp / "p.safetensors",
        "prompt",
        {"ctx": torch.zeros(4, 32)},
        {"classnames": ["x", "y"], "model": artifacts.load(feats).model, "prompt": {"n_ctx": 4}},
    )
    return ["analyze-grad", labels, "--prompt", prompt, "--model", clip]


def _labelset_as_prompt(tmp, feats, labels, clip):
    return ["analyze-grad", labels, "--prompt", labels, "--model", clip]


def _another_model(tmp, feats, labels, clip):
    other = tmp / "other-clip.pt"
    clip_model.save_checkpoint(clip_model.build_tiny(seed=1), other)
    return ["analyze-grad", labels, "--model", other]


def _unwritable_out(tmp, feats, labels, clip):
    (tmp / "a-file").write_text("x")
    return ["analyze-grad", labels, "--model", clip, "--out", tmp / "a-file" / "r.json"]


# (id, builder, exit code, message pattern). Every run must leave stdout empty, print one
# `error:` line without a traceback, and leave the existing --out file untouched.
BAD_INPUTS: list[tuple[str, Builder, int, str]] = [
    ("missing-path", lambda t, f, ls, c: ["analyze-grad", t / "nope.safetensors"], 1, "no such"),
    ("folder", lambda t, f, ls, c: ["analyze-grad", t], 1, "is a folder"),
    ("truncated", _truncated, 1, "not a readable nlp artifact"),
    ("random-bytes", _random_bytes, 1, "not a readable nlp artifact"),
    ("text-file", _text_file, 1, "not a readable nlp artifact"),
    ("safetensors-not-nlp", _plain_safetensors, 1, "not an nlp artifact"),
    ("other-schema", _other_schema, 1, "schema 99"),
    ("lacks-tensor", _lacks_tensor, 1, "lacks the tensors"),
    ("wrong-kind", lambda t, f, ls, c: ["analyze-grad", f], 2, "labelset or partition"),
    ("labelset-as-prompt", _labelset_as_prompt, 1, "labelset artifact, but a prompt"),
    ("nan-features", _with_features(_nan), 1, "NaN or infinite"),
    ("inf-features", _with_features(_inf), 1, "test.features holds 1 NaN or infinite"),
    (
        "nan-views",
        _with_features(_nan_view),
        1,
        "train.views holds 1 NaN or infinite value(s), first in row 7",
    ),  # fmt: skip
    ("label-outside-classes", _label_outside, 1, "label 5 outside 0..4"),
    ("negative-label", _negative_label, 1, "label -1 outside"),
    ("ragged-labelset", _ragged, 1, "differ in length"),
    ("index-outside-features", _index_outside, 1, "index points outside"),
    ("upstream-changed", _upstream_changed, 1, "changed after"),
    ("upstream-deleted", _upstream_gone, 1, "no longer exists"),
    ("other-classes", _other_classes_than_features, 1, "other classes"),
    ("prompt-other-classes", _prompt_for_other_classes, 1, "other classes"),
    ("another-clip-model", _another_model, 1, "differs from the one the artifact was made with"),
    ("unknown-loss", lambda t, f, ls, c: ["analyze-grad", ls, "--loss", "dsoftmx"], 2, "did you"),
    ("unknown-knob", lambda t, f, ls, c: ["analyze-grad", ls, "--knob", "ce.q=1"], 2, "no knob"),
    (
        "knob-out-of-range",
        lambda t, f, ls, c: ["analyze-grad", ls, "--loss", "gce", "--knob", "gce.q=3"],
        2,
        "must lie in",
    ),  # fmt: skip
    (
        "needs-partition",
        lambda t, f, ls, c: ["analyze-grad", ls, "--loss", "nlprompt"],
        2,
        "needs a clean/noisy partition",
    ),  # fmt: skip
    ("unknown-option", lambda t, f, ls, c: ["analyze-grad", ls, "--sym", "0.2"], 2, "No such"),
    (
        "unknown-model",
        lambda t, f, ls, c: ["analyze-grad", ls, "--model", "ViT-B/61"],
        2,
        "did you mean 'ViT-B/16'",
    ),  # fmt: skip
    ("unwritable-out", _unwritable_out, 1, "cannot write"),
]


@pytest.fixture
def inputs(tmp_path, tiny_clip):
    feats = make_features(tmp_path / "feats.safetensors", tiny_clip)
    labels = make_labelset(tmp_path / "labels.safetensors", feats)
    return tmp_path, feats, labels, tiny_clip


@pytest.mark.parametrize("case,build,code,pattern", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_and_damages_nothing(cli, inputs, case, build, code, pattern):
    tmp, feats, labels, clip = inputs
    existing = tmp / "result.json"
    existing.write_text('{"earlier": "result"}\n')
    args = build(tmp, feats, labels, clip)
    if "--out" not in args:
        args += ["--out", existing]
    before = {p: p.read_bytes() for p in tmp.rglob("*") if p.is_file()}
    r = cli(*args)
    assert r.code == code, r.stderr
    assert r.stdout == ""
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert pattern in r.stderr and "Traceback" not in r.stderr
    after = {p: p.read_bytes() for p in tmp.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing damaged, no temporary files left


def _map_file(tmp: Path, text: str) -> Path:
    (tmp / "map.yaml").write_text(text)
    return tmp / "map.yaml"


def _one_class(tmp, feats, labels, clip):
    return ["corrupt", make_features(tmp / "one.safetensors", clip, n_classes=1), "--sym", "0.2"]


def _corrupt_nan(tmp, feats, labels, clip):
    art = artifacts.load(feats)
    return ["corrupt", rewrite(feats, tmp / "nan.safetensors", _nan(dict(art.tensors)))]


def _a_prompt(tmp, feats, labels, clip):
    p = artifacts.save(tmp / "p.safetensors", "prompt", {"ctx": torch.zeros(4, 32)}, {})
    return ["purify", p]


def _purify_other_prompt(tmp, feats, labels, clip):
    args = _prompt_for_other_classes(tmp, feats, labels, clip)
    return ["purify", *args[1:]]


# The same contract for `nlp corrupt` and `nlp purify`.
STAGE_INPUTS: list[tuple[str, Builder, int, str]] = [
    ("sym-above-one", lambda t, f, ls, c: ["corrupt", f, "--sym", "1.2"], 2,
     "--sym must lie in [0, 1), got 1.2"),
    ("sym-negative", lambda t, f, ls, c: ["corrupt", f, "--sym=-0.1"], 2, "must lie in [0, 1)"),
    ("pair-one", lambda t, f, ls, c: ["corrupt", f, "--pair", "1"], 2, "must lie in [0, 1)"),
    ("pair-nan", lambda t, f, ls, c: ["corrupt", f, "--pair", "nan"], 2, "got nan"),
    ("two-noise-types", lambda t, f, ls, c: ["corrupt", f, "--sym", "0.2", "--pair", "0.2"], 2,
     "choose one noise type"),
    ("no-clean-sample-left", lambda t, f, ls, c: ["corrupt", f, "--sym", "0.99"], 2,
     "leaves no clean sample"),
    ("few-shots-no-clean-left", lambda t, f, ls, c: ["corrupt", f, "--shots", "1", "--pair",
     "0.9"], 2, "leaves no clean sample"),
    ("one-class", _one_class, 2, "at least 2 classes"),
    ("shots-zero", lambda t, f, ls, c: ["corrupt", f, "--shots", "0"], 2, "--shots must be"),
    ("rate-without-map", lambda t, f, ls, c: ["corrupt", f, "--sym", "0.2", "--rate", "0.5"], 2,
     "--rate only applies to --map"),
    ("map-unknown-class", lambda t, f, ls, c: ["corrupt", f, "--map", _map_file(t,
     '"class x": "class a"')], 2, "unknown class"),
    ("map-to-itself", lambda t, f, ls, c: ["corrupt", f, "--map", _map_file(t,
     '"class a": "class a"')], 2, "mapped to itself"),
    ("map-not-a-mapping", lambda t, f, ls, c: ["corrupt", f, "--map", _map_file(t, "- a\n")], 2,
     "expected a non-empty mapping"),
    ("map-missing", lambda t, f, ls, c: ["corrupt", f, "--map", t / "none.yaml"], 2,
     "cannot read it"),
    ("labelset-as-features", lambda t, f, ls, c: ["corrupt", ls], 1,
     "labelset artifact, but a features is expected"),
    ("corrupt-nan-features", _corrupt_nan, 1, "NaN or infinite"),
    ("corrupt-empty-stdin", lambda t, f, ls, c: ["corrupt"], 2, "no feature cache given"),
    ("unknown-purifier", lambda t, f, ls, c: ["purify", ls, "--method", "ott"], 2,
     "unknown purifier 'ott' (did you mean 'ot'?)"),
    ("reg-zero", lambda t, f, ls, c: ["purify", ls, "--reg", "0"], 2, "--reg must be positive"),
    ("unknown-solver", lambda t, f, ls, c: ["purify", ls, "--solver", "cvx"], 2, "--solver"),
    ("features-as-labelset", lambda t, f, ls, c: ["purify", f], 1,
     "features artifact, but a labelset or partition"),
    ("prompt-as-labelset", _a_prompt, 1, "prompt artifact, but a labelset or partition"),
    ("purify-prompt-other-classes", _purify_other_prompt, 1, "other classes"),
    ("purify-upstream-changed", lambda t, f, ls, c: ["purify", *_upstream_changed(t, f, ls, c)[1:]],
     1, "changed after"),
    ("purify-unwritable-out", lambda t, f, ls, c: ["purify", *_unwritable_out(t, f, ls, c)[1:]],
     1, "cannot write"),
    ("corrupt-unwritable-out", lambda t, f, ls, c: ["corrupt", f, "--sym", "0.2", "--out",
     _unwritable_out(t, f, ls, c)[-1]], 1, "cannot write"),
]  # fmt: skip


@pytest.mark.parametrize("case,build,code,pattern", STAGE_INPUTS, ids=[c[0] for c in STAGE_INPUTS])
def test_corrupt_and_purify_refuse_bad_input(cli, inputs, case, build, code, pattern):
    test_bad_input_is_one_line_and_damages_nothing(cli, inputs, case, build, code, pattern)


def _as(cmd: str, build: Builder) -> Builder:
    """The same bad input given to another stage."""
    return lambda t, f, ls, c: [cmd, build(t, f, ls, c)[1]]


def _damaged_checkpoint(tmp, feats, labels, clip):
    (tmp / "p.st.ckpt").write_bytes(b"not a checkpoint")
    return ["train", labels, "--epochs", "1", "--resume", "--out", tmp / "p.st"]


def _init_from_other_classes(tmp, feats, labels, clip):
    prompt = _prompt_for_other_classes(tmp, feats, labels, clip)[3]
    return ["train", labels, "--epochs", "1", "--init-from", prompt]


def _eval_other_classes(tmp, feats, labels, clip):
    prompt = _prompt_for_other_classes(tmp, feats, labels, clip)[3]
    return ["eval", prompt, "--features", feats]


# The same contract for `nlp train` and `nlp eval`.
TRAIN_EVAL_INPUTS: list[tuple[str, Builder, int, str]] = [
    ("train-unknown-loss", lambda t, f, ls, c: ["train", ls, "--loss", "dsoftmx"], 2,
     "did you mean 'dsoftmax'"),
    ("train-unknown-protocol", lambda t, f, ls, c: ["train", ls, "--protocol", "dsp"], 2,
     "did you mean 'dspt'"),
    ("train-zero-epochs", lambda t, f, ls, c: ["train", ls, "--epochs", "0"], 2, "at least 1"),
    ("train-negative-lr", lambda t, f, ls, c: ["train", ls, "--lr", "-1"], 2, "--lr must be"),
    ("train-nlprompt-without-partition", lambda t, f, ls, c: ["train", f, "--loss", "nlprompt"],
     2, "needs a clean/noisy partition"),
    ("train-prompt-as-input", lambda t, f, ls, c: ["train", _a_prompt(t, f, ls, c)[1]], 1,
     "is a prompt artifact"),
    ("train-truncated-input", _as("train", _truncated), 1, "not a readable nlp artifact"),
    ("train-nan-features", _as("train", _with_features(_nan)), 1, "NaN or infinite"),
    ("train-label-outside-classes", _as("train", _label_outside), 1, "outside 0..4"),
    ("train-upstream-deleted", _as("train", _upstream_gone), 1, "no longer exists"),
    ("train-init-from-labelset", lambda t, f, ls, c: ["train", ls, "--init-from", ls], 1,
     "labelset artifact, but a prompt is expected"),
    ("train-init-from-other-classes", _init_from_other_classes, 1, "other classes"),
    ("train-damaged-checkpoint", _damaged_checkpoint, 1,
     "not a readable training checkpoint: delete it to start over"),
    ("train-unwritable-out", lambda t, f, ls, c: ["train", ls, "--out",
     _unwritable_out(t, f, ls, c)[-1]], 1, "cannot write"),
    ("train-empty-stdin", lambda t, f, ls, c: ["train"], 2, "no label set given"),
    ("eval-labelset-as-prompt", lambda t, f, ls, c: ["eval", ls], 1,
     "labelset artifact, but a prompt is expected"),
    ("eval-missing-prompt", lambda t, f, ls, c: ["eval", t / "none.st"], 1, "no such file"),
    ("eval-prompt-other-classes", _eval_other_classes, 1, "other classes"),
    ("eval-unknown-split", lambda t, f, ls, c: ["eval", "--zero-shot", f, "--split", "bogus"], 2,
     "has no bogus split"),
    ("eval-zero-shot-and-prompt", lambda t, f, ls, c: ["eval", ls, "--zero-shot", f], 2,
     "takes neither"),
    ("eval-unwritable-out", lambda t, f, ls, c: ["eval", "--zero-shot", f, "--out",
     _unwritable_out(t, f, ls, c)[-1]], 1, "cannot write"),
]  # fmt: skip


@pytest.mark.parametrize(
    "case,build,code,pattern", TRAIN_EVAL_INPUTS, ids=[c[0] for c in TRAIN_EVAL_INPUTS]
)
def test_train_and_eval_refuse_bad_input(cli, inputs, case, build, code, pattern):
    test_bad_input_is_one_line_and_damages_nothing(cli, inputs, case, build, code, pattern)


def test_the_same_command_succeeds_on_good_input(cli, inputs):
    tmp, feats, labels, clip = inputs
    r = cli("analyze-grad", labels, "--model", clip, "--out", tmp / "result.json")
    assert r.code == 0, r.stderr
    assert r.stdout.strip() == str(tmp / "result.json")


@pytest.mark.parametrize("stdin,code,pattern", [
    ("", 2, "stdin was empty"),
    ("\n \n", 2, "stdin was empty"),
    ("/no/such/labels.safetensors\n", 1, "no such file"),
    ("/x/a.safetensors\n/x/b.safetensors\n", 2, "stdin holds 2 lines"),
])  # fmt: skip
def test_stdin_faults(cli, stdin, code, pattern):
    r = cli("analyze-grad", stdin=stdin)
    assert r.code == code and r.stdout == "" and pattern in r.stderr
    assert r.stderr.count("\n") == 1


def test_no_input_from_a_terminal_is_a_usage_error(cli):
    r = cli("analyze-grad")
    assert r.code == 2 and r.stdout == "" and "pass a path, or pipe one in" in r.stderr


def test_debug_switch_shows_the_exception(cli, inputs, monkeypatch):
    from nlp_cli.cli import run

    tmp = inputs[0]
    monkeypatch.setenv("NLP_DEBUG", "1")
    with pytest.raises(ArtifactError, match="no such file"):
        run(["analyze-grad", str(tmp / "nope.safetensors")])


def test_unexpected_failure_is_still_one_line(cli, inputs, monkeypatch):
    from nlp_cli import analysis

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(analysis, "prepare", boom)
    tmp, feats, labels, clip = inputs
    r = cli("analyze-grad", labels, "--model", clip)
    assert r.code == 1 and r.stdout == ""
    assert r.stderr == "error: RuntimeError: disk on fire (set NLP_DEBUG=1 for the traceback)\n"


def test_ctrl_c_is_one_line_and_exit_130(cli, inputs, monkeypatch):
    from nlp_cli import analysis

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(analysis, "prepare", interrupted)
    r = cli("analyze-grad", inputs[2], "--model", inputs[3])
    assert r.code == 130 and r.stdout == "" and r.stderr == "error: interrupted\n"


def test_sigterm_handler_lives_only_while_a_command_runs(cli, monkeypatch):
    """`run` raises Terminated on SIGTERM while it runs and puts the old handler back after."""
    from nlp_cli.cli import output

    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def peek(*a, **k):
        seen.append(signal.getsignal(signal.SIGTERM))
        raise NlpError("stop here")

    monkeypatch.setattr(output, "input_path", peek)
    r = cli("analyze-grad")
    assert r.code == 1 and r.stderr == "error: stop here\n"
    assert callable(seen[0]) and seen[0] is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_damaged_artifact_at_out_is_replaced_not_trusted(cli, inputs):
    tmp, feats, labels, clip = inputs
    out = tmp / "r.json"
    out.write_text("{half a json")
    r = cli("analyze-grad", labels, "--model", clip, "--out", out)
    assert r.code == 0 and json.loads(out.read_text())["ce"]["noisy"]["n"] == 5


# --- datasets and embed ------------------------------------------------------------------------


def image(path: Path, color=(200, 30, 30), size=(24, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def textured(root: Path, classes: list[str], n: int) -> None:
    g = torch.Generator().manual_seed(3)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            px = torch.randint(0, 256, (18 * 22 * 3,), generator=g, dtype=torch.uint8)
            Image.frombytes("RGB", (22, 18), bytes(px.tolist())).save(root / c / f"{i}.png")


def _empty_folder(tmp):
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _classes_without_images(tmp):
    (tmp / "d" / "cat").mkdir(parents=True)
    (tmp / "d" / "dog").mkdir(parents=True)
    image(tmp / "d" / "dog" / "1.png")
    return tmp / "d"


def _empty_csv(tmp):
    (tmp / "list.csv").write_text("path,label\n")
    return tmp / "list.csv"


def _csv_missing_image(tmp):
    image(tmp / "a.png")
    (tmp / "list.csv").write_text("a.png,cat,train\nb.png,dog,test\n")
    return tmp / "list.csv"


def _not_a_csv(tmp):
    (tmp / "x.json").write_text("{}")
    return tmp / "x.json"


def _too_few_images(tmp):
    for c in ("cat", "dog"):
        for i in range(2):
            image(tmp / "d" / c / f"{i}.png")
    return tmp / "d"


DATASET_FAULTS = [
    ("empty-folder", _empty_folder, 2, "no class sub-folders"),
    ("class-without-images", _classes_without_images, 2, "class folders without images: cat"),
    ("empty-csv", _empty_csv, 2, "has no rows"),
    ("csv-missing-image", _csv_missing_image, 1, "listed images do not exist"),
    ("not-a-csv", _not_a_csv, 2, "not a CSV"),
    ("too-few-images", _too_few_images, 1, "too few for a train/val/test split"),
    ("unknown-dataset", lambda tmp: "eurosta", 2, "did you mean 'eurosat'"),
]


@pytest.mark.parametrize(
    "case,build,code,pattern", DATASET_FAULTS, ids=[c[0] for c in DATASET_FAULTS]
)
def test_bad_dataset_is_one_line(cli, tiny_clip, tmp_path, nlp_home, case, build, code, pattern):
    r = cli("embed", build(tmp_path), "--model", tiny_clip, "--root", tmp_path / "root")
    assert r.code == code, r.stderr
    assert r.stdout == "" and r.stderr.count("\n") == 1 and pattern in r.stderr
    assert not (nlp_home / "artifacts").exists()


def test_a_class_without_training_images_is_kept_with_a_warning(cli, tiny_clip, tmp_path):
    for split, classes in (("train", ["a", "b"]), ("test", ["a", "b", "c"])):
        for c in classes:
            image(tmp_path / "d" / split / c / "1.png", color=(len(c) * 40, 9, 9))
    r = cli("embed", tmp_path / "d", "--model", tiny_clip)
    assert r.code == 0, r.stderr
    assert "1 class(es) have no training image: c" in r.stderr
    art = artifacts.load(r.stdout.strip(), "features")
    assert art.classnames == ["a", "b", "c"]
    assert art.tensors["train.labels"].tolist() == [0, 1]
    assert art.tensors["test.labels"].tolist() == [0, 1, 2]


def test_embed_into_an_unwritable_folder(cli, tiny_clip, tmp_path):
    textured(tmp_path / "d" / "train", ["a", "b"], 2)
    textured(tmp_path / "d" / "test", ["a", "b"], 1)
    (tmp_path / "a-file").write_text("x")
    r = cli("embed", tmp_path / "d", "--model", tiny_clip, "--out", tmp_path / "a-file" / "f.st")
    assert r.code == 1 and r.stdout == "" and "cannot write" in r.stderr
    assert r.stderr.count("\n") == 1


@pytest.mark.parametrize("damage", [b"", b"garbage", None])
def test_a_damaged_shard_is_redone(tiny_clip, tmp_path, damage):
    textured(tmp_path / "d" / "train", ["a", "b"], 3)
    textured(tmp_path / "d" / "test", ["a", "b"], 1)
    ds = datasets.load(str(tmp_path / "d"))
    opts = EmbedOptions(shard_size=2)
    ref = artifacts.load(embed(ds, str(tiny_clip), opts, tmp_path / "ref.st").path).tensors
    out = tmp_path / "out.st"
    key = artifacts.read_meta(tmp_path / "ref.st")["key"]
    work = tmp_path / f".out.st.{key}.work"
    work.mkdir()
    good = load_raw_shard(ds, tiny_clip, opts, tmp_path)
    shard = work / "train-000000002.safetensors"
    if damage is None:  # a truncated copy of a real shard
        shard.write_bytes(good[: len(good) // 2])
    else:
        shard.write_bytes(damage)
    got = artifacts.load(embed(ds, str(tiny_clip), opts, out).path).tensors
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k])


def _shards_of_size(old: int, new: int, opts_old: EmbedOptions | None = None, raw=False):
    def make(ds, clip, work, key):
        from nlp_cli.embed import encode_shards

        opts = opts_old or EmbedOptions(shard_size=old)
        encode_shards(ds, clip_model.load(str(clip)), opts, work, key=key)
        sorted(work.glob("train-*"))[-1].unlink()  # as if interrupted before the last shard
        if raw:  # shards from before they recorded their content: no metadata
            for p in work.iterdir():
                save_file(load_raw(p), str(p))
        return new

    return make


# (id, how the work folder is left, the --shard-size of the rerun, images the rerun trusts)
SHARD_LEFTOVERS = [
    ("size-2-then-3", _shards_of_size(2, 3), 2),  # only the test shard (0..2) is the same
    ("size-3-then-2", _shards_of_size(3, 2), 2),
    ("other-views", _shards_of_size(2, 2, EmbedOptions(shard_size=2, views=1)), 0),
    ("no-record", _shards_of_size(2, 2, raw=True), 0),
]


@pytest.mark.parametrize("case,leave,trusted", SHARD_LEFTOVERS, ids=[c[0] for c in SHARD_LEFTOVERS])
def test_shards_of_another_run_are_redone_not_trusted(tiny_clip, tmp_path, case, leave, trusted):
    """Shards are trusted by their recorded split, start, count and options, not by name."""
    textured(tmp_path / "d" / "train", ["a", "b"], 3)
    textured(tmp_path / "d" / "test", ["a", "b"], 1)
    ds = datasets.load(str(tmp_path / "d"))
    ref_res = embed(ds, str(tiny_clip), EmbedOptions(shard_size=3), tmp_path / "ref.st")
    ref = artifacts.load(ref_res.path).tensors
    key = artifacts.read_meta(ref_res.path)["key"]
    out = tmp_path / "out.st"
    work = tmp_path / f".out.st.{key}.work"
    size = leave(ds, tiny_clip, work, key)
    progress: list[tuple[int, int]] = []
    opts = EmbedOptions(shard_size=size)
    res = embed(ds, str(tiny_clip), opts, out, lambda d, t: progress.append((d, t)))
    assert progress[0] == (trusted, 8)
    got = artifacts.load(res.path).tensors
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k])
    assert not work.exists()


def test_an_image_fixed_in_place_is_not_a_cache_hit(tiny_clip, tmp_path):
    """The cache key holds each image's size and mtime: fixed images give fresh features."""
    data = tmp_path / "d"
    textured(data / "train", ["a", "b"], 2)
    textured(data / "test", ["a", "b"], 1)
    first = embed(datasets.load(str(data)), str(tiny_clip), out=tmp_path / "f.st")
    before = artifacts.load(first.path).tensors["train.features"].clone()
    fixed = data / "train" / "a" / "0.png"
    assert datasets.load(str(data)).digest() == datasets.load(str(data)).digest()
    Image.new("RGB", (22, 18), (0, 200, 0)).save(fixed)  # same path, new content
    again = embed(datasets.load(str(data)), str(tiny_clip), out=tmp_path / "f.st")
    assert not again.cache_hit
    after = artifacts.load(again.path).tensors["train.features"]
    assert not torch.equal(after[0], before[0]) and torch.equal(after[1:], before[1:])
    # the same size with only the mtime changed (a copy kept its size) is a new key too
    digest = datasets.load(str(data)).digest()
    st = fixed.stat()
    os.utime(fixed, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert datasets.load(str(data)).digest() != digest


def load_raw_shard(ds, clip, opts, tmp) -> bytes:
    from nlp_cli.embed import encode_shards

    work = tmp / "shards"
    encode_shards(ds, clip_model.load(str(clip)), opts, work)
    return (work / "train-000000002.safetensors").read_bytes()


# --- downloads ---------------------------------------------------------------------------------


@pytest.fixture
def http():
    from test_download import Server

    s = Server()
    yield s
    s.close()


def test_http_404_is_one_clear_error(http, tmp_path):
    from nlp_cli.datasets import download as dl

    with pytest.raises(dl.DownloadError, match="HTTP 404"):
        dl.fetch(http.url + "/gone.zip", tmp_path / "gone.zip", progress=False, retries=1)
    assert list(tmp_path.iterdir()) == []


def test_not_an_archive_is_refused(tmp_path):
    from nlp_cli.datasets import download as dl

    (tmp_path / "a.tar.gz").write_bytes(b"<html>captive portal</html>")
    with pytest.raises(NlpError, match="neither a tar nor a zip"):
        dl.extract(tmp_path / "a.tar.gz", tmp_path / "out")


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_truncated_archive_without_checksum_fails_cleanly_and_retries(cli, http, tmp_path, fmt):
    """A server that sends a short archive (and no checksum to catch it): nothing half-done."""
    import dataclasses

    from test_download import jpeg, local, targz, zipped

    spec = datasets.get("eurosat")
    members = {f"2750/AnnualCrop/AnnualCrop_{i}.jpg": jpeg(size=(64, 64)) for i in range(40)}
    members |= {f"2750/Forest/Forest_{i}.jpg": jpeg((9, 99, 9), (64, 64)) for i in range(40)}
    data = targz(members) if fmt == "tar.gz" else zipped(members)
    name = spec.sources[0].filename
    spec = local(spec, http, {name: data[: len(data) * 2 // 3]})
    spec = dataclasses.replace(spec, sources=spec.sources[:1])
    from nlp_cli.datasets import download as dl

    root = tmp_path / "root"
    with pytest.raises(NlpError, match="truncated"):
        dl.fetch_dataset(spec, root, progress=False)
    folder = root / spec.folder
    assert not spec.present(folder)
    assert not (root / ".downloads" / name).exists()
    # The server heals: the rerun downloads afresh and completes the half-extracted folder.
    http.files[next(iter(http.files))] = data
    folder, _ = dl.fetch_dataset(spec, root, progress=False)
    assert spec.present(folder)
    assert len(list((folder / "2750" / "Forest").iterdir())) == 40


# --- interruption and concurrency ---------------------------------------------------------------


def _env(**extra) -> dict[str, str]:
    # the child computes with as many threads as this process: float sums depend on the split,
    # and the resume tests compare the two bit for bit
    threads = str(torch.get_num_threads())
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": threads, **extra}


@pytest.fixture(scope="module")
def interrupt_data(tmp_path_factory, tiny_clip):
    """A dataset of 7 shards of 2 images and its uninterrupted features (the reference)."""
    root = tmp_path_factory.mktemp("interrupt")
    textured(root / "d" / "train", ["a", "b"], 5)
    textured(root / "d" / "test", ["a", "b"], 2)
    ds = datasets.load(str(root / "d"))
    ref = embed(ds, str(tiny_clip), EmbedOptions(shard_size=2), root / "ref.st")
    return root / "d", artifacts.load(ref.path).tensors


def _embed_cmd(data: Path, clip: Path, out: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "nlp_cli", "embed", str(data), "--model", str(clip)]
    return cmd + ["--shard-size", "2"] + (["--out", str(out)] if out else [])


def _default_sigint() -> None:
    """A test run in the background ignores SIGINT, and a child would inherit that: restore it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


KILLS = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]
# SIGINT (Ctrl-C) and SIGTERM (Slurm, `timeout`, `docker stop`) unwind cleanly; SIGKILL cannot.
CLEAN_EXIT = {
    signal.SIGINT: (130, "error: interrupted"),
    signal.SIGTERM: (143, "error: terminated"),
}


@pytest.mark.parametrize("sig", KILLS, ids=[s.name for s in KILLS])
def test_embed_killed_part_way_resumes_to_the_same_features(
    interrupt_data, tiny_clip, tmp_path, sig
):
    data, ref = interrupt_data
    out = tmp_path / "f.st"
    proc = subprocess.Popen(
        _embed_cmd(data, tiny_clip, out),
        env=_env(NLP_TEST_PAUSE="0.4"),
        preexec_fn=_default_sigint,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    shards = lambda: list(tmp_path.glob(".f.st.*.work/*.safetensors"))  # noqa: E731
    _wait_for(lambda: len(shards()) >= 2, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert stdout == "" and not out.exists()
    if sig in CLEAN_EXIT:
        code, line = CLEAN_EXIT[sig]
        assert proc.returncode == code and stderr.strip().splitlines()[-1] == line, stderr
        assert "Traceback" not in stderr
        assert not list(tmp_path.rglob("*.tmp"))  # the shard being written was cleaned away
    else:
        assert proc.returncode == -signal.SIGKILL
    done_before = len(shards())
    assert 2 <= done_before < 7

    ds = datasets.load(str(data))
    progress: list[tuple[int, int]] = []
    res = embed(
        ds, str(tiny_clip), EmbedOptions(shard_size=2), out, lambda d, t: progress.append((d, t))
    )
    assert progress[0] == (2 * done_before, 14)  # resumed: the finished shards were not redone
    got = artifacts.load(res.path).tensors
    assert set(got) == set(ref)
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    assert [p.name for p in tmp_path.iterdir()] == ["f.st"]  # work folder and lock are gone


def test_two_processes_embedding_at_once_take_turns(interrupt_data, tiny_clip, tmp_path):
    """A second run started while the first holds the lock waits, then finds its artifact."""
    data, ref = interrupt_data
    out = tmp_path / "f.st"
    proc = subprocess.Popen(
        _embed_cmd(data, tiny_clip, out),
        env=_env(NLP_TEST_PAUSE="0.3"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: (tmp_path / ".f.st.lock").exists(), proc)
    second = embed(datasets.load(str(data)), str(tiny_clip), EmbedOptions(shard_size=2), out)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert stdout.strip() == str(out) and "cache hit" not in stderr  # the first did the work
    assert second.cache_hit and second.path == out  # the second waited and found it
    got = artifacts.load(out).tensors
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    assert [p.name for p in tmp_path.iterdir()] == ["f.st"]  # no work folder, lock or temp file


def test_lock_waits_for_the_holder(tmp_path):
    """A second holder blocks until the first releases; the lock file goes away after."""
    import threading

    lock = tmp_path / "x.lock"
    order = []

    def second():
        with artifacts.locked(lock):
            order.append(2)

    with artifacts.locked(lock):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append(1)
    t.join(10)
    assert order == [1, 2] and not lock.exists()


@pytest.mark.parametrize("damage", ["random-bytes", "truncated"])
def test_damaged_clip_checkpoint_is_one_line(cli, tiny_clip, tmp_path, damage):
    textured(tmp_path / "d" / "train", ["a", "b"], 2)
    textured(tmp_path / "d" / "test", ["a", "b"], 1)
    bad = tmp_path / "clip.pt"
    data = tiny_clip.read_bytes()
    bad.write_bytes(bytes(range(256)) * 64 if damage == "random-bytes" else data[: len(data) // 2])
    r = cli("embed", tmp_path / "d", "--model", bad)
    assert r.code == 1 and r.stdout == "" and "is not a loadable CLIP checkpoint" in r.stderr
    assert r.stderr.count("error:") == 1 and "Traceback" not in r.stderr


# --- nlp train: killed part-way, resumed with --resume ------------------------------------------

TRAIN_ARGS = ["--epochs", "5", "--batch-size", "20", "--n-ctx", "4", "--loss", "dsoftmax"]


@pytest.mark.parametrize("sig", KILLS, ids=[s.name for s in KILLS])
def test_train_killed_part_way_resumes_to_the_same_prompt(cli, inputs, sig):
    tmp, feats, labels, clip = inputs
    r = cli("train", labels, *TRAIN_ARGS, "--out", tmp / "ref.st")
    assert r.code == 0, r.stderr
    ref = artifacts.load(tmp / "ref.st", "prompt")

    out = tmp / "p.st"
    ckpt = tmp / "p.st.ckpt"
    cmd = [sys.executable, "-m", "nlp_cli", "train", str(labels), *TRAIN_ARGS, "--out", str(out)]
    proc = subprocess.Popen(
        cmd, env=_env(NLP_TEST_PAUSE="0.5"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=_default_sigint,
    )  # fmt: skip
    _wait_for(ckpt.exists, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert stdout == "" and not out.exists() and ckpt.exists()
    if sig in CLEAN_EXIT:
        code, line = CLEAN_EXIT[sig]
        assert proc.returncode == code and stderr.strip().splitlines()[-1] == line, stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    done = torch.load(ckpt, weights_only=True)["epoch"]
    assert 1 <= done < 5

    r = cli("train", labels, *TRAIN_ARGS, "--out", out, "--resume")
    assert r.code == 0, r.stderr
    log = " ".join(r.stderr.split())
    assert f"at epoch {done}" in log and f"epoch {done}/5 " not in log  # resumed, not redone
    got = artifacts.load(out, "prompt")
    assert torch.equal(got.tensors["ctx"], ref.tensors["ctx"])  # bit for bit
    assert got.meta["history"] == ref.meta["history"]
    assert not ckpt.exists() and not list(tmp.glob("*.tmp"))


def test_every_case_in_the_catalog_names_a_test_that_exists():
    """docs/RELIABILITY.md: each row's test (module::function[id]) is real, ≥ 30 rows."""
    import importlib
    import re

    text = (REPO / "docs" / "RELIABILITY.md").read_text()
    rows = [line for line in text.splitlines() if re.match(r"^\| \d+[a-z]? \|", line)]
    assert len(rows) >= 30
    short = {"T": "test_reliability", "P": "test_properties"}
    tables = {
        "test_bad_input_is_one_line_and_damages_nothing": BAD_INPUTS,
        "test_corrupt_and_purify_refuse_bad_input": STAGE_INPUTS,
        "test_train_and_eval_refuse_bad_input": TRAIN_EVAL_INPUTS,
        "test_bad_dataset_is_one_line": DATASET_FAULTS,
    }
    table_ids = {c[0] for t in (STAGE_INPUTS, TRAIN_EVAL_INPUTS) for c in t}
    for row in rows:
        refs = re.findall(r"`(T|P|tests/test_\w+\.py)::(\w+|…)(?:\[([^\]`]*)\])?`", row)
        ids = re.findall(r"\| `([a-z0-9-]+)`(?:, `([a-z0-9-]+)`)? \|$", row)
        assert refs or ids, row
        for mod, func, case in refs:
            name = short.get(mod) or Path(mod).stem
            if func == "…":  # the bad-input table of this file
                func = "test_bad_input_is_one_line_and_damages_nothing"
            module = importlib.import_module(name)
            assert hasattr(module, func), (row, func)
            if case and func in tables and "…" not in case:
                assert case in {c[0] for c in tables[func]}, (row, case)
        for found in ids:
            for case in filter(None, found):
                assert case in table_ids, (row, case)
