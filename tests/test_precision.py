"""Half precision: the resolvers, CLIP's half layout, and every CLIP path in fp16 and bf16.

The fast text encoder is held to the plain 77-token forward run in the same dtype. Both round
differently from fp32, so they are compared within a few units of the dtype's epsilon, relative
to the largest entry: 4 eps for features (3.9e-3 in fp16, 3.1e-2 in bf16) and 8 eps for ctx
gradients, which also round through the backward pass. Measured here: at most 1.4 eps for
features and 2.8 eps for gradients, no more than either path differs from fp32.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nlp_cli import artifacts, clip_model, datasets
from nlp_cli.embed import EmbedOptions, embed
from nlp_cli.errors import NlpError, UsageError
from nlp_cli.prompt import (
    PromptLearner,
    learner_from_artifact,
    plain_text_features,
    prompt_text_features,
    text_features,
    text_features_many,
)

NAMES = ["cat", "golden retriever", "x", "sea lion with a hat"]
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}
FEATURE_EPS, GRAD_EPS = 4, 8
# A half model against the fp32 one (not the same computation: a looser sanity bound).
NEAR_FP32_EPS = 8


@pytest.fixture(scope="module")
def fp32_model():
    """Two heads and three layers, so the per-head reshapes and a middle layer are exercised."""
    model = clip_model.build_tiny(seed=1, transformer_width=128, transformer_layers=3)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def models(fp32_model):
    return {
        prec: clip_model.to_precision(copy.deepcopy(fp32_model), prec) for prec in ("fp16", "bf16")
    }


def _features_and_grad(fn, model, learner):
    out = fn(model, learner)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (grad,) = torch.autograd.grad((F.normalize(out.float(), dim=-1) * w).sum(), learner.ctx)
    return out, grad


def _assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, units: int) -> None:
    """Max |got - want| relative to max |want| is within `units` of dtype's epsilon."""
    err = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
    assert err <= units * torch.finfo(dtype).eps, err


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert clip_model.resolve_device("auto") == "cuda"
    assert clip_model.resolve_device(None) == "cuda"
    assert clip_model.resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert clip_model.resolve_device("auto") == "cpu"
    assert clip_model.resolve_device(torch.device("cpu")) == "cpu"
    with pytest.raises(NlpError, match="CUDA is not available"):
        clip_model.resolve_device("cuda")
    with pytest.raises(UsageError, match="unknown device 'gpu'"):
        clip_model.resolve_device("gpu")


def test_resolve_precision():
    assert clip_model.resolve_precision(None, "cuda") == "fp16"
    assert clip_model.resolve_precision(None, "cuda:0") == "fp16"
    assert clip_model.resolve_precision("auto", torch.device("cpu")) == "fp32"
    for prec in clip_model.PRECISIONS:
        assert clip_model.resolve_precision(prec, "cpu") == prec
    with pytest.raises(UsageError, match="did you mean 'bf16'"):
        clip_model.resolve_precision("bf61", "cpu")
    assert clip_model.weight_dtype("amp") == torch.float32
    assert clip_model.weight_dtype("bf16") == torch.bfloat16


