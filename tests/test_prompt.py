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


class _Inserted(torch.nn.Module):
    """token_embedding for CLIP's own encode_text: the learner's prompts (ctx inserted)."""

    def __init__(self, learner):
        super().__init__()
        self.learner = learner

    def forward(self, text):
        assert torch.equal(text, self.learner.tokenized)
        return self.learner()


def _encode_text_reference(model, learner):
    """CLIP's 77-token encode_text with the context vectors in place of the placeholder words."""
    from unittest import mock

    with mock.patch.object(model, "token_embedding", _Inserted(learner)):
        return model.encode_text(learner.tokenized)


def _features_and_grad(model, learners, weights, **kw):
    from nlp_cli.prompt import text_features_many

    feats = text_features_many(model, learners, **kw)
    loss = sum((F.normalize(f, dim=-1) * w).sum() for f, w in zip(feats, weights, strict=True))
    grads = torch.autograd.grad(loss, [learner.ctx for learner in learners])
    return feats.detach(), grads


def _rel(a, b):
    """Largest difference relative to the largest magnitude (float32 rounds at ~6e-8 of it)."""
    return ((a - b).abs().max() / b.abs().max()).item()


MANY = [f"class {'very ' * (i % 4)}number {i}" for i in range(11)]


@pytest.mark.parametrize("position,csc", [("end", False), ("middle", False), ("front", True)])
def test_chunked_equals_unchunked_and_encode_text(tiny, position, csc):
    """Classes in chunks of 4 (the last one short), two runs: the features and the ctx gradients
    equal one pass over all classes, and CLIP's own encode_text with ctx inserted."""
    learners = [
        PromptLearner(
            tiny,
            MANY,
            n_ctx=5,
            csc=csc,
            position=position,
            generator=torch.Generator().manual_seed(s),
        )
        for s in (0, 1)
    ]
    g = torch.Generator().manual_seed(3)
    weights = [torch.randn(len(MANY), 32, generator=g) for _ in learners]
    whole, g_whole = _features_and_grad(tiny, learners, weights, class_chunk=0)
    chunked, g_chunked = _features_and_grad(tiny, learners, weights, class_chunk=4)
    assert _rel(chunked, whole) <= 1e-6
    for a, b in zip(g_chunked, g_whole, strict=True):
        assert b.abs().max().item() > 0
        assert _rel(a, b) <= 1e-6
    for learner, w, f, grad in zip(learners, weights, chunked, g_chunked, strict=True):
        ref = _encode_text_reference(tiny, learner)
        (g_ref,) = torch.autograd.grad((F.normalize(ref, dim=-1) * w).sum(), learner.ctx)
        assert _rel(f, ref.detach()) <= 1e-5
        assert _rel(grad, g_ref) <= 1e-5


def test_chunked_vit_b16_sized_equals_encode_text(vit_b16_text):
    learner = PromptLearner(vit_b16_text, MANY[:6], generator=torch.Generator().manual_seed(0))
    w = [torch.randn(6, 512, generator=torch.Generator().manual_seed(1))]
    (feats,), (grad,) = _features_and_grad(vit_b16_text, [learner], w, class_chunk=4)
    whole, (g_whole,) = _features_and_grad(vit_b16_text, [learner], w, class_chunk=0)
    ref = _encode_text_reference(vit_b16_text, learner)
    (g_ref,) = torch.autograd.grad((F.normalize(ref, dim=-1) * w[0]).sum(), learner.ctx)
    assert _rel(feats, whole[0]) <= 1e-6 and _rel(grad, g_whole) <= 1e-6
    assert _rel(feats, ref.detach()) <= 1e-5 and _rel(grad, g_ref) <= 1e-5


def test_chunks_are_recomputed_in_backward(tiny, monkeypatch):
    """Under autograd a chunked pass keeps no suffix activations: each chunk's forward runs
    again in backward, one chunk at a time."""
    from nlp_cli import prompt

    calls: list[int] = []
    inner = prompt._suffix_pass
    monkeypatch.setattr(
        prompt,
        "_suffix_pass",
        lambda m, x, plan, *a: calls.append(plan.classes) or inner(m, x, plan, *a),
    )
    learner = PromptLearner(tiny, MANY, n_ctx=5)
    feats = prompt.text_features(tiny, learner, class_chunk=4)
    assert calls == [4, 4, 3]
    feats.sum().backward()
    assert sorted(calls[3:]) == [3, 4, 4]
    with torch.no_grad():
        prompt.text_features(tiny, learner, class_chunk=4)
    assert calls[6:] == [4, 4, 3]


def test_core_runs_once_per_chunk_plan(tiny):
    """A `core` given to text_features_many (the compiled encoder, say) gets each chunk with its
    own plan and only that chunk's prompts; the features are CLIP's 77-token encoder's."""
    from nlp_cli import prompt

    seen: list[tuple[int, int, int, int]] = []

    def core(model, prompts, plan):
        assert prompts.shape[1] == plan.length
        seen.append((plan.first, plan.classes, prompts.shape[0], plan.eot_at.numel()))
        return prompt.encode_packed(model, prompts, plan)

    learners = [
        PromptLearner(tiny, MANY, n_ctx=5, generator=torch.Generator().manual_seed(s))
        for s in (0, 1)
    ]
    with torch.no_grad():
        got = prompt.text_features_many(tiny, learners, 4, core=core)
        want = torch.stack([plain_text_features(tiny, learner) for learner in learners])
    # Given a core, the chunks are padded to one set of shapes: the short last chunk's prompts
    # include its last class twice more, and only its 3 real classes come out.
    assert seen == [(0, 4, 8, 8), (4, 4, 8, 8), (8, 3, 8, 8)]
    assert got.shape == want.shape and _rel(got, want) <= 1e-5


