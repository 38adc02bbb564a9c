"""CoOp's prompt learner and the plain 77-token text encoder it is checked against."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nlp_cli import clip_model

POSITIONS = ("end", "middle", "front")


def _tokenizer():
    return clip_model._clip().simple_tokenizer.SimpleTokenizer()


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
        dtype = model.token_embedding.weight.dtype
        device = model.token_embedding.weight.device
        names = [c.replace("_", " ") for c in classnames]
        n_cls = len(names)

        if ctx_init:
            init_words = ctx_init.replace("_", " ").strip()
            n_ctx = len(_tokenizer().encode(init_words))
            with torch.no_grad():
                emb = model.token_embedding(clip_model.tokenize([init_words]).to(device))
            ctx = emb[0, 1 : 1 + n_ctx].clone().to(dtype)
            if csc:
                ctx = ctx.unsqueeze(0).repeat(n_cls, 1, 1)
            prefix_text = init_words
        else:
            shape = (n_cls, n_ctx, width) if csc else (n_ctx, width)
            ctx = torch.empty(shape, dtype=dtype)
            nn.init.normal_(ctx, std=0.02, generator=generator)
            ctx = ctx.to(device)
            prefix_text = " ".join(["X"] * n_ctx)

        self.ctx = nn.Parameter(ctx)
        self.n_ctx = n_ctx
        self.n_cls = n_cls
        self.csc = csc
        self.position = position
        tok = _tokenizer()
        self.name_lens = [len(tok.encode(n)) for n in names]
        self.register_buffer(
            "tokenized", clip_model.tokenize([f"{prefix_text} {n}." for n in names]).to(device)
        )
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
    """CoOp's text encoder over all 77 positions (the reference): [C, embed_dim], not normalised."""
    prompts = learner()
    x = prompts + model.positional_embedding.to(prompts.dtype)
    x = x.permute(1, 0, 2)
    x = model.transformer(x)
    x = x.permute(1, 0, 2)
    x = model.ln_final(x)
    eot = learner.tokenized.argmax(dim=-1)
    return x[torch.arange(x.shape[0], device=x.device), eot] @ model.text_projection
