"""The label-issue report: confident learning over every split, its warnings, its pictures."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA

from nlp_cli import label_issues as cl
from nlp_cli import purify
from nlp_cli.datasets import shapes

CLASSES = ["red circle", "blue star", "green square", "yellow triangle", "purple cross"]
COUNTS = {"train": 16, "val": 6, "test": 10}
# (split, class moved from, class moved to, how many)
PLANTED = [
    ("train", 0, 1, 1),
    ("train", 2, 3, 1),
    ("train", 4, 0, 1),
    ("val", 1, 2, 1),
    ("val", 3, 4, 1),
    ("test", 2, 0, 1),
    ("test", 4, 1, 1),
]


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The easy world's images, generated as `nlp download shapes-easy` does (fewer per class)."""
    return shapes.generate(tmp_path_factory.mktemp("world"), seed=0, counts=COUNTS)


def user_folder(world: Path, dest: Path) -> tuple[Path, set[str]]:
    """train/val/test folders of five class folders; PLANTED images moved to another class."""
    images = world / "images"
    split = json.loads((world / shapes.SPLIT_FILE).read_text())
    planted = set()
    for name in ("train", "val", "test"):
        per_class: dict[str, list[str]] = {}
        for rel, _, cname in split[name]:
            if cname in CLASSES:
                per_class.setdefault(cname, []).append(rel)
        for cname, rels in per_class.items():
            folder = dest / name / cname
            folder.mkdir(parents=True, exist_ok=True)
            for rel in rels:
                shutil.copy(images / rel, folder / Path(rel).name)
        for s, a, b, k in PLANTED:
            if s != name:
                continue
            for rel in per_class[CLASSES[a]][:k]:
                src = dest / name / CLASSES[a] / Path(rel).name
                target = dest / name / CLASSES[b] / f"moved_{Path(rel).name}"
                src.rename(target)
                planted.add(target.relative_to(dest).as_posix())
    return dest, planted


def test_self_confidence_rank_and_estimate_agree_with_cleanlab():
    from cleanlab.count import num_label_issues
    from cleanlab.rank import get_label_quality_scores

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(30)
    logits = 4 * torch.nn.functional.one_hot(labels, 4).double() + torch.randn(120, 4, generator=g)
    given = labels.clone()
    given[:12] = (given[:12] + 1) % 4
    probs = logits.softmax(dim=1)
    res = cl.find_label_issues(probs, given)
    ref = get_label_quality_scores(given.numpy(), probs.numpy(), method="self_confidence")
    assert torch.allclose(res.scores, torch.from_numpy(ref).double())
    assert res.num_issues == num_label_issues(given.numpy(), probs.numpy())
    assert int(res.flagged.sum()) == res.num_issues
    assert sorted(res.rank.tolist()) == list(range(1, 121))
    assert set(res.rank[:12].tolist()) <= set(range(1, 20))
    assert res.warnings == []


def test_warnings_near_chance_not_separable_too_few():
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(5).repeat(40)
    probs = torch.rand(200, 5, generator=g).softmax(dim=1)
    feats = torch.randn(200, 32, generator=g)
    res = cl.find_label_issues(probs, labels, feats)
    kinds = {w.split(":")[0] for w in res.warnings}
    assert {"near_chance", "not_separable"} <= kinds
    few = cl.find_label_issues(probs[:12], labels[:12])
    assert "too_few" in {w.split(":")[0] for w in few.warnings}


def test_nearest_mean_leaves_the_sample_out():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert cl.nearest_mean_agreement(x, y, 2) == 1.0
    assert cl.nearest_mean_agreement(x, torch.tensor([0, 1, 0, 1]), 2) == 0.0


