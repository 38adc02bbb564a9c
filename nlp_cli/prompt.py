"""CoOp's prompt learner and the plain 77-token text encoder it is checked against."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nlp_cli import clip_model
from nlp_cli.errors import UsageError

POSITIONS = ("end", "middle", "front")


class PromptLearner(nn.Module):
    """Learnable context vectors around each class name, as in CoOp.

    ctx has shape [n_ctx, width] (shared) or [C, n_ctx, width] (class-specific, csc).
    The class name's tokens sit at the end, middle or front of the context.
    """

    def __init__(
        self,
        model: Any,
        classnames: list[str],
        n_ctx: int = 16,
        ctx_init: str | None = None,
        csc: bool = False,
        position: str = "end",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"class token position must be one of {POSITIONS}")
        width = model.ln_final.weight.shape[0]
        # CoOp: ctx and the frozen token embeddings live in the dtype CLIP computes in (fp16
        # under its half layout), while token_embedding itself stays fp32.
        dtype = model.dtype
        device = model.token_embedding.weight.device
        names = [c.replace("_", " ") for c in classnames]
        n_cls = len(names)

        if ctx_init:
            from nlp_cli.templates import ctx_init_words

            # CoOp counts the context in words (`len(ctx_init.split(" "))`) and takes that many
            # token embeddings after [SOS]; a word of several BPE tokens leaves its other tokens
            # in the frozen suffix, as there (checkpoint interop depends on the count).
            init_words, n_ctx = ctx_init_words(ctx_init)
            with torch.no_grad():
                tokens = clip_model.tokenize([init_words], model).to(device)
                emb = model.token_embedding(tokens)
            ctx = emb[0, 1 : 1 + n_ctx].clone().to(dtype)
            # CoOp (trainers/coop.py): initial words make one shared context; CSC applies only
            # to the random initialisation
            csc = False
            prefix_text = init_words
        else:
            shape = (n_cls, n_ctx, width) if csc else (n_ctx, width)
            # Drawn in fp32 whatever the dtype: the same seed gives the same (rounded) context.
            ctx = torch.empty(shape, dtype=torch.float32)
            nn.init.normal_(ctx, std=0.02, generator=generator)
            ctx = ctx.to(device, dtype)
            prefix_text = " ".join(["X"] * n_ctx)

        self.ctx = nn.Parameter(ctx)
        self.n_ctx = n_ctx
        self.n_cls = n_cls
        self.csc = csc
        self.position = position
        self.name_lens = [len(clip_model.bpe_encode(model, n)) for n in names]
        longest = len(clip_model.bpe_encode(model, prefix_text)) + max(self.name_lens, default=0)
        longest += 3
        positions = clip_model.context_length(model)
        if longest > positions:  # [SOS] … "." [EOT]: CLIP's text tower holds 77 positions
            raise UsageError(
                f"the prompt needs {longest} tokens ({n_ctx} context, the longest class name "
                f"{max(self.name_lens)}), more than the text tower's {positions}: "
                "use a smaller --n-ctx"
            )
        texts = [f"{prefix_text} {n}." for n in names]
        self.register_buffer("tokenized", clip_model.tokenize(texts, model).to(device))
        with torch.no_grad():
            embedding = model.token_embedding(self.tokenized).to(dtype)
        # Frozen parts of every prompt: [SOS] and everything after the context.
        self.register_buffer("token_prefix", embedding[:, :1, :].clone())
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :, :].clone())

    def class_ctx(self) -> torch.Tensor:
        """Context as [C, n_ctx, width], whether shared or class-specific."""
        if self.ctx.dim() == 2:
            return self.ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        return self.ctx

    def forward(self) -> torch.Tensor:
        """Prompt token embeddings, [C, 77, width]."""
        ctx = self.class_ctx()
        prefix, suffix = self.token_prefix, self.token_suffix
        if self.position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        prompts = []
        half = self.n_ctx // 2
        for i, name_len in enumerate(self.name_lens):
            cls_i = suffix[i : i + 1, :name_len]
            rest_i = suffix[i : i + 1, name_len:]
            ctx_i = ctx[i : i + 1]
            if self.position == "middle":
                parts = [prefix[i : i + 1], ctx_i[:, :half], cls_i, ctx_i[:, half:], rest_i]
            else:
                parts = [prefix[i : i + 1], cls_i, ctx_i, rest_i]
            prompts.append(torch.cat(parts, dim=1))
        return torch.cat(prompts, dim=0)


def plain_text_features(model: Any, learner: PromptLearner) -> torch.Tensor:
    """CoOp's text encoder over all 77 positions (the reference): [C, embed_dim], not normalised.

    On an open_clip model, open_clip's text forward over all its positions, from the prompts.
    """
    return clip_model.encode_prompts(model, learner(), learner.tokenized)


def _layer_norm(ln: Any, x: torch.Tensor) -> torch.Tensor:
    # CLIP's LayerNorm runs in float32 whatever the weights' dtype.
    w, b = ln.weight.detach().float(), ln.bias.detach().float()
    return F.layer_norm(x.float(), w.shape, w, b, ln.eps).to(x.dtype)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor, runs: int):
    """x @ weightᵀ + bias, where x's rows are `runs` equal blocks, one per prompt.

    Each block is padded with zero rows to a multiple of 4: a CPU GEMM may take another kernel
    (and round differently) for a few rows, or for a block that straddles its row tiling, so
    without the padding prompt r's rows could differ in the last bit between encoding it alone
    and in a batch. With it, x86 MKL gives the same bits either way (tests/test_multirun.py).
    """
    shape = x.shape
    rows = x.reshape(runs, -1, shape[-1])
    m = rows.shape[1]
    pad = -m % 4
    if pad:
        rows = F.pad(rows, (0, 0, 0, pad))
    b = None if bias is None else bias.detach()
    out = F.linear(rows.reshape(-1, shape[-1]), weight.detach(), b)
    out = out.reshape(runs, m + pad, -1)
    if pad:
        out = out[:, :m]
    return out.reshape(*shape[:-1], out.shape[-1])


def _qkv(blk: Any, x: torch.Tensor, heads: int, runs: int) -> tuple[torch.Tensor, ...]:
    """Queries, keys and values of `x` [B, T, W] as [B, heads, T, W/heads]."""
    attn = blk.attn
    qkv = _linear(attn.in_proj_weight, attn.in_proj_bias, x, runs)
    b, t, w = x.shape
    return tuple(
        part.reshape(b, t, heads, w // heads).transpose(1, 2) for part in qkv.chunk(3, dim=-1)
    )


def _attend(
    blk: Any, q, k, v, mask: torch.Tensor | None, runs: int, causal: bool = False
) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    b, h, t, d = out.shape
    out = out.transpose(1, 2).reshape(b, t, h * d)
    proj = blk.attn.out_proj
    return _scaled(blk, "ls_1", _linear(proj.weight, proj.bias, out, runs))


def _mlp(blk: Any, x: torch.Tensor, runs: int) -> torch.Tensor:
    fc, proj = blk.mlp.c_fc, blk.mlp.c_proj
    h = _linear(fc.weight, fc.bias, _layer_norm(blk.ln_2, x), runs)
    # the block's own activation: QuickGELU in OpenAI's CLIP, GELU or QuickGELU in open_clip's
    return _scaled(blk, "ls_2", _linear(proj.weight, proj.bias, blk.mlp.gelu(h), runs))


def _scaled(blk: Any, name: str, x: torch.Tensor) -> torch.Tensor:
    """open_clip's LayerScale after attention (ls_1) or the MLP (ls_2), where a block has one."""
    ls = getattr(blk, name, None)
    return x if ls is None or isinstance(ls, nn.Identity) else ls(x)


