"""nlp predict: top-k labels of images straight from a prompt file, or zero-shot."""

import csv
import io
import json

import torch
from conftest import make_image_folder

from nlp_cli import artifacts


def _trained(cli, tiny_clip, tmp_path):
    imgs = make_image_folder(tmp_path / "imgs")
    feats = tmp_path / "feats.safetensors"
    assert cli("embed", imgs, "--model", tiny_clip, "--out", feats).code == 0
    prompt = tmp_path / "p.safetensors"
    r = cli("train", feats, "--epochs", "2", "--n-ctx", "4", "--batch-size", "6", "--out", prompt)
    assert r.code == 0, r.stderr
    return imgs, feats, prompt


def test_predict_csv_json_and_agreement_with_eval(cli, tiny_clip, tmp_path):
    imgs, feats, prompt = _trained(cli, tiny_clip, tmp_path)
    r = cli("predict", prompt, imgs / "test", "--top-k", "2")
    assert r.code == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 9 * 2 and set(rows[0]) == {"path", "rank", "label", "probability"}
    by_path: dict[str, list] = {}
    for row in rows:
        by_path.setdefault(row["path"], []).append(float(row["probability"]))
    assert all(p[0] >= p[1] and sum(p) <= 1 + 1e-6 for p in by_path.values())
    js = json.loads(cli("predict", prompt, imgs / "test", "--json").stdout)
    assert len(js["images"]) == 9 and js["classes"] == 3
    # top-1 equals the prompt's prediction on the cached (fp16) test features of the same images
    from nlp_cli import clip_model
    from nlp_cli.prompt import prompt_text_features

    art = artifacts.load(feats, "features")
    model = clip_model.load_for(art.meta).model
    with torch.no_grad():
        text = prompt_text_features(model, artifacts.load(prompt, "prompt"))
    cached = art.tensors["test.features"].float()
    want = (cached @ text.T).argmax(dim=1).tolist()
    top1 = {row["path"]: row["top"][0]["label"] for row in js["images"]}
    got = [top1[str(imgs / p)] for p in art.meta["paths"]["test"]]
    agree = sum(g == art.classnames[w] for g, w in zip(got, want, strict=True))
    assert agree >= 8  # fp16 rounding of the cached features may flip a near tie
    out = tmp_path / "preds.csv"
    r = cli("predict", prompt, imgs / "test", "--out", out)
    assert r.code == 0 and r.stdout.strip() == str(out) and out.read_text().startswith("path,")
    assert cli("predict", prompt, imgs / "test", "--out", prompt).code == 2


def test_zero_shot_predict_from_class_names(cli, tiny_clip, tmp_path):
    imgs = make_image_folder(tmp_path / "imgs")
    r = cli(
        "predict",
        imgs / "test",
        "--zero-shot",
        "class0,class1,class2",
        "--model",
        tiny_clip,
        "--json",
        "--top-k",
        "3",
    )
    assert r.code == 0, r.stderr
    js = json.loads(r.stdout)
    assert all(len(i["top"]) == 3 for i in js["images"])
    total = [sum(t["probability"] for t in i["top"]) for i in js["images"]]
    assert torch.allclose(torch.tensor(total), torch.ones(len(total)), atol=1e-5)
    assert cli("predict", imgs / "test", "--zero-shot", "a,b").code == 2  # no --model