def test_every_purifier_scores_the_probability_of_the_given_label():
    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1)
    labels = torch.arange(4).repeat(25)
    image = 3 * text[labels] + torch.randn(100, 16, generator=g) * 0.5
    given = labels.clone()
    given[:20] = (given[:20] + 1) % 4
    for name in purify.list_purifiers():
        res = purify.purify(name, image, text, given, 20.0)
        assert res.scores.shape == (100,) and res.scores.dtype == torch.float32
        assert float(res.scores.min()) >= 0 and float(res.scores.max()) <= 1 + 1e-6, name
        # higher score = the given label more likely right: the wrong ones score lower
        assert float(res.scores[:20].mean()) < float(res.scores[20:].mean()), name
    zs = purify.purify("zeroshot", image, text, given, 20.0)
    probs = purify.class_logits(image, text, 20.0).softmax(dim=1)
    assert torch.allclose(
        zs.scores.double(), probs.gather(1, given.unsqueeze(1)).squeeze(1), atol=1e-6
    )
    ot = purify.promptot(image, text, given, 20.0, keep_coupling=True)
    row = ot.coupling / ot.coupling.sum(dim=1, keepdim=True)
    assert torch.allclose(
        ot.scores.double(), row.gather(1, given.unsqueeze(1)).squeeze(1), atol=1e-6
    )


def test_cleanlab_purifier_flags_cleanlabs_estimate():
    from cleanlab.count import num_label_issues

    g = torch.Generator().manual_seed(2)
    text = torch.nn.functional.normalize(torch.randn(5, 16, generator=g), dim=1)
    labels = torch.arange(5).repeat(30)
    image = 3 * text[labels] + torch.randn(150, 16, generator=g) * 0.5
    given = labels.clone()
    given[:30] = (given[:30] + 2) % 5
    res = purify.purify("cleanlab", image, text, given, 20.0)
    probs = purify.class_logits(image, text, 20.0).softmax(dim=1)
    n = num_label_issues(given.numpy(), probs.numpy())
    assert int((~res.clean).sum()) == n == res.info["num_label_issues"]
    noisy = given != labels
    assert int((noisy & ~res.clean).sum()) >= 0.8 * int(noisy.sum())
    with pytest.raises(Exception, match="filter"):
        purify.purify("cleanlab", image, text, given, 20.0, filter_by="nope")


def test_done_when_the_report_finds_planted_errors_in_every_split(cli, world, tmp_path):
    folder, planted = user_folder(world, tmp_path / "my_photos")
    r = cli("embed", folder, "--model", "tiny-shapes-easy")
    assert r.code == 0, r.stderr
    feats = r.stdout.strip()
    out, sheet, page = tmp_path / "report.csv", tmp_path / "sheet.png", tmp_path / "page.html"
    r = cli("label-issues", feats, "--out", out, "--sheet", sheet, "--html", page, "--json")
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    rows = _read(out)
    n = sum(COUNTS.values()) * len(CLASSES)
    assert len(rows) == n and {r["split"] for r in rows} == {"train", "val", "test"}
    assert list(rows[0]) == [
        "path",
        "split",
        "given_label",
        "suggested_label",
        "score",
        "rank",
        "flagged",
        "index",
    ]
    assert [int(r["rank"]) for r in rows] == list(range(1, n + 1))
    assert all(0 <= float(r["score"]) <= 1 for r in rows)
    rel = {Path(r["path"]).relative_to(folder).as_posix(): r for r in rows}
    assert set(rel) >= planted
    # the planted errors are the top of the ranking, in every split
    for split in ("train", "val", "test"):
        mine = [r for r in rows if r["split"] == split]
        k = sum(1 for p in planted if p.startswith(split + "/"))
        top = {Path(r["path"]).relative_to(folder).as_posix() for r in mine[:k]}
        assert top == {p for p in planted if p.startswith(split + "/")}, split
    for p in planted:
        row = rel[p]
        assert row["flagged"] == "1"
        moved_from = [c for c in CLASSES if c.replace(" ", "_") in p]
        assert row["suggested_label"] != row["given_label"]
        del moved_from
    # it says how many it thinks there are, and flags that many
    est = summary["num_label_issues"]
    assert len(planted) <= est <= 2 * len(planted)
    assert sum(int(r["flagged"]) for r in rows) == est
    assert f"estimated {est} wrong labels of {n}" in r.stderr
    assert "noise rate" in r.stderr and "warning" not in r.stderr.lower()
    from PIL import Image

    with Image.open(sheet) as im:
        assert im.width > 100 and im.height > 100
    text = page.read_text()
    assert text.count("<img") == est and "data:image/png;base64," in text


def test_done_when_the_model_is_at_chance_it_warns(cli, world, tmp_path, tiny_clip):
    folder, _ = user_folder(world, tmp_path / "my_photos")
    r = cli("embed", folder, "--model", tiny_clip)
    assert r.code == 0, r.stderr
    r = cli("label-issues", r.stdout.strip(), "--out", tmp_path / "r.csv")
    assert r.code == 0, r.stderr
    assert "near_chance" in r.stderr