def test_uniform_chunks_have_one_set_of_shapes_and_the_same_features(tiny):
    """Issue #20: padded chunks (repeated last class, positions computed past some EOTs) all
    have one set of shapes, so a compiled encoder specialises once; their features and ctx
    gradients are CLIP's 77-token encoder's, and the padding gets no gradient."""
    from nlp_cli import prompt

    learners = [
        PromptLearner(tiny, MANY, n_ctx=5, generator=torch.Generator().manual_seed(s))
        for s in (0, 1)
    ]
    ragged = prompt.pack_plans(learners[0], 2, 4)
    plans = prompt.pack_plans(learners[0], 2, 4, uniform=True)
    assert len({p.shapes() for p in ragged}) > 1
    assert len({p.shapes() for p in plans}) == 1
    assert [(p.first, p.classes, p.rows) for p in plans] == [(0, 4, 4), (4, 4, 4), (8, 3, 4)]
    for plan, alone in zip(plans, ragged, strict=True):
        assert plan.valid_at.numel() >= alone.valid_at.numel() and plan.length >= alone.length

    got = prompt.text_features_many(tiny, learners, 4, core=prompt.encode_rows)
    w = torch.randn(got.shape, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad((F.normalize(got, dim=-1) * w).sum(), [lr.ctx for lr in learners])
    for r, learner in enumerate(learners):
        ref = plain_text_features(tiny, learner)
        (g_ref,) = torch.autograd.grad((F.normalize(ref, dim=-1) * w[r]).sum(), learner.ctx)
        assert _rel(got[r].detach(), ref.detach()) <= 1e-5 and _rel(grads[r], g_ref) <= 1e-5


def test_a_compiled_core_specialises_once_for_all_uniform_chunks(tiny):
    """torch.compile (dynamic=False) with a counting backend: the padded chunks compile one
    graph; the ragged chunks would compile one per distinct shape."""
    import torch._dynamo

    from nlp_cli import prompt

    graphs: list[int] = []

    def counting(gm, example_inputs):
        graphs.append(1)
        return gm.forward

    learner = PromptLearner(tiny, MANY, n_ctx=5)
    with torch.no_grad():
        want = prompt.text_features_many(tiny, [learner], 0)
        torch._dynamo.reset()
        core = torch.compile(prompt.encode_rows, backend=counting, dynamic=False)
        got = prompt.text_features_many(tiny, [learner], 2, core=core)
        uniform = len(graphs)
        torch._dynamo.reset()
        core = torch.compile(prompt.encode_rows, backend=counting, dynamic=False)
        for plan in prompt.pack_plans(learner, 1, 2):
            core(tiny, prompt.plan_prompts([learner], plan), plan)
        ragged = len(graphs) - uniform
        torch._dynamo.reset()
    assert uniform == 1 and ragged > 1
    assert _rel(got, want) <= 1e-5


def test_chunk_resolution():
    from nlp_cli.errors import UsageError
    from nlp_cli.prompt import CHUNK, CHUNK_ABOVE, resolve_chunk

    assert resolve_chunk(CHUNK_ABOVE, None) == CHUNK_ABOVE
    assert resolve_chunk(CHUNK_ABOVE + 1, None) == CHUNK
    assert resolve_chunk(1000, 0) == 1000
    assert resolve_chunk(1000, 64) == 64
    with pytest.raises(UsageError, match="--class-chunk"):
        resolve_chunk(10, -1)


def test_shared_prefix_is_held_once_not_per_class(tiny):
    """Issue #20: what the pass keeps for backward holds the shared [SOS][ctx] keys/values once;
    no saved per-class tensor is as large as one layer's prefix copied for every class (C·p·width),
    as the keys [C, heads, p + s, head_dim] were when the prefix was concatenated per class."""
    names = [f"c{i}" for i in range(40)]
    learner = PromptLearner(tiny, names, n_ctx=16)
    p, width = shared_prefix_len(learner), tiny.ln_final.weight.shape[0]
    sizes: list[int] = []

    def pack(t):
        if t.dim() and t.shape[0] == len(names):
            sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        feats = text_features(tiny, learner, class_chunk=0)
    plain = plain_text_features(tiny, learner)
    assert (feats - plain).abs().max().item() <= 1e-4
    assert sizes and max(sizes) < len(names) * p * width


def test_bpe_encode_builds_clip_tokenizer_once_and_matches_a_fresh_one(monkeypatch, tiny):
    """A learner over many class names builds CLIP's BPE tokenizer once (building one parses the
    gzipped merge list; once per name it dominated a run's start), and the ids are those of a
    freshly built tokenizer."""
    simple = clip_model._clip().simple_tokenizer
    built = []

    class Counting(simple.SimpleTokenizer):
        def __init__(self, *a, **k):
            built.append(1)
            super().__init__(*a, **k)

    clip_model._simple_tokenizer.cache_clear()
    monkeypatch.setattr(simple, "SimpleTokenizer", Counting)
    try:
        names = [f"class number {i}" for i in range(40)] + NAMES
        PromptLearner(tiny, names, generator=torch.Generator().manual_seed(0))
        PromptLearner(tiny, NAMES, generator=torch.Generator().manual_seed(0))
        assert len(built) == 1
        fresh = Counting()
        for text in [*NAMES, "a photo of a red on blue.", "X-ray, 3D!"]:
            assert clip_model.bpe_encode(tiny, text) == fresh.encode(text)
    finally:
        clip_model._simple_tokenizer.cache_clear()
