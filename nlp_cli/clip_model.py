"""One way to get a CLIP model: by OpenAI name, by built-in name, or by checkpoint path."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nlp_cli.errors import ArtifactError, NlpError, UsageError, did_you_mean
from nlp_cli.home import models_dir

HAND_TEMPLATE = "a photo of a {}."
ASSETS = Path(__file__).parent / "assets"
# Built-in checkpoints shipped inside the package (OpenAI state-dict layout).
BUILTIN = {
    "tiny-shapes": ASSETS / "tiny-shapes.pt",
    "tiny-shapes-fine": ASSETS / "tiny-shapes-fine.pt",
    "tiny-duo": ASSETS / "tiny-duo.pt",
}
# fp32: fp32 weights. fp16/bf16: CLIP's half layout in that dtype. amp: fp32 weights, with the
# forward under autocast (fp16 on CUDA, bf16 on CPU) and, on CUDA, a GradScaler (CoOp's PREC).
PRECISIONS = ("fp32", "fp16", "bf16", "amp")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _clip():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation, raised on import
        import clip
    return clip


def openai_models() -> dict[str, str]:
    """OpenAI model name -> download URL, as clip-anytorch knows them."""
    return dict(_clip().clip._MODELS)


def model_file(name: str) -> Path:
    """Where `nlp download --model NAME` stores an OpenAI checkpoint."""
    url = openai_models()[name]
    return models_dir() / Path(url).name


def resolve(name_or_path: str) -> Path:
    """The checkpoint file for a model name or path; one clear error when it is absent."""
    if name_or_path in BUILTIN:
        path = BUILTIN[name_or_path]
        if not path.exists():
            raise ArtifactError(
                f"built-in model {name_or_path} is missing from the package ({path})"
            )
        return path
    if name_or_path in openai_models():
        path = model_file(name_or_path)
        if not path.exists():
            raise ArtifactError(
                f"CLIP model {name_or_path} is not downloaded: run "
                f"`nlp download --model {name_or_path}` or pass a checkpoint path"
            )
        return path
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    known = list(BUILTIN) + list(openai_models())
    raise UsageError(
        f"unknown CLIP model {name_or_path!r}{did_you_mean(name_or_path, known)}: "
        f"use one of {', '.join(known)} or a checkpoint path"
    )


def resolve_device(device: str | torch.device | None = "auto") -> str:
    """The device to run on: "auto" (or None) is "cuda" when CUDA is available, else "cpu"."""
    if device is None or str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    try:
        kind = torch.device(device).type
    except RuntimeError as e:
        raise UsageError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from e
    if kind == "cuda" and not torch.cuda.is_available():
        raise NlpError(f"device {device} requested but CUDA is not available")
    return device


def resolve_precision(precision: str | None, device: str | torch.device) -> str:
    """One of PRECISIONS; None (or "auto") is CoOp's default: fp16 on CUDA, fp32 elsewhere."""
    if precision is None or precision == "auto":
        return "fp16" if torch.device(device).type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise UsageError(
            f"unknown precision {precision!r}{did_you_mean(precision, list(PRECISIONS))}: "
            f"use one of {', '.join(PRECISIONS)}"
        )
    return precision


def weight_dtype(precision: str) -> torch.dtype:
    """The dtype of the matrix weights (and of CLIP's activations) under `precision`."""
    return _DTYPES.get(precision, torch.float32)


def to_precision(model: Any, precision: str) -> Any:
    """Put a CLIP model's weights in `precision`, in place; returns the model.

    fp16/bf16 follow clip.model.convert_weights (what clip.load leaves on CUDA): only the
    conv, linear and attention weights and the two projections change dtype; LayerNorm,
    BatchNorm, the embeddings and logit_scale stay fp32. CLIP's LayerNorm runs in fp32 and
    casts back, which fails on fp16 LayerNorm weights, so a blanket model.half() cannot run.
    """
    model.float()
    dtype = weight_dtype(precision)
    if dtype == torch.float32:
        return model

    def cast(t: torch.Tensor | None) -> None:
        if t is not None:
            t.data = t.data.to(dtype)

    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv1d | torch.nn.Conv2d | torch.nn.Linear):
            cast(mod.weight)
            cast(mod.bias)
        if isinstance(mod, torch.nn.MultiheadAttention):
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                cast(getattr(mod, name))
            for name in ("in_proj_bias", "bias_k", "bias_v"):
                cast(getattr(mod, name))
        for name in ("text_projection", "proj"):
            attr = getattr(mod, name, None)
            if isinstance(attr, torch.Tensor):
                cast(attr)
    return model


