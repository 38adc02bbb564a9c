"""open_clip backbones: prompt learning over open_clip text towers, held to open_clip's own
encode_text and to a reference forward written from its TextTransformer; loading, weights,
download and the pipeline end to end."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from nlp_cli import clip_model, prompt
from nlp_cli.datasets.download import DownloadError
from nlp_cli.errors import ArtifactError, NlpError, UsageError

open_clip = pytest.importorskip("open_clip")
from open_clip.transformer import text_global_pool  # noqa: E402

TINY_VISION = {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16}
SMALL_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
# (arch, config overrides): the towers keep their family, pooling and causality; only the sizes
# shrink, except where noted.
ARCHS = {
    # ViT-B-32's real, unmodified text tower (12 layers, width 512, 8 heads, GELU)
    "ViT-B-32": {"vision_cfg": TINY_VISION},
    # OpenAI-weight layout: QuickGELU
    "ViT-B-32-quickgelu": {"embed_dim": 32, "vision_cfg": TINY_VISION, "text_cfg": SMALL_TEXT},
    # a ModifiedResNet image tower
    "RN50": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
        "text_cfg": SMALL_TEXT,
    },
    # ViT-L-14's text width 768 and 12 heads, two of its layers
    "ViT-L-14": {
        "embed_dim": 32,
        "vision_cfg": TINY_VISION,
        "text_cfg": {**SMALL_TEXT, "width": 768, "heads": 12},
    },
    # a text tower with LayerScale after attention and MLP
    "ViT-B-16": {
        "embed_dim": 32,
        "vision_cfg": TINY_VISION,
        "text_cfg": {**SMALL_TEXT, "ls_init_value": 0.5},
    },
}
NAMES = ["red circle", "blue_square", "a rather long class name with several words", "x"]
_built: dict[str, clip_model.OpenClip] = {}


def model_of(arch: str) -> clip_model.OpenClip:
    if arch not in _built:
        _built[arch] = clip_model.build_open_clip(arch, seed=0, **ARCHS[arch])
    return _built[arch]


def reference(model: clip_model.OpenClip, prompts: torch.Tensor, tokens: torch.Tensor):
    """open_clip's CLIP.encode_text with the token embeddings replaced by `prompts`."""
    m = model.inner
    x = prompts + m.positional_embedding
    x = m.transformer(x, attn_mask=m.attn_mask)
    x = m.ln_final(x)
    x = text_global_pool(x, tokens, m.text_pool_type)
    return x @ m.text_projection


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    assert a.shape == b.shape
    err = float((a - b).abs().max() / b.abs().max())
    assert err <= rel, err


@pytest.mark.parametrize("arch", list(ARCHS))
def test_real_words_as_ctx_reproduce_open_clip_encode_text(arch):
    model = model_of(arch)
    assert model.fast
    learner = prompt.PromptLearner(model, NAMES, ctx_init="a photo of a")
    texts = [f"a photo of a {n.replace('_', ' ')}." for n in NAMES]
    with torch.no_grad():
        want = model.inner.encode_text(open_clip.get_tokenizer(arch)(texts))
        close(prompt.text_features(model, learner), want)
        close(prompt.plain_text_features(model, learner), want)
        close(clip_model.encode_texts(model, texts), want)


@pytest.mark.parametrize(
    ("arch", "position"),
    [(a, "end") for a in ARCHS] + [("ViT-B-32-quickgelu", "middle"), ("ViT-L-14", "middle")],
)
def test_fast_encoder_matches_open_clip_forward_and_ctx_gradients(arch, position):
    model = model_of(arch)
    gen = torch.Generator().manual_seed(1)
    learner = prompt.PromptLearner(model, NAMES, n_ctx=6, position=position, generator=gen)
    weight = torch.randn(len(NAMES), model.text_projection.shape[1], generator=gen)

    def run(fn):
        learner.ctx.grad = None
        feats = fn()
        (feats * weight).sum().backward()
        return feats.detach(), learner.ctx.grad.clone()

    want, want_grad = run(lambda: reference(model, learner(), learner.tokenized))
    got, got_grad = run(lambda: prompt.text_features(model, learner))
    close(got, want)
    close(got_grad, want_grad)


def test_plain_path_for_a_tower_that_pools_last_without_causal_mask(nlp_home):
    text = {**SMALL_TEXT, "pool_type": "last", "no_causal_mask": True}
    config_file(nlp_home, "tiny-last", custom_text=True, text_cfg=text)
    model = clip_model.load("open_clip:tiny-last@none").model
    assert not model.fast and model.attn_mask is None and model.pool_type == "last"
    learner = prompt.PromptLearner(model, NAMES, ctx_init="a photo of a")
    texts = [f"a photo of a {n.replace('_', ' ')}." for n in NAMES]
    with torch.no_grad():
        want = model.inner.encode_text(model.tokenizer(texts))
        close(prompt.text_features(model, learner), want)
        close(clip_model.encode_texts(model, texts), want)
    # the last position is padding, which a truncated encoder would cut: the features change
    # with what sits after EOT only through the full-length forward it keeps
    learner = prompt.PromptLearner(model, NAMES, n_ctx=4, generator=torch.Generator())
    t = model.tower
    x = learner() + t.positional_embedding
    x = t.ln_final(t.transformer(x, attn_mask=None))[:, -1] @ t.text_projection
    close(prompt.text_features(model, learner).detach(), x.detach())