def shared_prefix_len(learner: PromptLearner) -> int:
    """Leading positions identical in every class's prompt: [SOS] plus the context before the
    class name (all of it at the end, the first half in the middle); 0 for class-specific ctx."""
    if learner.csc:
        return 0
    if learner.position == "end":
        return 1 + learner.n_ctx
    if learner.position == "middle":
        return 1 + learner.n_ctx // 2
    return 0


def text_features(model: Any, learner: PromptLearner) -> torch.Tensor:
    """The same features as plain_text_features, [C, embed_dim], computed cheaply.

    Exact savings (SPEC §6): positions after a prompt's EOT are never read by a causal encoder,
    so the per-token layers run only on each class's tokens up to its own EOT (packed, no
    padding); a prefix shared by all prompts has the same hidden states in every class, so it
    runs once and the class suffixes attend to its keys and values; the last layer runs only at
    the EOT position; the frozen weights are detached, so only ctx gets gradients. A text tower
    these savings do not hold for (clip_model.fast_text: non-causal, pooling elsewhere than at
    the EOT token) runs plain_text_features instead.
    """
    return text_features_many(model, [learner])[0]


def check_batchable(learners: Sequence[PromptLearner]) -> None:
    """Refuse prompts that cannot share one encoder pass (other classes, length or layout)."""
    first = learners[0]
    for other in learners[1:]:
        same = (
            other.csc == first.csc
            and other.position == first.position
            and other.n_ctx == first.n_ctx
            and other.tokenized.shape == first.tokenized.shape
            and torch.equal(other.tokenized, first.tokenized)
        )
        if not same:
            raise ValueError(
                "prompts encoded together need the same class names, context length and layout"
            )