def autocast(device: str | torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in: autocast for amp (fp16 on CUDA, bf16 on CPU)."""
    if precision != "amp":
        return contextlib.nullcontext()
    kind = torch.device(device).type
    return torch.autocast(kind, dtype=torch.float16 if kind == "cuda" else torch.bfloat16)


def grad_scaler(device: str | torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler for amp on CUDA (fp16 autocast); a pass-through one otherwise."""
    kind = torch.device(device).type
    return torch.amp.GradScaler(kind, enabled=precision == "amp" and kind == "cuda")


@dataclass
class LoadedClip:
    """A frozen CLIP model, its image preprocessing, its identity for artifacts and precision."""

    model: Any
    preprocess: Any
    identity: dict[str, Any]
    precision: str = "fp32"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype CLIP computes in (its matrix weights' dtype; fp32 under amp)."""
        return self.model.dtype

    def autocast(self) -> contextlib.AbstractContextManager:
        """autocast(device, precision) for this model."""
        return autocast(self.model.text_projection.device, self.precision)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())


def identity(name_or_path: str, path: Path, model: Any) -> dict[str, Any]:
    """What artifacts record about the model they belong to."""
    from nlp_cli.artifacts import file_digest

    name = name_or_path if name_or_path in BUILTIN or name_or_path in openai_models() else path.name
    return {
        "name": name,
        "path": str(path.resolve()),
        "digest": file_digest(path),
        "embed_dim": int(model.text_projection.shape[1]),
        "input_resolution": int(model.visual.input_resolution),
    }


_loaded: dict[tuple[str, str, str], LoadedClip] = {}


def load(
    name_or_path: str, device: str | torch.device = "cpu", precision: str | None = None
) -> LoadedClip:
    """Load a frozen CLIP with clip-anytorch's ordinary path, its weights in `precision`.

    `precision` None is resolve_precision's default (fp16 on CUDA, fp32 on CPU). The identity
    does not depend on it: artifacts made at any precision name the same model.
    """
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    path = resolve(name_or_path)
    key = (str(path.resolve()), device, precision)
    if key in _loaded:
        return _loaded[key]
    clip = _clip()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, preprocess = clip.load(str(path), device=device, jit=False)
    except Exception as e:
        raise ArtifactError(f"{path} is not a loadable CLIP checkpoint ({type(e).__name__})") from e
    to_precision(model, precision).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    loaded = LoadedClip(model, preprocess, identity(name_or_path, path, model), precision)
    _loaded[key] = loaded
    return loaded


def load_for(
    meta: dict[str, Any],
    override: str | None = None,
    device: str | torch.device = "cpu",
    precision: str | None = None,
) -> LoadedClip:
    """The CLIP model an artifact was made with: by its recorded name, else its recorded path.

    `override` (a name or path) replaces the recorded one and must have the same digest;
    `device` and `precision` are as in load.
    """
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    recorded = meta.get("model") or {}
    candidates = [override] if override else [recorded.get("name"), recorded.get("path")]
    candidates = [c for c in candidates if c]
    if not candidates:
        raise ArtifactError("the artifact records no CLIP model: pass --model NAME_OR_PATH")
    last: Exception | None = None
    for cand in candidates:
        try:
            loaded = load(cand, device, precision)
        except (UsageError, ArtifactError) as e:
            if override and isinstance(e, UsageError):
                raise  # a misspelt --model: the usage error with its suggestion
            last = e
            continue
        want = recorded.get("digest")
        if want and loaded.identity["digest"] != want:
            # a file of the recorded name in the current folder is not the recorded model:
            # try the recorded path next; refuse only when no candidate is the right model
            last = ArtifactError(
                f"CLIP model {cand} differs from the one the artifact was made with "
                f"({recorded.get('name')}): pass the right one with --model"
            )
            if override:
                raise last
            continue
        return loaded
    name = recorded.get("name") or "?"
    raise ArtifactError(
        f"cannot find the CLIP model {name} the artifact was made with ({last}); "
        "pass it with --model NAME_OR_PATH"
    )


def tokenize(texts: list[str]) -> torch.Tensor:
    """CLIP's tokenizer, 77 tokens per text."""
    return _clip().tokenize(texts)


@torch.no_grad()
def encode_texts(model: Any, texts: list[str], chunk: int = 256) -> torch.Tensor:
    """Text features (not normalised) for plain strings, float32.

    The text tower is causal and only the end-of-text position is read, so positions after the
    longest text's end never matter: the tower runs on the first (max EOT + 1) positions only,
    the same features as `model.encode_text` on all 77 (tests hold them together), several
    times faster for short prompts. Chunks of `chunk` texts bound the memory.
    """
    device = model.text_projection.device
    tokens = tokenize(texts).to(device)
    out = [_encode_truncated(model, tokens[i : i + chunk]) for i in range(0, len(tokens), chunk)]
    return torch.cat(out) if out else torch.zeros(0, model.text_projection.shape[1])


def _encode_truncated(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    eot = tokens.argmax(dim=-1)  # the end-of-text token has the largest id
    length = int(eot.max()) + 1
    dtype = model.dtype
    x = model.token_embedding(tokens[:, :length]).type(dtype)
    x = (x + model.positional_embedding[:length].type(dtype)).permute(1, 0, 2)
    mask = torch.full((length, length), float("-inf"), device=x.device).triu_(1).to(dtype)
    for blk in model.transformer.resblocks:
        y = blk.ln_1(x)
        x = x + blk.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        x = x + blk.mlp(blk.ln_2(x))
    x = model.ln_final(x.permute(1, 0, 2)).type(dtype)
    return (x[torch.arange(len(tokens), device=x.device), eot] @ model.text_projection).float()


def hand_prompt_features(model: Any, classnames: list[str], template: str = HAND_TEMPLATE):
    """L2-normalised zero-shot class prototypes from the hand prompt."""
    feats = encode_texts(model, [template.format(c.replace("_", " ")) for c in classnames])
    return feats / feats.norm(dim=-1, keepdim=True)


@torch.no_grad()
def class_prototypes(
    model: Any, classnames: list[str], dataset: str | None = None, template: str | None = None
) -> torch.Tensor:
    """Zero-shot class prototypes (L2-normalised, float32): the dataset's CoOp hand prompt
    (`templates.template_for`), a given template with one "{}", or "ensemble" — CLIP's 80
    ImageNet templates, each prototype the re-normalised mean of its normalised encodings."""
    from nlp_cli import templates

    if template == "ensemble":
        total = None
        for t in templates.ENSEMBLE:
            feats = hand_prompt_features(model, classnames, t)
            total = feats if total is None else total + feats
        return total / total.norm(dim=-1, keepdim=True)
    chosen = templates.check_template(template) if template else templates.template_for(dataset)
    return hand_prompt_features(model, classnames, chosen)


def build_tiny(
    seed: int = 0,
    embed_dim: int = 32,
    image_resolution: int = 32,
    vision_layers: int | tuple[int, int, int, int] = 2,
    vision_width: int = 64,
    vision_patch_size: int | None = 8,
    transformer_width: int = 64,
    transformer_layers: int = 2,
):
    """A small randomly initialised CLIP, for tests and the offline world.

    A ViT image tower, or with `vision_layers` a 4-tuple and no patch size, a ModifiedResNet
    (its attention-pool grid is image_resolution / 32).

    Head counts are width // 64 because clip.model.build_model infers them that way when
    a checkpoint is loaded back; any other count would load as a different function.
    """
    clip = _clip()
    torch.manual_seed(seed)
    model = clip.model.CLIP(
        embed_dim=embed_dim,
        image_resolution=image_resolution,
        vision_layers=vision_layers,
        vision_width=vision_width,
        vision_patch_size=vision_patch_size,
        context_length=77,
        vocab_size=49408,
        transformer_width=transformer_width,
        transformer_heads=max(1, transformer_width // 64),
        transformer_layers=transformer_layers,
    )
    return model.eval()


def save_checkpoint(model: Any, path: Path | str, fp16: bool = True) -> Path:
    """Save a CLIP state dict in OpenAI's layout, loadable by clip.load(path, jit=False)."""
    from nlp_cli.artifacts import atomic_path

    state = {
        k: (v.half() if fp16 and v.is_floating_point() else v)
        for k, v in model.state_dict().items()
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path
