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
        # Frozen parts of every prompt: [SOS] and everything after the context, each looked up
        # alone (the [C, 77, width] embedding of all tokens would be ~3 GB at 21 000 classes).
        with torch.no_grad():
            for name, tokens in (
                ("token_prefix", self.tokenized[:, :1]),
                ("token_suffix", self.tokenized[:, 1 + n_ctx :]),
            ):
                self.register_buffer(name, model.token_embedding(tokens).to(dtype))

    def class_ctx(self) -> torch.Tensor:
        """Context as [C, n_ctx, width], whether shared or class-specific."""
        if self.ctx.dim() == 2:
            return self.ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        return self.ctx

    def forward(self) -> torch.Tensor:
        """Prompt token embeddings, [C, 77, width]."""
        return self.prompt_rows(slice(None), self.tokenized.shape[1])

    def prompt_rows(self, classes: slice, length: int) -> torch.Tensor:
        """The first `length` token embeddings of the prompts of `classes`, [C', length, width]
        (forward()[classes, :length] without building the rest)."""
        ctx = self.class_ctx()[classes]
        prefix, suffix = self.token_prefix[classes], self.token_suffix[classes]
        if self.position == "end":
            rest = suffix[:, : max(length - 1 - self.n_ctx, 0)]
            return torch.cat([prefix, ctx, rest], dim=1)[:, :length]
        prompts = []
        half = self.n_ctx // 2
        for i, name_len in enumerate(self.name_lens[classes]):
            cls_i = suffix[i : i + 1, :name_len]
            rest_i = suffix[i : i + 1, name_len:]
            ctx_i = ctx[i : i + 1]
            if self.position == "middle":
                parts = [prefix[i : i + 1], ctx_i[:, :half], cls_i, ctx_i[:, half:], rest_i]
            else:
                parts = [prefix[i : i + 1], cls_i, ctx_i, rest_i]
            prompts.append(torch.cat(parts, dim=1)[:, :length])
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


# Classes per chunk when text_features_many chunks by itself (more than CHUNK_ABOVE classes):
# a chunk's suffix activations are what lives at once, so memory stops growing with C, while
# each chunk still fills the GEMMs (256 classes × ~8 suffix tokens ≈ 2000 rows).
CHUNK_ABOVE = 512
CHUNK = 256


def resolve_chunk(n_cls: int, class_chunk: int | None) -> int:
    """Classes per encoder chunk: class_chunk > 0 as given, 0 = all at once, None = automatic
    (CHUNK above CHUNK_ABOVE classes, else all at once)."""
    if class_chunk is None:
        return CHUNK if n_cls > CHUNK_ABOVE else max(n_cls, 1)
    if isinstance(class_chunk, bool) or not isinstance(class_chunk, int) or class_chunk < 0:
        raise UsageError(f"--class-chunk must be a whole number ≥ 0, got {class_chunk!r}")
    return class_chunk or max(n_cls, 1)


