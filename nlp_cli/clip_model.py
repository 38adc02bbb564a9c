"""One way to get a CLIP model: by OpenAI name, by built-in name, by checkpoint path, or as an
open_clip architecture (`open_clip:ARCH`) with its weights (a checkpoint file, a downloaded tag,
or `none` for random weights)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nlp_cli.errors import ArtifactError, NlpError, UsageError, did_you_mean
from nlp_cli.home import models_dir

HAND_TEMPLATE = "a photo of a {}."
CONTEXT_LENGTH = 77  # CLIP's text positions: what clip.tokenize pads and cuts to
ASSETS = Path(__file__).parent / "assets"
# Built-in checkpoints shipped inside the package (OpenAI state-dict layout).
# `tiny-shapes` is pretrained for the `shapes` world (`tiny-duo`, its earlier name, is the same
# file); `tiny-shapes-easy` for `shapes-easy`; `tiny-shapes-fine` for `shapes-fine`.
BUILTIN = {
    "tiny-shapes": ASSETS / "tiny-shapes.pt",
    "tiny-duo": ASSETS / "tiny-shapes.pt",
    "tiny-shapes-easy": ASSETS / "tiny-shapes-easy.pt",
    "tiny-shapes-fine": ASSETS / "tiny-shapes-fine.pt",
}
# fp32: fp32 weights. fp16/bf16: CLIP's half layout in that dtype. amp: fp32 weights, with the
# forward under autocast (fp16 on CUDA, bf16 on CPU) and, on CUDA, a GradScaler (CoOp's PREC).
PRECISIONS = ("fp32", "fp16", "bf16", "amp")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _clip():
    """clip-anytorch, whole: its load, tokenize and model list as well as clip.model."""
    module = _clip_package()
    init = module.__dict__.get("__getattr__")
    if init is not None:
        init("load")
    return module


def _clip_text():
    """clip-anytorch's `model` and `simple_tokenizer` modules, all the text tower needs.

    Importing `clip` runs its __init__, which imports torchvision and, through torchvision.ops,
    torch._dynamo and pkg_resources: about 2 s on a 2-core machine, in every stage process, for
    the two modules that import neither. So the `clip` package enters sys.modules with its
    __init__ not yet run, and the first use of anything else it defines (`clip.load`, by us
    or by any other code in the process) runs it then, into the same module: clip.model is
    imported once, and `clip.model.CLIP` stays one class."""
    module = _clip_package()
    importlib.import_module("clip.model")
    importlib.import_module("clip.simple_tokenizer")
    return module


def _clip_package():
    module = sys.modules.get("clip")
    if module is not None:
        return module
    spec = importlib.util.find_spec("clip")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise NlpError("clip-anytorch is not installed: pip install clip-anytorch")
    module = importlib.util.module_from_spec(spec)

    def __getattr__(name: str) -> Any:  # noqa: N807 (PEP 562: the module's own attribute hook)
        if name.startswith("__"):
            raise AttributeError(name)
        del module.__dict__["__getattr__"]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pkg_resources deprecation, raised on import
                spec.loader.exec_module(module)
        except BaseException:
            module.__getattr__ = __getattr__
            raise
        return getattr(module, name)

    module.__getattr__ = __getattr__
    sys.modules["clip"] = module
    return module


def openai_models() -> dict[str, str]:
    """OpenAI model name -> download URL, as clip-anytorch knows them."""
    return dict(_clip().clip._MODELS)


def model_file(name: str) -> Path:
    """Where `nlp download --model NAME` stores an OpenAI checkpoint."""
    url = openai_models()[name]
    return models_dir() / Path(url).name


OPEN_CLIP = "open_clip:"
RANDOM_WEIGHTS = "none"  # --pretrained none: random weights, asked for explicitly
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def _open_clip():
    """open_clip, imported only when an open_clip model is asked for; architecture configs
    (open_clip's JSON format) under NLP_HOME/models/open_clip/configs join its own."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import open_clip
    configs = open_clip_configs_dir()
    if configs.is_dir() and configs not in open_clip.factory._MODEL_CONFIG_PATHS:
        open_clip.add_model_config(configs)
    return open_clip


def open_clip_configs_dir() -> Path:
    """Where extra open_clip architecture configs (`ARCH.json`) are read from."""
    return models_dir() / "open_clip" / "configs"


def open_clip_tag_dir(arch: str, tag: str) -> Path:
    """Where `nlp download --model open_clip:ARCH --pretrained TAG` stores the weights."""
    return models_dir() / "open_clip" / arch / tag


def is_open_clip(name: str | None) -> bool:
    """Whether a model reference names an open_clip architecture."""
    return bool(name) and str(name).startswith(OPEN_CLIP)


def model_ref(model: str | None, pretrained: str | None) -> str | None:
    """`--model` and `--pretrained` as one model reference: `open_clip:ARCH@PRETRAINED`."""
    if pretrained is None:
        return model
    if not is_open_clip(model):
        raise UsageError(
            "--pretrained applies to open_clip:ARCH models (OpenAI names and checkpoint paths "
            "carry their weights)"
        )
    if "@" in model:
        raise UsageError(f"--model {model} already names its weights: drop --pretrained")
    return f"{model}@{pretrained}"


def split_ref(ref: str) -> tuple[str, str | None]:
    """(ARCH, PRETRAINED or None) of `open_clip:ARCH[@PRETRAINED]`."""
    arch, _, pretrained = ref[len(OPEN_CLIP) :].partition("@")
    return arch, pretrained or None


@dataclass(frozen=True)
class OpenClipRef:
    """An open_clip architecture and its weights: a file (from a path or a downloaded tag)
    or random (path None)."""

    arch: str
    pretrained: str
    path: Path | None
    tag: str | None = None


def stored_open_clip(arch: str, tag: str) -> Path | None:
    """The weights file `nlp download` stored for (arch, tag), if any."""
    folder = open_clip_tag_dir(arch, tag)
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    return files[0] if files else None


def resolve_open_clip(ref: str) -> OpenClipRef:
    """The architecture and weights of `open_clip:ARCH@PRETRAINED`; one clear error otherwise."""
    arch, pretrained = split_ref(ref)
    oc = _open_clip()
    known = oc.list_models()
    if arch not in known:
        raise UsageError(
            f"unknown open_clip architecture {arch!r}{did_you_mean(arch, known)} "
            f"(open_clip.list_models(), or a config in {open_clip_configs_dir()})"
        )
    tags = oc.list_pretrained_tags_by_model(arch)
    if pretrained is None:
        hint = f" or a tag ({', '.join(tags[:4])}{', …' if len(tags) > 4 else ''})" if tags else ""
        raise UsageError(
            f"{OPEN_CLIP}{arch} needs its weights: --pretrained PATH (a checkpoint file){hint}, "
            f"or --pretrained {RANDOM_WEIGHTS} for random weights"
        )
    if pretrained == RANDOM_WEIGHTS:
        return OpenClipRef(arch, RANDOM_WEIGHTS, None)
    path = Path(pretrained).expanduser()
    if path.is_file():
        return OpenClipRef(arch, str(path.resolve()), path)
    if pretrained in tags:
        stored = stored_open_clip(arch, pretrained)
        if stored is None:
            raise ArtifactError(
                f"{OPEN_CLIP}{arch} weights {pretrained} are not downloaded: run `nlp download "
                f"--model {OPEN_CLIP}{arch} --pretrained {pretrained}` or pass a checkpoint path"
            )
        return OpenClipRef(arch, pretrained, stored, pretrained)
    raise UsageError(
        f"--pretrained {pretrained!r} is no file, no tag of {OPEN_CLIP}{arch}"
        f"{did_you_mean(pretrained, tags)} and not {RANDOM_WEIGHTS}"
    )


def resolve(name_or_path: str) -> Path | None:
    """The checkpoint file for a model name or path; one clear error when it is absent.

    None for an open_clip model with random weights (`open_clip:ARCH@none`).
    """
    if is_open_clip(name_or_path):
        return resolve_open_clip(name_or_path).path
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
        f"use one of {', '.join(known)}, {OPEN_CLIP}ARCH or a checkpoint path"
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


def native_bf16(device: str | torch.device) -> bool:
    """Whether `device` computes in bf16 natively: CUDA, or a CPU with AVX-512 BF16 or AMX
    (oneDNN's test). Elsewhere bf16 runs emulated through fp32, slower than fp32 itself
    (benchmarks/bench_compile.py --bf16)."""
    if torch.device(device).type != "cpu":
        return True
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_warning(device: str | torch.device, precision: str) -> str | None:
    """One line when `precision` computes in bf16 on a CPU without native bf16, else None."""
    kind = torch.device(device).type
    if kind != "cpu" or precision not in ("amp", "bf16") or native_bf16(device):
        return None
    return (
        f"--precision {precision} computes in bf16, which this CPU has no instructions for "
        "(AVX-512 BF16 or AMX): it runs emulated, slower than fp32 (benchmarks/README.md)"
    )


def grad_scaler(device: str | torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler for amp on CUDA (fp16 autocast); a pass-through one otherwise."""
    kind = torch.device(device).type
    return torch.amp.GradScaler(kind, enabled=precision == "amp" and kind == "cuda")


@dataclass
class LoadedClip:
    """A frozen CLIP model, its image preprocessing, its identity for artifacts and precision.

    `image` says whether the image tower is there: without it (`load(..., image=False)`)
    `preprocess` is None and encode_image refuses in one line.
    """

    model: Any
    preprocess: Any
    identity: dict[str, Any]
    precision: str = "fp32"
    image: bool = True

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


class NoImageTower(torch.nn.Module):
    """What stands for the image tower of a model loaded with `image=False`: its input
    resolution (the identity records it) and a forward that refuses, in one line."""

    def __init__(self, input_resolution: int) -> None:
        super().__init__()
        self.input_resolution = int(input_resolution)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        raise NlpError(
            "this CLIP was loaded without its image tower (clip_model.load(..., image=False)): "
            "load it with image=True to encode images"
        )


# Entries of an OpenAI checkpoint that are no weights (JIT archives hold them, build_model drops)
_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size")


@functools.cache
def _text_clip_class() -> type:
    clip = _clip_text()

    class TextClip(clip.model.CLIP):
        """OpenAI's CLIP without its image tower: clip.model.CLIP's text tower, encode_text and
        attributes, its weights to be assigned from a checkpoint; `visual` is a NoImageTower.

        `meta`: built on the meta device, so that no weight is allocated before the
        checkpoint's are assigned. Initialising meta tensors imports torch's compiler stack
        (torch._dynamo, about 2 s of a stage's start), so a small tower (_load_text_clip's
        META_ABOVE) is built on the CPU instead, with torch's global RNG left as it was."""

        def __init__(
            self,
            embed_dim: int,
            input_resolution: int,
            context_length: int,
            vocab_size: int,
            width: int,
            layers: int,
            meta: bool = True,
        ) -> None:
            # the smallest image tower CLIP builds (one block, one patch), then replaced:
            # CLIP.__init__ sets up the text tower exactly as for the full model
            where = torch.device("meta") if meta else torch.random.fork_rng(devices=[])
            with where:
                super().__init__(
                    embed_dim,
                    image_resolution=input_resolution,
                    vision_layers=1,
                    vision_width=64,
                    vision_patch_size=input_resolution,
                    context_length=context_length,
                    vocab_size=vocab_size,
                    transformer_width=width,
                    transformer_heads=width // 64,
                    transformer_layers=layers,
                )
            self.visual = NoImageTower(input_resolution)
            mask = self.build_attention_mask()  # the blocks hold it as a plain attribute
            for blk in self.transformer.resblocks:
                blk.attn_mask = mask

        @property
        def dtype(self) -> torch.dtype:
            # CLIP reads visual.conv1.weight.dtype; text_projection is cast with it everywhere
            # (clip.model.convert_weights, to_precision), so it is the same dtype
            return self.text_projection.dtype

    return TextClip


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors as clip.load reads them (a JIT archive, else a state dict); a
    state dict is memory-mapped where its format allows, so tensors never used are never read."""
    try:
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except RuntimeError:
        pass
    try:
        return torch.load(path, map_location="cpu", mmap=True)
    except RuntimeError:  # the legacy (pre-zip) format cannot be mapped
        return torch.load(path, map_location="cpu")


def _input_resolution(state: dict[str, torch.Tensor]) -> int:
    """The image size of an OpenAI checkpoint, from its image tower's shapes (as build_model)."""
    if "visual.proj" in state:
        patch = state["visual.conv1.weight"].shape[-1]
        return patch * round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    return 32 * round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)


# Text towers of more weights than this are built on the meta device (TextClip): below it, a
# random initialisation on the CPU (about 0.15 s) costs less than importing torch._dynamo.
META_ABOVE = 10_000_000


def _load_text_clip(path: Path, device: str) -> Any:
    """The text tower of an OpenAI-layout checkpoint, its weights the file's (before
    to_precision); the image tower's weights are dropped unread."""
    state = _read_state(path)
    resolution = _input_resolution(state)
    text = {k: v for k, v in state.items() if not k.startswith("visual.") and k not in _NOT_WEIGHTS}
    del state
    blocks = {k.split(".")[2] for k in text if k.startswith("transformer.resblocks.")}
    model = _text_clip_class()(
        embed_dim=text["text_projection"].shape[1],
        input_resolution=resolution,
        context_length=text["positional_embedding"].shape[0],
        vocab_size=text["token_embedding.weight"].shape[0],
        width=text["ln_final.weight"].shape[0],
        layers=len(blocks),
        meta=sum(t.numel() for t in text.values()) > META_ABOVE,
    )
    model.load_state_dict(text, assign=True)
    return model.to(device).eval()


def _drop_image_tower(model: Any) -> None:
    """Replace a loaded model's image tower with a NoImageTower (its weights are freed)."""
    holder = model.inner if isinstance(model, OpenClip) else model
    holder.visual = NoImageTower(model.visual.input_resolution)


class OpenClip(torch.nn.Module):
    """An open_clip model seen through the attributes the package reads of an OpenAI CLIP:
    encode_image, token_embedding, positional_embedding, transformer (.resblocks), ln_final,
    text_projection, logit_scale, dtype, visual.input_resolution; plus its own tokenizer and
    the text forward from prompt embeddings (`encode_embeddings`).

    `fast` says whether the exact fast encoder (truncation, shared prefix) applies: a causal
    tower of open_clip's default blocks that pools at the EOT token (argmax of the token ids).
    """

    def __init__(self, model: Any, tokenizer: Any, arch: str) -> None:
        super().__init__()
        self.inner = model
        self.tokenizer = tokenizer
        self.arch = arch
        self.visual.input_resolution = _first(getattr(self.visual, "image_size", 224))
        self.fast = _fast_tower(self)

    @property
    def tower(self) -> Any:
        """The module holding the text tower's parts (the model itself, or its `.text`)."""
        return getattr(self.inner, "text", None) or self.inner

    @property
    def visual(self) -> Any:
        return self.inner.visual

    @property
    def token_embedding(self) -> Any:
        return self.tower.token_embedding

    @property
    def positional_embedding(self) -> torch.Tensor:
        return self.tower.positional_embedding

    @property
    def transformer(self) -> Any:
        return self.tower.transformer

    @property
    def ln_final(self) -> Any:
        return self.tower.ln_final

    @property
    def attn_mask(self) -> torch.Tensor | None:
        return self.tower.attn_mask

    @property
    def pool_type(self) -> str:
        t = self.tower
        return getattr(t, "pool_type", None) or getattr(t, "text_pool_type", "argmax")

    @property
    def text_projection(self) -> torch.Tensor:
        """[width, embed_dim]: the projection matrix (a Linear layer's weight, transposed)."""
        proj = self.tower.text_projection
        return proj.weight.T if isinstance(proj, torch.nn.Linear) else proj

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.inner.logit_scale

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.get_cast_dtype()

    @property
    def context_length(self) -> int:
        return int(self.positional_embedding.shape[0])

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.inner.encode_image(image)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.inner.encode_text(tokens)

    def encode_embeddings(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's text forward from token embeddings x [B, T, width] (T ≤ context
        length; the tokens [B, T] say where to pool): [B, embed_dim], not normalised."""
        from open_clip.transformer import text_global_pool

        t, dtype, n = self.tower, self.dtype, x.shape[1]
        x = x.to(dtype) + self.positional_embedding[:n].to(dtype)
        mask = self.attn_mask
        x = self.transformer(x, attn_mask=None if mask is None else mask[:n, :n])
        x = self.ln_final(x)
        eos = getattr(t, "eos_id", getattr(t, "text_eos_id", None))
        pooled = text_global_pool(x, tokens, self.pool_type, eos_token_id=eos)
        proj = t.text_projection
        return proj(pooled) if isinstance(proj, torch.nn.Linear) else pooled @ proj


def _first(size: Any) -> int:
    return int(size[0] if isinstance(size, tuple | list) else size)


def _fast_tower(model: OpenClip) -> bool:
    from open_clip.transformer import ResidualAttentionBlock

    tower = model.tower
    if model.attn_mask is None or model.pool_type != "argmax":
        return False
    if not isinstance(tower.text_projection, torch.nn.Parameter):
        return False
    for blk in model.transformer.resblocks:
        attn = blk.attn
        if type(blk) is not ResidualAttentionBlock or hasattr(blk, "ln_1_kv"):
            return False
        if not isinstance(attn, torch.nn.MultiheadAttention) or attn.in_proj_weight is None:
            return False
        if attn.bias_k is not None or list(dict(blk.mlp.named_children())) != [
            "c_fc",
            "gelu",
            "c_proj",
        ]:
            return False
    return True


def fast_text(model: Any) -> bool:
    """Whether the exact fast text encoder applies to this model's text tower."""
    return bool(getattr(model, "fast", True))


def context_length(model: Any) -> int:
    """How many token positions the model's text tower holds (77 for OpenAI CLIP)."""
    return int(getattr(model, "context_length", 77))


def _state_digest(model: Any) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def _check_text_cfg(arch: str, text_cfg: dict[str, Any]) -> None:
    """Refuse text towers prompt learning cannot run on, in one line."""
    why = None
    if text_cfg.get("hf_model_name"):
        why = f"its text tower is the Hugging Face model {text_cfg['hf_model_name']}"
    elif text_cfg.get("hf_tokenizer_name"):
        why = f"its tokenizer is Hugging Face's {text_cfg['hf_tokenizer_name']}, not CLIP's BPE"
    elif text_cfg.get("embed_cls"):
        why = "its text tower appends a class token (CoCa)"
    elif text_cfg.get("use_pad_mask"):
        why = "its text tower masks padding"
    if why:
        raise UsageError(
            f"{OPEN_CLIP}{arch} is not supported: {why}; prompt learning here needs open_clip's "
            "own text transformer with CLIP's tokenizer ([SOS] … [EOT])"
        )


def _load_open_clip(ref: OpenClipRef, device: str, precision: str) -> tuple[OpenClip, Any]:
    oc = _open_clip()
    cfg = oc.get_model_config(ref.arch) or {}
    _check_text_cfg(ref.arch, cfg.get("text_cfg") or {})
    tag_cfg = oc.get_pretrained_cfg(ref.arch, ref.tag) if ref.tag else {}
    kwargs: dict[str, Any] = {"force_quick_gelu": bool(tag_cfg.get("quick_gelu"))}
    preprocess_cfg = {k: tag_cfg[k] for k in _PREPROCESS_KEYS if k in tag_cfg}
    if preprocess_cfg:
        kwargs["force_preprocess_cfg"] = preprocess_cfg
    # open_clip's own half layout (LayerNorm in fp32, as CLIP's); amp keeps fp32 weights
    oc_precision = precision if precision in ("fp16", "bf16") else "fp32"
    what = ref.pretrained if ref.path is None else str(ref.path)
    try:
        # random weights are seeded, so that every stage builds the same model
        with torch.random.fork_rng(devices=[]), _quiet():
            torch.manual_seed(0)
            model, _, preprocess = oc.create_model_and_transforms(
                ref.arch,
                pretrained=None if ref.path is None else str(ref.path),
                precision=oc_precision,
                device=device,
                **kwargs,
            )
    except Exception as e:
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ArtifactError(
            f"{what} is not a loadable checkpoint for {OPEN_CLIP}{ref.arch} ({detail})"
        ) from e
    tokenizer = oc.get_tokenizer(ref.arch)
    if not isinstance(tokenizer, oc.tokenizer.SimpleTokenizer):
        raise UsageError(
            f"{OPEN_CLIP}{ref.arch} is not supported: its tokenizer is not CLIP's BPE tokenizer"
        )
    wrapped = OpenClip(model, tokenizer, ref.arch)
    if wrapped.tower.text_projection is None:
        raise UsageError(
            f"{OPEN_CLIP}{ref.arch} is not supported: its text tower has no projection"
        )
    return wrapped, preprocess


@contextlib.contextmanager
def _quiet():
    """open_clip reports through the root logger: the library keeps stderr for the CLI."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def open_clip_identity(ref: OpenClipRef, model: OpenClip) -> dict[str, Any]:
    """What artifacts record about an open_clip model: its reference, weights and digest."""
    from nlp_cli.artifacts import file_digest

    return {
        "name": f"{OPEN_CLIP}{ref.arch}",
        "pretrained": ref.pretrained,
        "path": "" if ref.path is None else str(ref.path.resolve()),
        "digest": _state_digest(model) if ref.path is None else file_digest(ref.path),
        "embed_dim": int(model.text_projection.shape[1]),
        "input_resolution": int(model.visual.input_resolution),
        "text_encoder": "fast" if model.fast else "plain",
    }


def recorded_refs(recorded: dict[str, Any], override: str | None = None) -> list[str]:
    """The model references to try for a recorded model identity (`override` first)."""
    name = recorded.get("name")
    if override and not (is_open_clip(override) and "@" not in override and override == name):
        return [override]
    if is_open_clip(name):
        weights = [recorded.get("pretrained"), recorded.get("path")]
        return list(dict.fromkeys(f"{name}@{w}" for w in weights if w))
    return [c for c in (name, recorded.get("path")) if c]


# (model, device, precision) -> the model loaded last; one with its image tower also serves
# text-only callers, a text-only one is replaced when the image tower is asked for
_loaded: dict[tuple[str, str, str], LoadedClip] = {}


def load(
    name_or_path: str,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    *,
    image: bool = True,
) -> LoadedClip:
    """Load a frozen CLIP with clip-anytorch's ordinary path, its weights in `precision`;
    `open_clip:ARCH@PRETRAINED` (model_ref) with open_clip's create_model_and_transforms.

    `precision` None is resolve_precision's default (fp16 on CUDA, fp32 on CPU). The identity
    does not depend on it: artifacts made at any precision name the same model.

    `image=False` loads the text tower only, for stages that read cached image features: the
    same text weights and identity; an OpenAI-layout checkpoint's image-tower weights are never
    read (a JIT archive's are read and dropped), an open_clip model's are built and dropped.
    """
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    if is_open_clip(name_or_path):
        ref = resolve_open_clip(name_or_path)
        key = (f"{OPEN_CLIP}{ref.arch}@{ref.path or ref.pretrained}", device, precision)
        hit = _loaded.get(key)
        if hit is not None and (hit.image or not image):
            return hit
        model, preprocess = _load_open_clip(ref, device, precision)
        _freeze(model)
        ident = open_clip_identity(ref, model)  # random weights: digested with the image tower
        if not image:
            _drop_image_tower(model)
            preprocess = None
        _loaded[key] = LoadedClip(model, preprocess, ident, precision, image)
        return _loaded[key]
    path = resolve(name_or_path)
    key = (str(path.resolve()), device, precision)
    hit = _loaded.get(key)
    if hit is not None and (hit.image or not image):
        return hit
    preprocess = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if image:
                model, preprocess = _clip().load(str(path), device=device, jit=False)
            else:
                model = _load_text_clip(path, device)
    except Exception as e:
        raise ArtifactError(f"{path} is not a loadable CLIP checkpoint ({type(e).__name__})") from e
    to_precision(model, precision)
    _freeze(model)
    loaded = LoadedClip(model, preprocess, identity(name_or_path, path, model), precision, image)
    _loaded[key] = loaded
    return loaded


def _freeze(model: Any) -> None:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def load_for(
    meta: dict[str, Any],
    override: str | None = None,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    *,
    image: bool = True,
) -> LoadedClip:
    """The CLIP model an artifact was made with: by its recorded name, else its recorded path.

    `override` (a name or path) replaces the recorded one and must have the same digest (a
    bare `open_clip:ARCH` that is the recorded one keeps the recorded weights);
    `device`, `precision` and `image` are as in load.
    """
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    recorded = meta.get("model") or {}
    candidates = recorded_refs(recorded, override)
    if not candidates:
        raise ArtifactError("the artifact records no CLIP model: pass --model NAME_OR_PATH")
    override = override if candidates == [override] else None  # a bare recorded open_clip:ARCH
    last: Exception | None = None
    for cand in candidates:
        try:
            loaded = load(cand, device, precision, image=image)
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


def tokenize(texts: list[str], model: Any = None) -> torch.Tensor:
    """The model's tokenizer (CLIP's when `model` is None), its context length per text."""
    if isinstance(model, OpenClip):
        return model.tokenizer(texts)
    # clip.tokenize's arithmetic (context 77, no truncation, int64) on the shared tokenizer,
    # without importing clip.clip (_clip_text)
    tok = _simple_tokenizer()
    sot, eot = tok.encoder["<|startoftext|>"], tok.encoder["<|endoftext|>"]
    out = torch.zeros(len(texts), CONTEXT_LENGTH, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [sot, *tok.encode(text), eot]
        if len(ids) > CONTEXT_LENGTH:
            raise UsageError(f"{text!r} is {len(ids)} tokens, more than CLIP's {CONTEXT_LENGTH}")
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def bpe_encode(model: Any, text: str) -> list[int]:
    """The BPE token ids of `text` (no [SOS]/[EOT]) under the model's tokenizer."""
    if isinstance(model, OpenClip):
        return model.tokenizer.encode(text)
    return _simple_tokenizer().encode(text)


@functools.cache
def _simple_tokenizer() -> Any:
    """CLIP's BPE tokenizer, built once per process: building one reads and parses the 1.3 MB
    gzipped merge list (about 0.1-0.3 s), which once per class name dominated a run's start."""
    return _clip_text().simple_tokenizer.SimpleTokenizer()


def encode_prompts(model: Any, prompts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The text tower over prompt token embeddings [C, T, width] with all positions (CoOp's
    TextEncoder; open_clip's text forward for its models): [C, embed_dim], not normalised."""
    if isinstance(model, OpenClip):
        return model.encode_embeddings(prompts, tokens)
    x = prompts + model.positional_embedding.to(prompts.dtype)
    x = x.permute(1, 0, 2)
    x = model.transformer(x)
    x = x.permute(1, 0, 2)
    x = model.ln_final(x)
    eot = tokens.argmax(dim=-1)
    return x[torch.arange(x.shape[0], device=x.device), eot] @ model.text_projection


@torch.no_grad()
def encode_texts(model: Any, texts: list[str], chunk: int = 256) -> torch.Tensor:
    """Text features (not normalised) for plain strings, float32.

    The text tower is causal and only the end-of-text position is read, so positions after the
    longest text's end never matter: the tower runs on the first (max EOT + 1) positions only,
    the same features as `model.encode_text` on all 77 (tests hold them together), several
    times faster for short prompts. Chunks of `chunk` texts bound the memory. An open_clip tower
    the fast encoder does not apply to (fast_text) runs its own encode_text on all positions.
    """
    device = model.text_projection.device
    tokens = tokenize(texts, model).to(device)
    out = [_encode_truncated(model, tokens[i : i + chunk]) for i in range(0, len(tokens), chunk)]
    return torch.cat(out) if out else torch.zeros(0, model.text_projection.shape[1])


def _encode_truncated(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    if isinstance(model, OpenClip):
        if not model.fast:
            return model.encode_text(tokens).float()
        length = int(tokens.argmax(dim=-1).max()) + 1
        cut = tokens[:, :length]
        return model.encode_embeddings(model.token_embedding(cut), cut).float()
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
    clip = _clip_text()
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


def build_open_clip(arch: str, seed: int = 0, **overrides: Any) -> OpenClip:
    """A randomly initialised open_clip model of `arch`, frozen, for tests; `overrides`
    replace top-level config entries (e.g. a smaller `text_cfg`), as create_model allows."""
    oc = _open_clip()
    torch.manual_seed(seed)
    with _quiet():
        model = oc.create_model(arch, pretrained=None, **overrides)
    wrapped = OpenClip(model, oc.get_tokenizer(arch), arch)
    _freeze(wrapped)
    return wrapped


def save_open_clip(model: OpenClip, path: Path | str) -> Path:
    """Save an open_clip model's state dict as a checkpoint `--pretrained PATH` loads."""
    from nlp_cli.artifacts import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(model.inner.state_dict(), tmp)
    return path
