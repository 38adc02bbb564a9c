"""Loading CLIP's text tower only (`clip_model.load(..., image=False)`): the same text weights,
features and identity as the full model, no image-tower weights, a cache that never hands a
text-only model to a caller that encodes images, and stages whose outputs do not change."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import make_image_folder

from nlp_cli import artifacts, clip_model
from nlp_cli.errors import ArtifactError, NlpError
from nlp_cli.prompt import PromptLearner, text_features

NAMES = ["red circle", "blue_square", "a rather long class name with several words", "x"]


@pytest.fixture(autouse=True)
def fresh_cache():
    clip_model._loaded.clear()
    yield
    clip_model._loaded.clear()


def _jit_archive(path):
    """A traced CLIP saved as a TorchScript archive, the format OpenAI's downloads come in."""
    model = clip_model.build_tiny(seed=2)
    half = {k: v.half().float() for k, v in model.state_dict().items()}  # the fp16 file's values
    model.load_state_dict(half)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the attention's shape checks
        traced = torch.jit.trace(model, (torch.zeros(1, 3, 32, 32), clip_model.tokenize(["a"])))
    traced.save(str(path))
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One checkpoint per loader path: a ViT and a ModifiedResNet state dict, a JIT archive."""
    root = tmp_path_factory.mktemp("towers")
    resnet = clip_model.build_tiny(
        seed=1, vision_layers=(1, 1, 1, 1), vision_patch_size=None, image_resolution=64
    )
    return {
        "vit": clip_model.save_checkpoint(clip_model.build_tiny(seed=0), root / "vit.pt"),
        "resnet": clip_model.save_checkpoint(resnet, root / "rn.pt"),
        "jit": _jit_archive(root / "jit.pt"),
    }


def _text_state(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("visual.")}


@pytest.mark.parametrize("kind", ["vit", "resnet", "jit"])
@pytest.mark.parametrize("prec", ["fp32", "fp16"])
def test_text_only_model_is_the_full_models_text_tower(checkpoints, kind, prec):
    path = str(checkpoints[kind])
    text = clip_model.load(path, precision=prec, image=False)
    clip_model._loaded.clear()
    full = clip_model.load(path, precision=prec)
    assert not text.image and full.image and text.preprocess is None
    assert text.identity == full.identity  # the digest is the file's, whichever towers load
    assert text.dtype == full.dtype == clip_model.weight_dtype(prec)
    assert text.logit_scale == full.logit_scale
    mine, theirs = _text_state(text.model), _text_state(full.model)
    assert list(mine) == list(theirs)
    for k, v in mine.items():
        assert v.dtype == theirs[k].dtype and torch.equal(v, theirs[k]), k
    assert sum(p.numel() for p in text.model.visual.parameters()) == 0
    assert not any(t.is_meta for t in text.model.state_dict().values())
    with torch.no_grad():
        tokens = clip_model.tokenize(NAMES)
        assert torch.equal(text.model.encode_text(tokens), full.model.encode_text(tokens))
        a = clip_model.class_prototypes(text.model, NAMES)
        b = clip_model.class_prototypes(full.model, NAMES)
        assert torch.equal(a, b)
        fast = [
            text_features(m, PromptLearner(m, NAMES, generator=torch.Generator().manual_seed(1)))
            for m in (text.model, full.model)
        ]
        assert torch.equal(*fast)


def test_text_only_never_builds_the_full_model(tiny_clip, monkeypatch):
    clip = clip_model._clip()

    def refuse(*args, **kwargs):
        raise AssertionError("clip.load builds (and initialises) the image tower")

    monkeypatch.setattr(clip, "load", refuse)
    monkeypatch.setattr(clip.model, "build_model", refuse)
    loaded = clip_model.load(str(tiny_clip), image=False)
    assert loaded.identity["input_resolution"] == 32
    with pytest.raises(ArtifactError, match="not a loadable"):  # the full model would build it
        clip_model.load(str(tiny_clip))


def test_text_only_model_refuses_images_in_one_line(tiny_clip):
    model = clip_model.load(str(tiny_clip), image=False).model
    with pytest.raises(NlpError, match="without its image tower") as e:
        model.encode_image(torch.zeros(1, 3, 32, 32))
    assert "\n" not in str(e.value)


def test_cache_never_hands_a_text_only_model_to_an_image_caller(tiny_clip):
    path = str(tiny_clip)
    text = clip_model.load(path, image=False)
    assert clip_model.load(path, image=False) is text
    full = clip_model.load(path)
    assert full is not text and full.image
    assert clip_model.load(path) is full
    assert clip_model.load(path, image=False) is full  # the full model serves text callers
    meta = {"model": full.identity}
    assert clip_model.load_for(meta, image=False) is full
    with torch.no_grad():
        assert full.model.encode_image(torch.zeros(1, 3, 32, 32)).shape == (1, 32)


def _train_and_eval(cli, features, out):
    prompt = out / "p.safetensors"
    r = cli(
        "train", features, "--epochs", "2", "--n-ctx", "4", "--batch-size", "8", "--out", prompt
    )
    assert r.code == 0, r.stderr
    runs = {
        "prompt": cli("eval", prompt, "--json"),
        "zero-shot": cli("eval", "--zero-shot", features, "--json", "--split", "val"),
        "untrained": cli("eval", "--untrained", features, "--seed", "3", "--json"),
    }
    metrics = {}
    for name, r in runs.items():
        assert r.code == 0, r.stderr
        m = json.loads(r.stdout)
        m.pop("environment", None)
        m.pop("prompt", None)  # the prompt file's path
        metrics[name] = m
    art = artifacts.load(prompt, "prompt")
    history = [{k: v for k, v in h.items() if "time" not in k} for h in art.meta["history"]]
    return art.tensors, history, metrics


def test_train_and_eval_give_the_same_prompt_and_metrics_as_with_the_full_model(
    cli, features, tmp_path, monkeypatch
):
    (tmp_path / "text").mkdir()
    (tmp_path / "full").mkdir()
    clip_model._loaded.clear()
    text = _train_and_eval(cli, features, tmp_path / "text")
    assert clip_model._loaded and not any(x.image for x in clip_model._loaded.values())

    real = clip_model.load
    monkeypatch.setattr(clip_model, "load", lambda *a, image=True, **kw: real(*a, image=True, **kw))
    clip_model._loaded.clear()
    full = _train_and_eval(cli, features, tmp_path / "full")
    assert all(x.image for x in clip_model._loaded.values())

    assert set(text[0]) == set(full[0])
    for k, v in text[0].items():
        assert torch.equal(v, full[0][k]), k
    assert text[1] == full[1] and text[2] == full[2]


def test_stages_that_encode_images_still_get_the_image_tower(cli, tiny_clip, tmp_path):
    imgs = make_image_folder(tmp_path / "imgs")
    feats = tmp_path / "feats.safetensors"
    assert cli("embed", imgs, "--model", tiny_clip, "--out", feats).code == 0
    clip_model._loaded.clear()
    assert cli("eval", "--zero-shot", feats, "--json").code == 0
    (cached,) = clip_model._loaded.values()
    assert not cached.image
    out = tmp_path / "online.safetensors"
    args = ("--epochs", "1", "--n-ctx", "4", "--batch-size", "4", "--augment", "online")
    r = cli("train", feats, *args, "--out", out)
    assert r.code == 0, r.stderr
    (cached,) = clip_model._loaded.values()
    assert cached.image
    r = cli("predict", out, imgs / "test", "--json")
    assert r.code == 0, r.stderr
    assert len(json.loads(r.stdout)["images"]) == 9


TOKENIZE_TEXTS = [
    "a photo of a red on blue.",
    "X X X X café déjà-vu, 3.5 µm!",
    "  spaces   and\ttabs  ",
    "",
    "word " * 74,  # 74 tokens + [SOS] + [EOT] = 76: fits
]


def test_tokenize_is_clips_tokenize():
    """clip_model.tokenize (on the shared BPE tokenizer) against clip-anytorch's own
    clip.tokenize: the same ids, padding and dtype; too long is one clear error."""
    theirs = clip_model._clip().tokenize(TOKENIZE_TEXTS)
    ours = clip_model.tokenize(TOKENIZE_TEXTS)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape == (len(TOKENIZE_TEXTS), 77)
    assert torch.equal(ours, theirs)
    with pytest.raises(RuntimeError):
        clip_model._clip().tokenize(["word " * 76])
    with pytest.raises(NlpError, match="more than CLIP's 77"):
        clip_model.tokenize(["word " * 76])


TEXT_PROCESS = """
import sys
from nlp_cli import clip_model
from nlp_cli.prompt import PromptLearner, text_features
loaded = clip_model.load("tiny-shapes", image=False)
feats = text_features(loaded.model, PromptLearner(loaded.model, ["red on blue", "blue on red"]))
assert feats.shape[0] == 2
heavy = ("torchvision", "pkg_resources", "clip.clip", "torch._dynamo")
heavy = sorted(m for m in heavy if m in sys.modules)
print("heavy:", ",".join(heavy))
import clip  # any later user of the package gets all of it, with the one clip.model
assert callable(clip.load) and callable(clip.tokenize) and "ViT-B/16" in clip.available_models()
assert isinstance(loaded.model, clip.model.CLIP) and "torchvision" in sys.modules
from clip import tokenize
print("ok")
"""


def test_text_tower_process_never_imports_torchvision_and_clip_stays_whole():
    """A process that needs only the text tower does not import clip's __init__ (torchvision
    and pkg_resources, ~1 s a stage) nor, for a small tower, torch._dynamo (meta
    initialisation imports it, ~2 s); code that then uses `clip` gets the whole package."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", TEXT_PROCESS], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["heavy:", "ok"], done.stdout


def test_small_and_large_text_towers_load_the_same_weights_and_leave_the_rng(
    tiny_clip, monkeypatch
):
    """A tower under META_ABOVE weights is built on the CPU (its random init under fork_rng),
    a larger one on the meta device: the same assigned weights and features either way, and
    torch's global RNG is where it was."""
    state = torch.random.get_rng_state()
    small = clip_model.load(str(tiny_clip), image=False).model
    assert torch.equal(torch.random.get_rng_state(), state)
    clip_model._loaded.clear()
    monkeypatch.setattr(clip_model, "META_ABOVE", 0)
    large = clip_model.load(str(tiny_clip), image=False).model
    ours, theirs = small.state_dict(), large.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    learner = PromptLearner(small, NAMES, generator=torch.Generator().manual_seed(0))
    again = PromptLearner(large, NAMES, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(text_features(small, learner), text_features(large, again))
