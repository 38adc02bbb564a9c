"""`--compile`: the step's text encoder through torch.compile equals the eager one, and a
compiler that is missing or fails leaves the run eager, with one warning and the same bits.

The compiled tests use a one-layer CLIP (compiling is the slow part: one graph, forward and
backward, shared by every compiled test here through the compile cache).
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import make_features

from nlp_cli import clip_model
from nlp_cli import train as lib
from nlp_cli.errors import UsageError
from nlp_cli.prompt import PromptLearner, plain_text_features, text_features_many

NAMES = [f"class {chr(97 + i)}" for i in range(5)]  # make_features' names: one packing for all
HAS_COMPILER = any(shutil.which(c) for c in ("g++", "c++", "clang++"))
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="torch.compile needs a C++ compiler")
# Compiled and eager kernels may sum in another order: a few fp32 rounding steps apart,
# relative to the largest entry.
TOL = 1e-5


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    """A one-layer tiny CLIP saved as a checkpoint, and a features file made with it."""
    root = tmp_path_factory.mktemp("compile")
    ckpt = clip_model.save_checkpoint(
        clip_model.build_tiny(seed=0, transformer_layers=1), root / "clip.pt", fp16=False
    )
    feats = make_features(root / "feats.safetensors", ckpt, n_classes=len(NAMES), n_train=20)
    return clip_model.load(str(ckpt)), feats


def _steps(model, encode, n: int = 3):
    """n SGD steps (momentum 0.9) of CE on fixed features: losses, ctx gradients, final ctx."""
    learner = PromptLearner(model, NAMES, n_ctx=4, generator=torch.Generator().manual_seed(0))
    optim = torch.optim.SGD([learner.ctx], lr=0.002, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(16, model.text_projection.shape[1], generator=g), dim=-1)
    y = torch.randint(len(NAMES), (16,), generator=g)
    losses, grads = [], []
    for _ in range(n):
        text = F.normalize(encode(model, [learner])[0].float(), dim=-1)
        loss = F.cross_entropy(100.0 * x @ text.T, y)
        optim.zero_grad()
        loss.backward()
        losses.append(loss.detach())
        grads.append(learner.ctx.grad.clone())
        optim.step()
    return torch.stack(losses), grads, learner.ctx.detach().clone()


def test_compiles_step_auto():
    assert lib.compiles_step("auto", "cuda") and lib.compiles_step("auto", "cuda:1", 64, 1)
    assert not lib.compiles_step("auto", "cpu")
    big, long = lib.CPU_COMPILE_WIDTH, lib.CPU_COMPILE_STEPS
    assert lib.compiles_step("auto", "cpu", big, long)
    assert not lib.compiles_step("auto", "cpu", big - 1, long)
    assert not lib.compiles_step("auto", "cpu", big, long - 1)
    assert lib.compiles_step("on", "cpu") and not lib.compiles_step("off", "cuda", big, long)


def test_auto_trains_eager_on_a_short_cpu_run(one_layer):
    loaded, feats = one_layer
    result = lib.train_prompt(lib.load_data(feats), lib.make_config(epochs=1), loaded=loaded)
    assert result.config.compile == "auto" and result.info["step"] == "eager"


@needs_compiler
@pytest.mark.slow
def test_compiled_step_equals_eager_and_the_plain_encoder(one_layer):
    loaded, _ = one_layer
    encode = lib.StepEncoder(True, "cpu")
    assert encode.compiled
    got = _steps(loaded.model, encode)
    assert encode.describe() == "compiled" and encode.tried == {(1, len(NAMES))}
    eager = _steps(loaded.model, text_features_many)
    # CoOp's 77-token forward, the reference the fast encoder is held to (tests/test_prompt.py)
    plain = _steps(loaded.model, lambda m, ls: plain_text_features(m, ls[0])[None])
    # From the second step on ctx differs in the last bits, and on this random tower the
    # gradient amplifies that (eager and plain disagree as much): those gradients are held to
    # twice the eager-vs-plain spread; the first one, from the same ctx, to TOL.
    spread = max(_rel(a, b) for a, b in zip(eager[1], plain[1], strict=True))
    for want in (eager, plain):
        assert _rel(got[0], want[0]) <= TOL
        assert want[1][0].abs().max() > 0 and _rel(got[1][0], want[1][0]) <= TOL
        for a, b in zip(got[1][1:], want[1][1:], strict=True):
            assert _rel(a, b) <= 2 * spread
        assert _rel(got[2], want[2]) <= TOL
    start = PromptLearner(loaded.model, NAMES, n_ctx=4, generator=torch.Generator().manual_seed(0))
    assert _rel(got[2], start.ctx.detach()) > 100 * TOL  # the steps moved ctx


@needs_compiler
@pytest.mark.slow
def test_train_with_compile_on_equals_off(one_layer):
    loaded, feats = one_layer
    data = lib.load_data(feats)
    runs = {}
    for setting in ("on", "off"):
        cfg = lib.make_config(loss="dsoftmax", epochs=2, n_ctx=4, compile=setting)
        runs[setting] = lib.train_prompt(data, cfg, loaded=loaded)
    on, off = runs["on"], runs["off"]
    assert on.info["step"] == "compiled" and off.info["step"] == "eager"
    assert _rel(on.ctx, off.ctx) <= TOL
    for a, b in zip(on.history, off.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["test_acc"] == b["test_acc"]


def test_compiled_core_runs_per_chunk_and_each_chunk_is_probed(one_layer, monkeypatch):
    """Under --class-chunk the step's core (here a recording stand-in for torch.compile's) gets
    every chunk's plan, padded to one set of shapes: that set is probed once, then each chunk
    runs in the step and again in backward (checkpointed); the step equals one eager pass over
    all classes."""
    loaded, _ = one_layer
    calls: list[tuple[int, int]] = []

    def recording(fn, **kwargs):
        def compiled(model, prompts, plan):
            calls.append((plan.first, plan.classes))
            return fn(model, prompts, plan)

        return compiled

    monkeypatch.setattr(torch, "compile", recording)
    encode = lib.StepEncoder(True, "cpu", class_chunk=2)
    got = _steps(loaded.model, encode, n=1)
    chunks = [(0, 2), (2, 2), (4, 1)]
    assert encode.describe() == "compiled" and encode.tried == {(1, len(NAMES))}
    # The chunks are padded to one set of shapes, so only the first is probed.
    assert calls[:4] == chunks[:1] + chunks and sorted(calls[4:]) == chunks
    want = _steps(loaded.model, lambda m, ls: text_features_many(m, ls, 0), n=1)
    assert want[1][0].abs().max() > 0
    assert _rel(got[0], want[0]) <= TOL and _rel(got[1][0], want[1][0]) <= TOL


def _fallback_run(one_layer, monkeypatch, broken):
    loaded, feats = one_layer
    data = lib.load_data(feats)
    cfg = lib.make_config(loss="ce", epochs=2, n_ctx=4, lr=0.5, batch_size=8)
    (eager,) = lib.train_many([data], [cfg], loaded=loaded)
    monkeypatch.setattr(torch, "compile", broken)
    heard: list[str] = []
    cfg = lib.make_config(loss="ce", epochs=2, n_ctx=4, lr=0.5, batch_size=8, compile="on")
    (fell,) = lib.train_many([data], [cfg], loaded=loaded, on_warning=heard.append)
    assert len(heard) == 1 and "\n" not in heard[0], heard
    assert "torch.compile failed" in heard[0] and "the step runs eager" in heard[0]
    assert fell.info["step"].startswith("eager (torch.compile failed: RuntimeError: ")
    assert torch.equal(fell.ctx, eager.ctx)
    assert fell.history == eager.history
    return heard[0]


def test_compile_unavailable_warns_once_and_runs_eager(one_layer, monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python")

    line = _fallback_run(one_layer, monkeypatch, no_compiler)
    assert "Dynamo is not supported" in line


def test_compile_failing_on_first_call_warns_once_and_runs_eager(one_layer, monkeypatch):
    calls = []

    def compiles_to_a_failure(fn, **kwargs):
        def compiled(*args):
            calls.append(kwargs)
            raise RuntimeError("backend compiler failed: unsupported op aten.foo\nmore detail")

        return compiled

    line = _fallback_run(one_layer, monkeypatch, compiles_to_a_failure)
    assert "unsupported op aten.foo" in line and "more detail" not in line
    assert calls == [{"mode": None, "dynamic": False}]  # tried once, eager from then on


def test_cli_compile_option(cli, features, tmp_path):
    from nlp_cli import artifacts

    r = cli("train", features, "--compile", "sometimes", "--epochs", "1")
    assert r.code == 2 and "unknown --compile 'sometimes'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    out = tmp_path / "p.safetensors"
    r = cli("train", features, "--compile", "off", "--epochs", "1", "--n-ctx", "4", "--out", out)
    assert r.code == 0, r.stderr
    meta = artifacts.load(out, "prompt").meta
    assert meta["environment"]["step"] == "eager" and meta["config"]["compile"] == "off"
    assert "compile" not in meta["options"]  # how the step ran is not what it computed
    r = cli("train", features, "--epochs", "1", "--n-ctx", "4", "--out", out)
    assert r.code == 0 and "cache hit" in r.stderr


def test_sweeps_and_config_files_take_compile(tmp_path):
    from nlp_cli.stages.train import read_config

    assert "compile" in lib.TrainConfig.setting_names()  # the keys a sweep's `train:` may set
    path = tmp_path / "c.yaml"
    for text, want in (("on", "on"), ("off", "off"), ("'auto'", "auto")):
        path.write_text(f"compile: {text}\n")  # YAML 1.1 reads a bare on / off as a boolean
        assert lib.make_config(**read_config(path)).compile == want
    with pytest.raises(UsageError, match="unknown --compile 'yes please'"):
        lib.make_config(compile="yes please")