def text_features_many(
    model: Any, learners: Sequence[PromptLearner], core: Callable[..., torch.Tensor] | None = None
) -> torch.Tensor:
    """text_features of R prompts over the same classes in one encoder pass: [R, C, embed_dim].

    The R×C class suffixes go through each layer as one packed batch; each prompt's shared
    prefix runs once and only its own classes attend to it. Prompt r's rows depend on prompt
    r's ctx alone, so a loss summed over the R prompts gives each ctx its own gradient.
    `core` replaces `encode_packed` (the same function under torch.compile, say).
    """
    if not learners:
        raise ValueError("no prompts to encode")
    check_batchable(learners)
    if not clip_model.fast_text(model):
        return torch.stack([plain_text_features(model, learner) for learner in learners])
    plan = pack_plan(learners[0], len(learners))
    prompts = torch.cat([learner()[:, : plan.length] for learner in learners])
    return (core or encode_packed)(model, prompts, plan)


@dataclass(frozen=True)
class PackPlan:
    """Where each prompt's tokens sit in the packed encoder batch; a function of the class
    names and the layout alone (the same every step), so the encoder's shapes never depend on
    data: `valid_at` lists the packed suffix positions, `eot_at` each row's EOT among them."""

    runs: int
    classes: int
    length: int
    prefix: int
    valid_at: torch.Tensor
    eot_at: torch.Tensor
    mask: torch.Tensor
    eot_mask: torch.Tensor


def pack_plan(learner: PromptLearner, runs: int) -> PackPlan:
    """The packing of `runs` prompts laid out as `learner` (see PackPlan)."""
    n_cls = learner.n_cls
    eot = learner.tokenized.argmax(dim=-1)
    device = eot.device
    length = int(eot.max()) + 1
    p = min(shared_prefix_len(learner), int(eot.min()))
    s = length - p
    rows = (eot - p).to(device).repeat(runs)
    # Suffix position j of row (run, class) is computed iff it is at or before that class's EOT.
    valid = torch.arange(s, device=device)[None, :] <= rows[:, None]
    mask = torch.ones(s, p + s, dtype=torch.bool, device=device)
    mask[:, p:] = torch.ones(s, s, dtype=torch.bool, device=device).tril()
    return PackPlan(
        runs=runs,
        classes=n_cls,
        length=length,
        prefix=p,
        valid_at=valid.flatten().nonzero().flatten(),
        eot_at=torch.cumsum(valid.sum(dim=1), dim=0) - 1,
        mask=mask,
        eot_mask=mask[rows][:, None, None],
    )