def text_features(
    model: Any, learner: PromptLearner, class_chunk: int | None = None
) -> torch.Tensor:
    """The same features as plain_text_features, [C, embed_dim], computed cheaply.

    Exact savings (SPEC §6): positions after a prompt's EOT are never read by a causal encoder,
    so the per-token layers run only on each class's tokens up to its own EOT (packed, no
    padding); a prefix shared by all prompts has the same hidden states in every class, so it
    runs once and the class suffixes attend to its one copy of keys and values; the last layer
    runs only at the EOT position; the frozen weights are detached, so only ctx gets gradients.
    Classes go through in chunks of `class_chunk` (resolve_chunk), each recomputed in backward.
    A text tower these savings do not hold for (clip_model.fast_text: non-causal, pooling
    elsewhere than at the EOT token) runs plain_text_features instead.
    """
    return text_features_many(model, [learner], class_chunk)[0]


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


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, w = t.shape
    return t.reshape(b, n, heads, w // heads).transpose(1, 2)


def _attend_prefixed(blk: Any, q, k, v, kp, vp, mask: torch.Tensor, runs: int) -> torch.Tensor:
    """Attention of suffix queries q [R·C, h, t, d] over one shared prefix copy kp, vp
    [R, h, p, d] (run r's classes see run r's) followed by their own keys k, v [R·C, h, s, d]
    under `mask` (True = attend), with one softmax over both.

    The classes are folded into the query rows of one product per run and head, so the prefix's
    keys and values are read where they are, never copied per class.
    """
    rc, h, t, d = q.shape
    n_cls, p = rc // runs, kp.shape[2]
    scale = d**-0.5
    folded = q.reshape(runs, n_cls, h, t, d).transpose(1, 2).reshape(runs, h, n_cls * t, d)
    sp = (folded @ kp.transpose(-1, -2)).reshape(runs, h, n_cls, t, p).transpose(1, 2)
    ss = (q @ k.transpose(-1, -2)).masked_fill(~mask, float("-inf"))
    scores = torch.cat([sp.reshape(rc, h, t, p), ss], dim=-1) * scale
    # Softmax in float32 whatever the dtype, as the fused kernels accumulate.
    w = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    wp = w[..., :p].reshape(runs, n_cls, h, t, p).transpose(1, 2).reshape(runs, h, n_cls * t, p)
    op = (wp @ vp).reshape(runs, h, n_cls, t, d).transpose(1, 2).reshape(rc, h, t, d)
    out = (op + w[..., p:] @ v).transpose(1, 2).reshape(rc, t, h * d)
    proj = blk.attn.out_proj
    return _scaled(blk, "ls_1", _linear(proj.weight, proj.bias, out, runs))


def _prefix_pass(blocks: list, hp: torch.Tensor, p: int, heads: int, runs: int) -> list:
    """Keys and values [R, h, p, d] of the shared prefix in every layer, computed once."""
    kvs = []
    for i, blk in enumerate(blocks):
        qp, kp, vp = _qkv(blk, _layer_norm(blk.ln_1, hp), heads, runs)
        kvs += [kp[:, :, :p], vp[:, :, :p]]
        if i < len(blocks) - 1:
            hp = hp + _attend(blk, qp, kp, vp, None, runs, True)
            hp = hp + _mlp(blk, hp, runs)
    return kvs


def _suffix_pass(
    model: Any, x: torch.Tensor, plan: PackPlan, *prefix_kvs: torch.Tensor
) -> torch.Tensor:
    """Features [R, C', embed_dim] of the plan's C' classes from their suffixes x [R·C', s, W]
    (run-major), each row computed up to its own EOT, attending to the prefix keys/values."""
    blocks = list(model.transformer.resblocks)
    heads = blocks[0].attn.num_heads
    runs, n_cls, width = plan.runs, plan.rows, x.shape[-1]
    s = plan.length - plan.prefix
    valid_at, eot_at = plan.valid_at, plan.eot_at
    prefixed = bool(prefix_kvs)

    def packed(t: torch.Tensor) -> torch.Tensor:
        # [R·C', s, …] → the valid positions only, [V, …]
        return t.flatten(0, 1).index_select(0, valid_at)

    def padded(t: torch.Tensor) -> torch.Tensor:
        out = t.new_zeros(runs * n_cls * s, t.shape[-1])
        return out.index_copy(0, valid_at, t).reshape(runs * n_cls, s, t.shape[-1])

    hv = packed(x)
    for i, blk in enumerate(blocks):
        attn = blk.attn
        w_in, b_in = attn.in_proj_weight, attn.in_proj_bias
        last = i == len(blocks) - 1
        a = _layer_norm(blk.ln_1, hv)
        if last:
            kv = padded(_linear(w_in[width:], b_in[width:], a, runs))
            q = _linear(w_in[:width], b_in[:width], a[eot_at], runs)[:, None]
            m = plan.eot_mask
        else:
            qkv = padded(_linear(w_in, b_in, a, runs))
            q, kv = qkv[..., :width], qkv[..., width:]
            m = plan.mask
        k, v = (_heads(t, heads) for t in kv.chunk(2, dim=-1))
        q = _heads(q, heads)
        if prefixed:
            kp, vp = prefix_kvs[2 * i], prefix_kvs[2 * i + 1]
            att = _attend_prefixed(blk, q, k, v, kp, vp, m, runs)
        else:
            att = _attend(blk, q, k, v, m, runs)
        if last:
            h = hv[eot_at][:, None] + att
            h = h + _mlp(blk, h, runs)
            final = _layer_norm(model.ln_final, h[:, 0])
            out = _linear(model.text_projection.T, None, final, runs)
            return out.reshape(runs, n_cls, -1)
        hv = hv + packed(att)
        hv = hv + _mlp(blk, hv, runs)
    raise ValueError("the text transformer has no layers")


def text_features_many(
    model: Any,
    learners: Sequence[PromptLearner],
    class_chunk: int | None = None,
    core: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """text_features of R prompts over the same classes in one encoder pass: [R, C, embed_dim].

    The R×C class suffixes go through each layer as one packed batch; each prompt's shared
    prefix runs once and only its own classes attend to it. Prompt r's rows depend on prompt
    r's ctx alone, so a loss summed over the R prompts gives each ctx its own gradient.
    `core` replaces `encode_rows` (the same function under torch.compile, say); chunks are
    then padded to one set of shapes (pack_plans' `uniform`) and each chunk's real classes
    are taken from what it returns.

    With more classes than one chunk (resolve_chunk), the classes go through the whole tower
    one chunk at a time, each chunk through `core` with its own plan (pack_plans); under
    autograd each chunk is checkpointed (its activations are dropped and recomputed in
    backward), so one chunk's activations live at once and the gradients are those of the
    whole pass.
    """
    if not learners:
        raise ValueError("no prompts to encode")
    check_batchable(learners)
    if not clip_model.fast_text(model):
        return torch.stack([plain_text_features(model, learner) for learner in learners])
    encoder = core or encode_rows
    plans = pack_plans(learners[0], len(learners), class_chunk, uniform=core is not None)

    def encode(plan: PackPlan) -> torch.Tensor:
        return encoder(model, plan_prompts(learners, plan), plan)[:, : plan.classes]

    if len(plans) == 1:
        return encode(plans[0])
    from torch.utils.checkpoint import checkpoint

    tracked = torch.is_grad_enabled()
    outs = [
        checkpoint(encode, plan, use_reentrant=False) if tracked else encode(plan) for plan in plans
    ]
    return torch.cat(outs, dim=1)


@dataclass(frozen=True)
class PackPlan:
    """Where each prompt's tokens sit in the packed encoder batch; a function of the class
    names and the layout alone (the same every step), so the encoder's shapes never depend on
    data: `valid_at` lists the packed suffix positions, `eot_at` each row's EOT among them,
    `mask` is the causal mask among suffix positions [s, s] and `eot_mask` each EOT query's
    row of it. A plan covers `classes` classes from class `first` on (one chunk, or all).

    Padded (pack_plans with `uniform`, the compiled step's chunks): each run holds `rows` >=
    `classes` prompt rows (the last real class repeated) and some rows compute positions past
    their EOT, so that every chunk has one set of shapes; causal attention keeps those extra
    positions out of every EOT's feature, and only the `classes` real rows come out."""

    runs: int
    classes: int
    length: int
    prefix: int
    valid_at: torch.Tensor
    eot_at: torch.Tensor
    mask: torch.Tensor
    eot_mask: torch.Tensor
    first: int = 0
    rows: int = 0  # prompt rows per run: `classes` and any padding (0 = `classes`)

    def __post_init__(self) -> None:
        if self.rows == 0:
            object.__setattr__(self, "rows", self.classes)

    def shapes(self) -> tuple[int, ...]:
        """What a compiled encoder specialises on: one tuple for every chunk of a uniform
        packing."""
        return (self.runs, self.rows, self.length, self.prefix, self.valid_at.numel())


def pack_plan(
    learner: PromptLearner,
    runs: int,
    classes: slice | None = None,
    *,
    rows: int | None = None,
    length: int | None = None,
    positions: int | None = None,
) -> PackPlan:
    """The packing of `runs` prompts laid out as `learner` (see PackPlan), over the classes
    `classes` (a contiguous slice; all by default). The shared prefix is the whole learner's,
    so every chunk's plan holds the same prefix.

    `rows`, `length` and `positions` pad the plan to given shapes: `rows` prompt rows per run
    (the last real class repeated), `length` tokens (at least the chunk's longest prompt) and
    `positions` computed suffix positions per run (at least the chunk's own count; the extra
    ones extend rows past their EOT, first rows first)."""
    all_eot = learner.tokenized.argmax(dim=-1)
    lo, hi, _ = (classes or slice(None)).indices(learner.n_cls)
    eot = all_eot[lo:hi]
    device = eot.device
    n_rows = max(rows or 0, hi - lo)
    eot = torch.cat([eot, eot[-1:].expand(n_rows - (hi - lo))])
    length = max(length or 0, int(eot.max()) + 1)
    p = min(shared_prefix_len(learner), int(all_eot.min()))
    s = length - p
    ends = (eot - p).to(device)  # each row's EOT among its suffix positions
    last = ends.clone()  # each row's last computed suffix position
    spare = (positions or 0) - int((ends + 1).sum())
    if spare > 0:
        room = (s - 1 - ends).cumsum(0)  # positions past the EOTs, up to each row
        taken = torch.clamp(room, max=spare)
        last = ends + taken - torch.cat([taken.new_zeros(1), taken[:-1]])
        if int((last + 1).sum()) != positions:
            raise ValueError(f"{positions} suffix positions do not fit {n_rows} rows of {s}")
    # Suffix position j of row (run, class) is computed iff it is at or before that row's last.
    valid = torch.arange(s, device=device)[None, :] <= last.repeat(runs)[:, None]
    counts = valid.sum(dim=1)
    eot_rows = ends.repeat(runs)
    mask = torch.ones(s, s, dtype=torch.bool, device=device).tril()
    return PackPlan(
        runs=runs,
        classes=hi - lo,
        length=length,
        prefix=p,
        valid_at=valid.flatten().nonzero().flatten(),
        eot_at=torch.cumsum(counts, dim=0) - counts + eot_rows,
        mask=mask,
        eot_mask=mask[eot_rows][:, None, None],
        first=lo,
        rows=n_rows,
    )


def pack_plans(
    learner: PromptLearner, runs: int, class_chunk: int | None = None, uniform: bool = False
) -> list[PackPlan]:
    """One PackPlan per chunk of classes (resolve_chunk), in class order. `uniform` pads every
    chunk to one set of shapes (PackPlan.shapes), so that a compiled encoder specialises once
    however many chunks there are, not once per chunk (past torch.compile's recompile limit,
    8 by default, it runs the remaining shapes eager)."""
    n_cls = learner.n_cls
    chunk = resolve_chunk(n_cls, class_chunk)
    if chunk >= n_cls:
        return [pack_plan(learner, runs)]
    spans = [slice(lo, min(lo + chunk, n_cls)) for lo in range(0, n_cls, chunk)]
    if not uniform:
        return [pack_plan(learner, runs, span) for span in spans]
    eot = learner.tokenized.argmax(dim=-1)
    p = min(shared_prefix_len(learner), int(eot.min()))
    # Suffix positions per run of each chunk, a short last chunk's repeated rows counted.
    need = [
        int((eot[span] - p + 1).sum()) + (lo + chunk - span.stop) * int(eot[span.stop - 1] - p + 1)
        for lo, span in zip(range(0, n_cls, chunk), spans, strict=True)
    ]
    length = int(eot.max()) + 1
    return [
        pack_plan(learner, runs, span, rows=chunk, length=length, positions=max(need))
        for span in spans
    ]


def plan_prompts(learners: Sequence[PromptLearner], plan: PackPlan) -> torch.Tensor:
    """The prompt embeddings the plan packs, [R·C', length, width] (run-major)."""
    span = slice(plan.first, plan.first + plan.classes)
    pad = plan.rows - plan.classes
    out = []
    for learner in learners:
        rows = learner.prompt_rows(span, plan.length)
        out.append(torch.cat([rows, rows[-1:].expand(pad, -1, -1)]) if pad else rows)
    return torch.cat(out)


def encode_rows(model: Any, prompts: torch.Tensor, plan: PackPlan) -> torch.Tensor:
    """The text tower on R·C' prompt embeddings [R·C', length, width] packed as `plan` says:
    [R, C', embed_dim], C' = plan.rows (a padded plan's repeated rows included). Every shape
    here follows from the plan's shapes, none from tensor values or the plan's `classes` and
    `first`, so one compiled graph serves every chunk of a uniform packing.

    The shared prefix (the first class's of each run) runs once per run, and the suffixes
    attend to its one copy of keys and values."""
    n_cls, p = plan.rows, plan.prefix
    blocks = list(model.transformer.resblocks)
    if not blocks:
        raise ValueError("the text transformer has no layers")
    heads = blocks[0].attn.num_heads
    x = prompts + model.positional_embedding[: plan.length].detach().to(prompts.dtype)
    prefix_kvs: list[torch.Tensor] = []
    if p:
        # The prefix gets zero rows up to a multiple of 4; under causal attention they never
        # reach a real position, and batched attention then rounds each prompt's prefix as it
        # would alone.
        hp = F.pad(x[::n_cls, :p], (0, 0, 0, -p % 4))
        prefix_kvs = _prefix_pass(blocks, hp, p, heads, plan.runs)
    return _suffix_pass(model, x[:, p:], plan, *prefix_kvs)


def encode_packed(model: Any, prompts: torch.Tensor, plan: PackPlan) -> torch.Tensor:
    """encode_rows without a padded plan's repeated rows: [R, plan.classes, embed_dim]."""
    return encode_rows(model, prompts, plan)[:, : plan.classes]


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