def test_fp16_layout_keeps_layer_norm_in_fp32(nlp_home):
    config_file(nlp_home)
    loaded = clip_model.load("open_clip:tiny-oc@none", precision="bf16")
    assert loaded.model.dtype == torch.bfloat16
    learner = prompt.PromptLearner(loaded.model, NAMES, n_ctx=4, generator=torch.Generator())
    with torch.no_grad():
        fast = prompt.text_features(loaded.model, learner).float()
        plain = prompt.plain_text_features(loaded.model, learner).float()
    assert torch.isfinite(fast).all()
    assert float((fast - plain).abs().max() / plain.abs().max()) < 0.05
    assert not torch.equal(fast, torch.zeros_like(fast))


def config_file(home: Path, name: str = "tiny-oc", **overrides) -> Path:
    """An architecture config in open_clip's JSON format where the package reads extra ones."""
    cfg = {"embed_dim": 32, "vision_cfg": TINY_VISION, "text_cfg": SMALL_TEXT, **overrides}
    folder = clip_model.open_clip_configs_dir()
    assert folder.is_relative_to(home)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(cfg))
    return folder / f"{name}.json"


def test_load_by_file_and_random_weights(nlp_home, tmp_path):
    config_file(nlp_home)
    built = clip_model.build_open_clip("tiny-oc", seed=3)
    ckpt = clip_model.save_open_clip(built, tmp_path / "tiny-oc.pt")
    loaded = clip_model.load(clip_model.model_ref("open_clip:tiny-oc", str(ckpt)))
    ident = loaded.identity
    assert ident["name"] == "open_clip:tiny-oc" and ident["pretrained"] == str(ckpt.resolve())
    assert ident["text_encoder"] == "fast" and ident["input_resolution"] == 32
    tokens = built.tokenizer(["a photo of a dog."])
    with torch.no_grad():
        assert torch.equal(loaded.model.encode_text(tokens), built.inner.encode_text(tokens))
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model.encode_image(image), built.inner.encode_image(image))
    # random weights only when asked, the same in every process (seeded), told by their digest
    a = clip_model.load("open_clip:tiny-oc@none").identity
    clip_model._loaded.clear()
    b = clip_model.load("open_clip:tiny-oc@none").identity
    assert a["digest"] == b["digest"] != ident["digest"] and a["path"] == ""
    # a bare open_clip:ARCH override keeps the artifact's recorded weights
    again = clip_model.load_for({"model": ident}, "open_clip:tiny-oc")
    assert again.identity["digest"] == ident["digest"]


@pytest.mark.parametrize("weights", ["file", "none"])
def test_text_only_load_keeps_the_identity_and_the_text_tower(nlp_home, tmp_path, weights):
    """image=False: open_clip builds the whole model, the image tower is dropped after the
    identity is taken (random weights are digested with it), the text tower is unchanged."""
    config_file(nlp_home)
    ckpt = clip_model.save_open_clip(clip_model.build_open_clip("tiny-oc", seed=3), tmp_path / "w")
    ref = clip_model.model_ref("open_clip:tiny-oc", str(ckpt) if weights == "file" else "none")
    clip_model._loaded.clear()
    text = clip_model.load(ref, image=False)
    clip_model._loaded.clear()
    full = clip_model.load(ref)
    assert text.identity == full.identity and not text.image and text.preprocess is None
    assert text.dtype == full.dtype and text.logit_scale == full.logit_scale
    assert sum(p.numel() for p in text.model.visual.parameters()) == 0
    assert text.model.visual.input_resolution == full.model.visual.input_resolution == 32
    tokens = text.model.tokenizer(NAMES)
    with torch.no_grad():
        assert torch.equal(text.model.encode_text(tokens), full.model.encode_text(tokens))
        a = clip_model.class_prototypes(text.model, NAMES)
        assert torch.equal(a, clip_model.class_prototypes(full.model, NAMES))
        with pytest.raises(NlpError, match="without its image tower"):
            text.model.encode_image(torch.randn(1, 3, 32, 32))
    assert clip_model.load(ref, image=False) is full
    clip_model._loaded.clear()


def test_bad_references_fail_in_one_line(nlp_home, tmp_path):
    config_file(nlp_home)
    with pytest.raises(UsageError, match="needs its weights.*--pretrained none"):
        clip_model.load("open_clip:tiny-oc")
    with pytest.raises(UsageError, match="unknown open_clip architecture 'ViT-B-33'.*ViT-B-32"):
        clip_model.load("open_clip:ViT-B-33@none")
    with pytest.raises(UsageError, match="no file, no tag"):
        clip_model.load("open_clip:ViT-B-32@laion2b_s34b_b79")
    with pytest.raises(ArtifactError, match="not downloaded: run `nlp download"):
        clip_model.load("open_clip:ViT-B-32@laion2b_s34b_b79k")
    with pytest.raises(UsageError, match="applies to open_clip"):
        clip_model.model_ref("ViT-B/32", "x.pt")
    other = tmp_path / "other.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(ArtifactError, match="not a loadable checkpoint for open_clip:tiny-oc"):
        clip_model.load(f"open_clip:tiny-oc@{other}")
    with pytest.raises(UsageError, match="Hugging Face"):
        clip_model.load("open_clip:ViT-B-16-SigLIP@none")


