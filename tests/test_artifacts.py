import json

import pytest
import torch

from nlp_cli import artifacts
from nlp_cli.errors import ArtifactError


def _labelset(path, classnames=("a", "b"), digest="d1"):
    t = {
        "labels": torch.tensor([0, 1, 1]),
        "true_labels": torch.tensor([0, 1, 0]),
        "index": torch.arange(3),
    }
    meta = {"classnames": list(classnames), "model": {"name": "m", "digest": digest}}
    return artifacts.save(path, "labelset", t, meta)


def test_roundtrip_records_kind_schema_version_and_digest(tmp_path):
    p = _labelset(tmp_path / "l.safetensors")
    a = artifacts.load(p, "labelset")
    assert a.kind == "labelset" and a.meta["schema"] == artifacts.SCHEMA
    assert a.meta["nlp_version"]
    assert a.classnames == ["a", "b"]
    assert torch.equal(a.tensors["labels"], torch.tensor([0, 1, 1]))
    assert len(a.digest) == 64 and a.ref()["digest"] == a.digest


def test_metadata_values_are_json(tmp_path):
    from safetensors import safe_open

    p = _labelset(tmp_path / "l.safetensors")
    raw = safe_open(str(p), "pt").metadata()
    assert json.loads(raw["kind"]) == "labelset"
    assert json.loads(raw["classnames"]) == ["a", "b"]


def test_wrong_kind_is_refused_in_one_line(tmp_path):
    p = _labelset(tmp_path / "l.safetensors")
    with pytest.raises(ArtifactError, match="is a labelset artifact, but a prompt is expected"):
        artifacts.load(p, "prompt")


@pytest.mark.parametrize("damage", ["truncate", "random"])
def test_damaged_file_is_refused(tmp_path, damage):
    p = _labelset(tmp_path / "l.safetensors")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2] if damage == "truncate" else bytes(range(256)) * 4)
    with pytest.raises(ArtifactError, match="truncated|damaged|not"):
        artifacts.load(p)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ArtifactError, match="no such file"):
        artifacts.load(tmp_path / "nope.safetensors")
    with pytest.raises(ArtifactError, match="is a folder"):
        artifacts.load(tmp_path)


def test_missing_required_tensor_is_refused_on_save(tmp_path):
    with pytest.raises(ValueError, match="needs tensors"):
        artifacts.save(tmp_path / "x", "prompt", {"other": torch.zeros(1)}, {})


def test_failed_write_leaves_old_file_intact(tmp_path):
    p = _labelset(tmp_path / "l.safetensors")
    before = p.read_bytes()
    with pytest.raises(RuntimeError):
        with artifacts.atomic_path(p) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["l.safetensors"]


def test_unwritable_folder_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ArtifactError, match="cannot write"):
        artifacts.atomic_write_text(blocker / "sub" / "out.json", "{}")


def test_compatibility_checks_classes_and_model(tmp_path):
    a = artifacts.load(_labelset(tmp_path / "a.safetensors"))
    b = artifacts.load(_labelset(tmp_path / "b.safetensors", classnames=("a", "c")))
    c = artifacts.load(_labelset(tmp_path / "c.safetensors", digest="d2"))
    artifacts.check_compatible(a, a, "x")
    with pytest.raises(ArtifactError, match="other classes"):
        artifacts.check_compatible(a, b, "x")
    with pytest.raises(ArtifactError, match="another CLIP model"):
        artifacts.check_compatible(a, c, "x")


def test_upstream_that_changed_is_detected(tmp_path):
    up = artifacts.load(_labelset(tmp_path / "up.safetensors"))
    meta = {"upstream": {"labelset": up.ref()}}
    t = {"ctx": torch.zeros(2, 4)}
    down = artifacts.load(artifacts.save(tmp_path / "p.safetensors", "prompt", t, meta))
    assert artifacts.load_upstream(down, "labelset").digest == up.digest
    _labelset(tmp_path / "up.safetensors", classnames=("x", "y"))
    with pytest.raises(ArtifactError, match="changed after"):
        artifacts.load_upstream(down, "labelset")


def test_cache_key_and_cached(tmp_path):
    k1 = artifacts.cache_key("labelset", {"features": "d"}, {"sym": 0.5})
    k2 = artifacts.cache_key("labelset", {"features": "d"}, {"sym": 0.4})
    assert k1 != k2 and k1 == artifacts.cache_key("labelset", {"features": "d"}, {"sym": 0.5})
    p = tmp_path / "l.safetensors"
    assert not artifacts.cached(p, k1, "labelset")
    t = {"labels": torch.zeros(1, dtype=torch.long)} | {
        "true_labels": torch.zeros(1, dtype=torch.long),
        "index": torch.zeros(1, dtype=torch.long),
    }
    artifacts.save(p, "labelset", t, {"key": k1})
    assert artifacts.cached(p, k1, "labelset") and not artifacts.cached(p, k2, "labelset")
    assert artifacts.default_out("labelset", "my data/x", k1).name.startswith("my-data-x-")