def test_label_issues_on_a_label_set_reports_detection(cli, features, tmp_path):
    from conftest import make_sym_labelset

    labels = make_sym_labelset(features, tmp_path / "ls.safetensors", rate=0.2)
    r = cli("label-issues", labels, "--out", tmp_path / "r.csv", "--json", "--method", "ot")
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["detection"]["n_noisy"] == 20
    assert "against the known true labels" in r.stderr
    bad = cli("label-issues", labels, "--splits", "train,holdout")
    assert bad.code == 2 and "--splits" in bad.stderr


@pytest.mark.skipif(not (SHARED_DATA / "mini" / "eurosat").is_dir(), reason="no mini EuroSAT")
def test_label_issues_on_a_csv_of_real_images(cli, tmp_path):
    root = SHARED_DATA / "mini" / "eurosat" / "2750"
    split = json.loads((root.parent / "split_zhou_EuroSAT.json").read_text())
    lines = ["path,label,split"]
    for name in ("train", "test"):
        for rel, _, cname in split[name]:
            if cname in ("Forest", "Sea or Lake", "Highway or Road"):
                lines.append(f"{root / rel},{cname},{name}")
    (tmp_path / "mine.csv").write_text("\n".join(lines) + "\n")
    r = cli("embed", tmp_path / "mine.csv", "--model", "tiny-shapes-easy")
    assert r.code == 0, r.stderr
    r = cli("label-issues", r.stdout.strip(), "--out", tmp_path / "r.csv")
    assert r.code == 0, r.stderr
    rows = _read(tmp_path / "r.csv")
    assert {r["split"] for r in rows} == {"train", "test"}
    # the tiny CLIP is not real CLIP: it does not know satellite images, and says so
    assert "warning" in r.stderr.lower()


def test_purify_report_keeps_its_columns_and_warns_at_chance(cli, world, tmp_path, tiny_clip):
    folder, _ = user_folder(world, tmp_path / "my_photos")
    feats = cli("embed", folder, "--model", tiny_clip).stdout.strip()
    labels = cli("corrupt", feats).stdout.strip()
    report = tmp_path / "suspects.csv"
    r = cli("purify", labels, "--report", report, "--method", "cleanlab", "--json")
    assert r.code == 0, r.stderr
    rows = _read(report)
    assert list(rows[0])[:5] == ["path", "given_label", "suggested_label", "score", "index"]
    assert {"split", "rank"} <= set(rows[0]) and {r["split"] for r in rows} == {"train"}
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    assert "near_chance" in r.stderr and "training split only" in r.stderr
    assert len(rows) == json.loads(r.stdout)["num_label_issues"]


def test_probe_probabilities_find_the_planted_errors_without_clip_text(cli, world, tmp_path):
    folder, planted = user_folder(world, tmp_path / "my_photos")
    feats = cli("embed", folder, "--model", "tiny-shapes-easy").stdout.strip()
    out = tmp_path / "probe.csv"
    r = cli("label-issues", feats, "--probs", "probe", "--out", out, "--json")
    assert r.code == 0, r.stderr
    rows = _read(out)
    top = {Path(r["path"]).relative_to(folder).as_posix() for r in rows[: 2 * len(planted)]}
    assert planted <= top
    assert json.loads(r.stdout)["probs"] == "probe"
    bad = cli("label-issues", feats, "--probs", "probe", "--method", "ot")
    assert bad.code == 2 and "--probs probe" in bad.stderr


def test_probe_is_out_of_fold():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 8, generator=g)
    y = torch.arange(3).repeat(20)
    p = cl.probe_probabilities(x, y, 3)
    assert p.shape == (60, 3) and torch.allclose(p.sum(dim=1), torch.ones(60, dtype=p.dtype))
    # pure noise features: a probe that saw each sample's own label would fit it
    assert float(cl.self_confidence(p, y).mean()) < 0.6


def test_label_issues_never_writes_over_its_input(cli, features, tmp_path):
    before = features.read_bytes()
    for flag in ("--out", "--sheet", "--html"):
        r = cli("label-issues", features, flag, features)
        assert r.code == 2 and flag in r.stderr and "destroy the input" in r.stderr
    assert features.read_bytes() == before