class _Server:
    """Serves `files` by path; anything else is a 404."""

    def __init__(self, files: dict[str, bytes]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                data = files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_tag_through_open_clip_and_offline_failure(nlp_home, tmp_path, monkeypatch, cli):
    config_file(nlp_home)
    built = clip_model.build_open_clip("tiny-oc", seed=5)
    ckpt = clip_model.save_open_clip(built, tmp_path / "weights.bin")
    server = _Server({"/weights.bin": ckpt.read_bytes()})
    tags = {"web": {"url": f"{server.url}/weights.bin"}, "gone": {"url": f"{server.url}/x.bin"}}
    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model", lambda arch: list(tags))
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda arch, tag: tags[tag])
    try:
        got = cli("download", "--model", "open_clip:tiny-oc", "--pretrained", "web")
        assert got.code == 0, got.stderr
        path = Path(got.stdout.strip())
        assert path == clip_model.open_clip_tag_dir("tiny-oc", "web") / "weights.bin"
        assert path.read_bytes() == ckpt.read_bytes()
        loaded = clip_model.load("open_clip:tiny-oc@web")
        assert loaded.identity["pretrained"] == "web" and loaded.identity["path"] == str(path)
        # a failed download: one line, non-zero, nothing written, the earlier tag untouched
        bad = cli("download", "--model", "open_clip:tiny-oc", "--pretrained", "gone")
        assert bad.code != 0 and bad.stderr.strip().count("\n") == 0
        assert "cannot download open_clip:tiny-oc weights gone" in bad.stderr
        assert not clip_model.open_clip_tag_dir("tiny-oc", "gone").exists()
        assert sorted(p.name for p in path.parent.parent.iterdir()) == ["web"]
        assert path.read_bytes() == ckpt.read_bytes()
    finally:
        server.close()


def test_download_offline_from_the_hub(monkeypatch):
    # offline as HF_HUB_OFFLINE=1 makes it (the variable is read when the hub is imported)
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(
        open_clip,
        "get_pretrained_cfg",
        lambda arch, tag: {"hf_hub": "timm/vit_base_patch32_clip_224.openai/"},
    )
    from nlp_cli.datasets import download as dl

    with pytest.raises(DownloadError, match="cannot download open_clip:ViT-B-32 weights openai"):
        dl.fetch_open_clip("ViT-B-32", "openai")
    assert not clip_model.open_clip_tag_dir("ViT-B-32", "openai").exists()
    assert list(clip_model.open_clip_tag_dir("ViT-B-32", "openai").parent.iterdir()) == []


def test_pipeline_end_to_end_on_a_local_open_clip_checkpoint(nlp_home, tmp_path, cli):
    from conftest import make_image_folder

    config_file(nlp_home)
    ckpt = clip_model.save_open_clip(
        clip_model.build_open_clip("tiny-oc", seed=2), tmp_path / "tiny.pt"
    )
    folder = make_image_folder(tmp_path / "images", train=6, test=3)
    model = ["--model", "open_clip:tiny-oc", "--pretrained", str(ckpt)]
    emb = cli("embed", str(folder), *model, "--device", "cpu")
    assert emb.code == 0, emb.stderr
    feats = Path(emb.stdout.strip())
    noisy = cli("corrupt", str(feats), "--sym", "0.3", "--seed", "1")
    assert noisy.code == 0, noisy.stderr
    trained = cli("train", noisy.stdout.strip(), "--epochs", "2", "--n-ctx", "4", "--device", "cpu")
    assert trained.code == 0, trained.stderr
    got = cli("eval", trained.stdout.strip(), "--json", "--device", "cpu")
    assert got.code == 0, got.stderr
    summary = json.loads(got.stdout)
    assert 0.0 <= summary["acc1"] <= 1.0 and 0.0 <= summary["acc5"] <= 1.0
    with pytest.raises(UsageError):
        clip_model.model_ref("tiny-shapes", str(ckpt))
    wrong = cli("embed", str(folder), "--model", "open_clip:tiny-oc", "--device", "cpu")
    assert wrong.code == 2 and "needs its weights" in wrong.stderr


def test_sweep_names_open_clip_weights_in_its_pretrained_key(tmp_path):
    from nlp_cli import sweep

    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "datasets: [shapes]\nmodel: open_clip:ViT-B-32\npretrained: w.pt\nmethods: [ce]\n"
    )
    assert sweep.load_grid(grid).model == "open_clip:ViT-B-32@w.pt"
    grid.write_text("datasets: [shapes]\nmodel: ViT-B/32\npretrained: w.pt\nmethods: [ce]\n")
    with pytest.raises(UsageError, match="pretrained: --pretrained applies to open_clip"):
        sweep.load_grid(grid)