def encode_packed(model: Any, prompts: torch.Tensor, plan: PackPlan) -> torch.Tensor:
    """The text tower on R·C prompt embeddings [R·C, length, width] packed as `plan` says:
    [R, C, embed_dim]. Every shape here follows from the plan, none from tensor values."""
    n_runs, n_cls, p = plan.runs, plan.classes, plan.prefix
    blocks = list(model.transformer.resblocks)
    heads = blocks[0].attn.num_heads
    x = prompts + model.positional_embedding[: plan.length].detach().to(prompts.dtype)
    _, _, width = x.shape
    s = plan.length - p
    valid_at, eot_at, mask = plan.valid_at, plan.eot_at, plan.mask
    # The prefix gets zero rows up to a multiple of 4; under causal attention they never reach
    # a real position, and batched attention then rounds each prompt's prefix as it would alone.
    hp = F.pad(x[::n_cls, :p], (0, 0, 0, -p % 4)) if p else None

    def packed(t: torch.Tensor) -> torch.Tensor:
        # [R·C, s, …] → the valid positions only, [V, …]
        return t.flatten(0, 1).index_select(0, valid_at)

    def heads_of(t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, heads, width // heads).transpose(1, 2)

    def padded(t: torch.Tensor) -> torch.Tensor:
        out = t.new_zeros(n_runs * n_cls * s, t.shape[-1])
        return out.index_copy(0, valid_at, t).reshape(n_runs * n_cls, s, t.shape[-1])

    def per_class(t: torch.Tensor) -> torch.Tensor:
        # [R, heads, p, d] → [R·C, heads, p, d]: every class of run r sees run r's prefix.
        return t[:, None].expand(-1, n_cls, -1, -1, -1).flatten(0, 1)

    hv = packed(x[:, p:])
    runs = n_runs
    for i, blk in enumerate(blocks):
        attn = blk.attn
        w_in, b_in = attn.in_proj_weight, attn.in_proj_bias
        last = i == len(blocks) - 1
        a = _layer_norm(blk.ln_1, hv)
        if last:
            kv = _linear(w_in[width:], b_in[width:], a, runs)
            q = _linear(w_in[:width], b_in[:width], a[eot_at], runs)[:, None]
        else:
            qkv = padded(_linear(w_in, b_in, a, runs))
            q, kv = qkv[..., :width], qkv[..., width:]
        k, v = (heads_of(t) for t in (padded(kv) if last else kv).chunk(2, dim=-1))
        if hp is not None:
            qp, kp, vp = _qkv(blk, _layer_norm(blk.ln_1, hp), heads, runs)
            k = torch.cat([per_class(kp[:, :, :p]), k], dim=2)
            v = torch.cat([per_class(vp[:, :, :p]), v], dim=2)
        if last:
            att = _attend(blk, heads_of(q), k, v, plan.eot_mask, runs)
            h = hv[eot_at][:, None] + att
            h = h + _mlp(blk, h, runs)
            final = _layer_norm(model.ln_final, h[:, 0])
            out = _linear(model.text_projection.T, None, final, runs)
            return out.reshape(n_runs, n_cls, -1)
        hv = hv + packed(_attend(blk, heads_of(q), k, v, mask, runs))
        hv = hv + _mlp(blk, hv, runs)
        if hp is not None:
            hp = hp + _attend(blk, qp, kp, vp, None, runs, True)
            hp = hp + _mlp(blk, hp, runs)
    raise ValueError("the text transformer has no layers")


def learner_from_artifact(
    model: Any, artifact: Any, classnames: list[str] | None = None
) -> PromptLearner:
    """A PromptLearner rebuilt from a prompt artifact's `prompt` metadata and `ctx` tensor."""
    from nlp_cli.errors import ArtifactError

    cfg = artifact.meta.get("prompt")
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{artifact.path} records no prompt configuration (meta 'prompt')")
    ctx = artifact.tensors["ctx"]
    try:
        learner = PromptLearner(
            model,
            classnames if classnames is not None else artifact.classnames,
            n_ctx=int(cfg.get("n_ctx", ctx.shape[-2])),
            ctx_init=cfg.get("ctx_init") or None,
            csc=bool(cfg.get("csc", False)),
            position=str(cfg.get("position", "end")),
        )
    except ValueError as e:
        raise ArtifactError(f"{artifact.path}: bad prompt configuration ({e})") from e
    if tuple(learner.ctx.shape) != tuple(ctx.shape):
        raise ArtifactError(
            f"{artifact.path}: ctx has shape {tuple(ctx.shape)}, its configuration implies "
            f"{tuple(learner.ctx.shape)}"
        )
    with torch.no_grad():
        learner.ctx.copy_(ctx.to(learner.ctx.dtype))
    return learner


@torch.no_grad()
def prompt_text_features(model: Any, artifact: Any) -> torch.Tensor:
    """L2-normalised class prototypes [C, embed_dim] of a trained prompt artifact."""
    feats = text_features(model, learner_from_artifact(model, artifact)).float()
    return feats / feats.norm(dim=-1, keepdim=True)
