"""The fast text encoder against the plain 77-token CoOp forward: features and ctx gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nlp_cli import artifacts, clip_model
from nlp_cli.prompt import (
    PromptLearner,
    learner_from_artifact,
    plain_text_features,
    prompt_text_features,
    shared_prefix_len,
    text_features,
)

NAMES = ["cat", "golden retriever", "x", "sea lion with a hat"]


@pytest.fixture(scope="module")
def tiny():
    model = clip_model.build_tiny(seed=1)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def vit_b16_text():
    """A randomly initialised text tower of ViT-B/16's size (width 512, 12 layers, 8 heads)."""
    model = clip_model.build_tiny(
        seed=2, embed_dim=512, transformer_width=512, transformer_layers=12, vision_width=64
    )
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _compare(model, learner):
    plain = plain_text_features(model, learner)
    w = torch.randn(plain.shape, generator=torch.Generator().manual_seed(3))
    (g_plain,) = torch.autograd.grad((F.normalize(plain, dim=-1) * w).sum(), learner.ctx)
    fast = text_features(model, learner)
    (g_fast,) = torch.autograd.grad((F.normalize(fast, dim=-1) * w).sum(), learner.ctx)
    assert fast.shape == plain.shape
    assert (fast - plain).abs().max().item() <= 1e-4
    assert g_fast.abs().max().item() > 0
    assert (g_fast - g_plain).abs().max().item() <= 1e-4
    return fast


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_fast_equals_plain_tiny(tiny, position, csc):
    g = torch.Generator().manual_seed(0)
    learner = PromptLearner(tiny, NAMES, n_ctx=6, csc=csc, position=position, generator=g)
    _compare(tiny, learner)


def test_fast_equals_plain_word_init(tiny):
    learner = PromptLearner(tiny, NAMES, ctx_init="a photo of a")
    assert learner.n_ctx == 4
    _compare(tiny, learner)


@pytest.mark.parametrize("position,csc", [("end", False), ("middle", True)])
def test_fast_equals_plain_vit_b16_sized(vit_b16_text, position, csc):
    g = torch.Generator().manual_seed(0)
    learner = PromptLearner(
        vit_b16_text, NAMES[:3], n_ctx=16, csc=csc, position=position, generator=g
    )
    _compare(vit_b16_text, learner)


def test_shared_prefix_lengths(tiny):
    assert shared_prefix_len(PromptLearner(tiny, NAMES, n_ctx=6)) == 7
    assert shared_prefix_len(PromptLearner(tiny, NAMES, n_ctx=6, position="middle")) == 4
    assert shared_prefix_len(PromptLearner(tiny, NAMES, n_ctx=6, position="front")) == 0
    assert shared_prefix_len(PromptLearner(tiny, NAMES, n_ctx=6, csc=True)) == 0


def test_no_weight_gradients_even_for_trainable_weights():
    model = clip_model.build_tiny(seed=4)
    learner = PromptLearner(model, NAMES, n_ctx=4)
    text_features(model, learner).sum().backward()
    assert learner.ctx.grad is not None
    assert all(p.grad is None for p in model.parameters())


def test_prompt_artifact_roundtrip(tmp_path, tiny_clip):
    loaded = clip_model.load(str(tiny_clip))
    learner = PromptLearner(loaded.model, NAMES, n_ctx=4, position="middle")
    meta = {
        "model": loaded.identity,
        "classnames": NAMES,
        "prompt": {"n_ctx": 4, "csc": False, "position": "middle", "ctx_init": None},
    }
    art = artifacts.load(
        artifacts.save(tmp_path / "p.safetensors", "prompt", {"ctx": learner.ctx}, meta)
    )
    rebuilt = learner_from_artifact(loaded.model, art)
    assert torch.equal(rebuilt.ctx, learner.ctx)
    feats = prompt_text_features(loaded.model, art)
    ref = F.normalize(plain_text_features(loaded.model, learner), dim=-1)
    assert torch.allclose(feats, ref, atol=1e-5)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(len(NAMES)))


@pytest.mark.parametrize("n", [1, 7, 300])
def test_encode_texts_truncated_equals_encode_text(tiny_clip, n):
    """The hand prompts go through the first (max EOT + 1) positions only: the same features as
    CLIP's own 77-position encode_text."""
    import torch

    from nlp_cli import clip_model

    model = clip_model.load(str(tiny_clip)).model
    texts = [f"a photo of a {'very ' * (i % 9)}class {i}." for i in range(n)]
    fast = clip_model.encode_texts(model, texts, chunk=128)
    with torch.no_grad():
        plain = model.encode_text(clip_model.tokenize(texts)).float()
    assert fast.shape == plain.shape
    assert torch.allclose(fast, plain, atol=1e-5, rtol=1e-5)


def test_ctx_init_makes_one_shared_context_even_with_csc(tiny):
    """CoOp: initial words give one shared context (CSC only shapes the random init), and the
    context length is CoOp's word count."""
    shared = PromptLearner(tiny, NAMES, ctx_init="a photo of a", csc=True)
    assert shared.ctx.dim() == 2 and shared.ctx.shape[0] == 4 and not shared.csc
    random_csc = PromptLearner(tiny, NAMES, n_ctx=4, csc=True)
    assert random_csc.ctx.shape[:2] == (len(NAMES), 4) and random_csc.csc