def test_autocast_and_grad_scaler():
    assert not torch.is_autocast_enabled("cpu")
    with clip_model.autocast("cpu", "fp16"):
        assert not torch.is_autocast_enabled("cpu")
    with clip_model.autocast("cpu", "amp"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert not clip_model.grad_scaler("cpu", "amp").is_enabled()
    assert not clip_model.grad_scaler("cuda", "fp16").is_enabled()


def test_half_layout_is_clips_own(fp32_model):
    ours = clip_model.to_precision(copy.deepcopy(fp32_model), "fp16")
    theirs = copy.deepcopy(fp32_model)
    clip_model._clip().model.convert_weights(theirs)
    want = theirs.state_dict()
    for name, t in ours.state_dict().items():
        assert t.dtype == want[name].dtype, name
        assert torch.equal(t, want[name]), name
    assert ours.dtype == torch.float16 and ours.token_embedding.weight.dtype == torch.float32
    bf = clip_model.to_precision(copy.deepcopy(fp32_model), "bf16")
    for name, t in bf.state_dict().items():
        half = want[name].dtype == torch.float16
        assert t.dtype == (torch.bfloat16 if half else want[name].dtype), name
    back = clip_model.to_precision(bf, "amp")
    assert all(p.dtype == torch.float32 for p in back.parameters())


def test_random_ctx_in_fp32_is_the_old_draw_and_half_is_its_rounding(fp32_model, models):
    want = torch.empty(4, 6, 128)
    torch.nn.init.normal_(want, std=0.02, generator=torch.Generator().manual_seed(5))
    for prec, model in [("fp32", fp32_model), *models.items()]:
        g = torch.Generator().manual_seed(5)
        learner = PromptLearner(model, NAMES, n_ctx=6, csc=True, generator=g)
        dtype = clip_model.weight_dtype(prec)
        assert learner.ctx.dtype == dtype
        assert learner.token_prefix.dtype == learner.token_suffix.dtype == dtype
        assert torch.equal(learner.ctx, want.to(dtype))


@pytest.mark.parametrize("prec", ["fp16", "bf16"])
@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_fast_equals_plain_in_half(models, prec, position, csc):
    model = models[prec]
    g = torch.Generator().manual_seed(0)
    learner = PromptLearner(model, NAMES, n_ctx=6, csc=csc, position=position, generator=g)
    plain, g_plain = _features_and_grad(plain_text_features, model, learner)
    fast, g_fast = _features_and_grad(text_features, model, learner)
    assert fast.dtype == plain.dtype == g_fast.dtype == HALF[prec]
    assert fast.shape == plain.shape and torch.isfinite(fast).all()
    assert g_fast.abs().max() > 0
    _assert_close(fast, plain, HALF[prec], FEATURE_EPS)
    _assert_close(g_fast, g_plain, HALF[prec], GRAD_EPS)


@pytest.mark.parametrize("prec", ["fp16", "bf16"])
def test_fast_equals_plain_in_half_word_init(models, prec):
    model = models[prec]
    learner = PromptLearner(model, NAMES, ctx_init="a photo of a")
    assert learner.ctx.dtype == HALF[prec]
    plain, g_plain = _features_and_grad(plain_text_features, model, learner)
    fast, g_fast = _features_and_grad(text_features, model, learner)
    _assert_close(fast, plain, HALF[prec], FEATURE_EPS)
    _assert_close(g_fast, g_plain, HALF[prec], GRAD_EPS)


@pytest.mark.parametrize("prec", ["fp16", "bf16"])
@pytest.mark.parametrize("position", ["end", "front"])
def test_many_runs_in_half_equal_plain_per_run(models, prec, position):
    model = models[prec]
    learners = [
        PromptLearner(
            model, NAMES, n_ctx=4, position=position, generator=torch.Generator().manual_seed(s)
        )
        for s in range(3)
    ]
    many = text_features_many(model, learners)
    w = torch.randn(many.shape, generator=torch.Generator().manual_seed(3))
    (F.normalize(many.float(), dim=-1) * w).sum().backward()
    for r, learner in enumerate(learners):
        plain = plain_text_features(model, learner)
        (g_plain,) = torch.autograd.grad(
            (F.normalize(plain.float(), dim=-1) * w[r]).sum(), learner.ctx
        )
        _assert_close(many[r], plain, HALF[prec], FEATURE_EPS)
        _assert_close(learner.ctx.grad, g_plain, HALF[prec], GRAD_EPS)


def test_amp_fast_equals_plain_under_autocast(fp32_model):
    learner = PromptLearner(fp32_model, NAMES, n_ctx=6, generator=torch.Generator().manual_seed(0))
    assert learner.ctx.dtype == torch.float32
    with clip_model.autocast("cpu", "amp"):
        plain, g_plain = _features_and_grad(plain_text_features, fp32_model, learner)
        fast, g_fast = _features_and_grad(text_features, fp32_model, learner)
    assert g_fast.dtype == torch.float32
    _assert_close(fast, plain, torch.bfloat16, FEATURE_EPS)
    _assert_close(g_fast, g_plain, torch.bfloat16, GRAD_EPS)


@pytest.mark.parametrize("prec", ["fp16", "bf16"])
def test_clip_load_in_half_on_cpu(tmp_path, tiny_clip, prec):
    full = clip_model.load(str(tiny_clip))
    half = clip_model.load(str(tiny_clip), "cpu", precision=prec)
    assert half is not full and half.precision == prec and full.precision == "fp32"
    assert half.dtype == HALF[prec] and full.dtype == torch.float32
    assert half.identity == full.identity
    assert half.model.token_embedding.weight.dtype == torch.float32
    assert clip_model.load(str(tiny_clip), "cpu", precision=prec) is half

    protos = clip_model.hand_prompt_features(half.model, NAMES)
    want = clip_model.hand_prompt_features(full.model, NAMES)
    assert protos.dtype == torch.float32 and torch.isfinite(protos).all()
    _assert_close(protos, want, HALF[prec], NEAR_FP32_EPS)

    learner = PromptLearner(full.model, NAMES, n_ctx=4, position="middle")
    meta = {
        "model": full.identity,
        "classnames": NAMES,
        "prompt": {"n_ctx": 4, "csc": False, "position": "middle", "ctx_init": None},
    }
    art = artifacts.load(
        artifacts.save(tmp_path / "p.safetensors", "prompt", {"ctx": learner.ctx}, meta)
    )
    again = clip_model.load_for(art.meta, device="cpu", precision=prec)
    assert again is half
    rebuilt = learner_from_artifact(half.model, art)
    assert rebuilt.ctx.dtype == HALF[prec]
    assert torch.equal(rebuilt.ctx, learner.ctx.to(HALF[prec]))
    feats = prompt_text_features(half.model, art)
    ref = prompt_text_features(full.model, art)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    _assert_close(feats, ref, HALF[prec], NEAR_FP32_EPS)


def test_load_refuses_an_unknown_precision(tiny_clip):
    with pytest.raises(UsageError, match="unknown precision"):
        clip_model.load(str(tiny_clip), precision="half")
    with pytest.raises(UsageError, match="unknown precision"):
        clip_model.load_for({"model": {"path": str(tiny_clip)}}, precision="half")


def _images(root, n: int = 2) -> None:
    g = torch.Generator().manual_seed(0)
    for c in ("cat", "dog"):
        for split in ("train", "test"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (40 * 30 * 3,), generator=g, dtype=torch.uint8)
                img = Image.frombytes("RGB", (40, 30), bytes(pixels.tolist()))
                img.save(root / split / c / f"{i}.png")


@pytest.mark.parametrize("prec", ["fp16", "bf16", "amp"])
def test_embed_in_half(tmp_path, tiny_clip, prec):
    _images(tmp_path / "data")
    ds = datasets.load(str(tmp_path / "data"))
    opts = EmbedOptions(views=1, precision=prec)
    got = artifacts.load(embed(ds, str(tiny_clip), opts, out=tmp_path / "h.safetensors").path)
    ref_opts = EmbedOptions(views=1)
    ref = artifacts.load(embed(ds, str(tiny_clip), ref_opts, out=tmp_path / "f.safetensors").path)
    assert got.meta["model"] == ref.meta["model"] and got.meta["key"] == ref.meta["key"]
    # amp on CPU autocasts to bf16; the features are stored in fp16 at every precision.
    dtype = HALF.get(prec, torch.bfloat16)
    for name in ("train.features", "test.features", "train.views"):
        assert got.tensors[name].dtype == torch.float16
        assert torch.isfinite(got.tensors[name]).all()
        _assert_close(got.tensors[name], ref.tensors[name], dtype, FEATURE_EPS)


@pytest.mark.parametrize("precision", ["fp16", "bf16", "amp"])
def test_cli_train_and_eval_run_at_each_precision_on_cpu(cli, features, tmp_path, precision):
    from nlp_cli import artifacts

    out = tmp_path / f"p-{precision}.safetensors"
    r = cli(
        "train", features, "--epochs", "2", "--n-ctx", "4", "--precision", precision, "--out", out
    )
    assert r.code == 0, r.stderr
    assert f"training on cpu ({precision})" in r.stderr
    prompt = artifacts.load(out, "prompt")
    assert prompt.tensors["ctx"].dtype == torch.float32
    assert torch.isfinite(prompt.tensors["ctx"]).all()
    assert prompt.meta["options"]["precision"] == precision
    assert all(0.0 <= h["test_acc"] <= 1.0 for h in prompt.meta["history"])
    r = cli("eval", out, "--precision", precision, "--json")
    assert r.code == 0, r.stderr
    assert f"ran on cpu ({precision})" in r.stderr


def test_default_device_is_auto_and_said_on_stderr(cli, features, tmp_path):
    r = cli("train", features, "--epochs", "1", "--n-ctx", "4", "--out", tmp_path / "p.safetensors")
    assert r.code == 0, r.stderr
    assert "training on cpu (fp32)" in r.stderr  # no CUDA here: auto is the CPU, fp32 as CoOp


def test_fp16_training_moves_the_context(cli, features, tmp_path):
    """CoOp's fp16 trains a half-precision ctx with plain SGD: it must still learn."""
    from nlp_cli import artifacts

    a = tmp_path / "a.safetensors"
    b = tmp_path / "b.safetensors"
    args = ("--epochs", "3", "--n-ctx", "4", "--lr", "0.05")
    assert cli("train", features, *args, "--precision", "fp16", "--out", a).code == 0
    assert cli("train", features, *args, "--precision", "fp32", "--out", b).code == 0
    ha = artifacts.load(a, "prompt").meta["history"]
    hb = artifacts.load(b, "prompt").meta["history"]
    assert ha[-1]["loss"] < ha[0]["loss"]
    assert abs(ha[-1]["loss"] - hb[-1]["loss"]) < 0.1 * hb[-1]["loss"]


def test_bf16_on_a_cpu_without_it_warns_once(cli, features, tmp_path, monkeypatch):
    assert clip_model.native_bf16("cuda") and clip_model.bf16_warning("cuda", "amp") is None
    for native in (False, True):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda n=native: n)
        assert clip_model.native_bf16("cpu") is native
        assert clip_model.bf16_warning("cpu", "fp32") is None
        assert clip_model.bf16_warning("cpu", "fp16") is None
        for prec in ("amp", "bf16"):
            line = clip_model.bf16_warning("cpu", prec)
            assert (line is None) is native
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    args = ("--epochs", "1", "--n-ctx", "4", "--precision", "amp", "--seed", "1,2")
    outs = ("--out", tmp_path / "a.safetensors", "--out", tmp_path / "b.safetensors")
    r = cli("train", features, *args, *outs)
    assert r.code == 0, r.stderr
    assert r.stderr.count("no instructions for") == 1  # two runs, one line
