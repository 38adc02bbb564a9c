"""Noise models and `nlp corrupt`: exact counts, never-same-class, pair map, transitions."""

from __future__ import annotations

import json

import pytest
import torch

from nlp_cli import artifacts, noise
from nlp_cli.errors import UsageError


def balanced(n_per: int, c: int) -> torch.Tensor:
    return torch.arange(c).repeat_interleave(n_per)


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.5, 0.8])
@pytest.mark.parametrize("c,n_per", [(2, 7), (5, 20), (10, 13)])
def test_sym_exact_count_and_never_same_class(rate, c, n_per):
    y = balanced(n_per, c)
    _, res, _ = noise.corrupt("sym", y, c, seed=3, rate=rate)
    changed = res.labels != y
    assert int(changed.sum()) == round(rate * len(y))
    assert bool(((res.labels >= 0) & (res.labels < c)).all())
    # Unchanged labels are exactly the unselected ones: a selected sample never keeps its class.
    per_class = noise.per_class_rate(y, res.labels, c)
    assert float(per_class.max() - per_class.min()) <= 1.0 / n_per + 1e-9


def test_sym_targets_are_uniform_over_other_classes():
    c = 4
    y = balanced(3000, c)
    _, res, _ = noise.corrupt("sym", y, c, seed=0, rate=0.6)
    t = noise.transition_matrix(y, res.labels, c)
    assert torch.allclose(t.diagonal(), torch.full((c,), 0.4, dtype=torch.float64))
    off = t[~torch.eye(c, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, 0.2), atol=0.02)


def test_pair_flips_to_next_class_only():
    c, n_per, rate = 6, 10, 0.3
    y = balanced(n_per, c)
    _, res, _ = noise.corrupt("pair", y, c, seed=1, rate=rate)
    changed = res.labels != y
    assert int(changed.sum()) == round(rate * len(y))
    assert torch.equal(res.labels[changed], (y[changed] + 1) % c)
    t = noise.transition_matrix(y, res.labels, c)
    expected = 0.7 * torch.eye(c, dtype=torch.float64) + 0.3 * torch.eye(
        c, dtype=torch.float64
    ).roll(1, 1)
    assert torch.allclose(t, expected)
    assert not res.warnings


def test_pair_majority_warns_and_empty_class_refused():
    y = balanced(10, 3)
    _, res, _ = noise.corrupt("pair", y, 3, seed=0, rate=0.8)
    assert res.warnings and "majority" in res.warnings[0]
    with pytest.raises(UsageError, match="no clean sample"):
        noise.corrupt("sym", balanced(1, 3), 3, seed=0, rate=0.9)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_rates_refused(rate):
    with pytest.raises(UsageError, match=r"\[0, 1\)"):
        noise.corrupt("sym", balanced(5, 3), 3, rate=rate)


def test_one_class_refused():
    with pytest.raises(UsageError, match="at least 2 classes"):
        noise.corrupt("pair", torch.zeros(5, dtype=torch.long), 1, rate=0.2)


def test_same_seed_same_labels_other_seed_differs():
    y = balanced(50, 7)
    a = noise.corrupt("sym", y, 7, seed=5, shots=16, rate=0.5)
    b = noise.corrupt("sym", y, 7, seed=5, shots=16, rate=0.5)
    c = noise.corrupt("sym", y, 7, seed=6, shots=16, rate=0.5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1].labels, b[1].labels)
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1].labels, c[1].labels))


def test_shots_then_noise():
    y = torch.cat([balanced(30, 4), torch.full((5,), 4)])
    index, res, short = noise.corrupt("sym", y, 5, seed=2, shots=16, rate=0.25)
    assert short == [4]
    counts = torch.bincount(y[index], minlength=5)
    assert counts.tolist() == [16, 16, 16, 16, 5]
    assert len(set(index.tolist())) == len(index)
    assert int((res.labels != y[index]).sum()) == round(0.25 * len(index))


def test_class_map_rate():
    c = 5
    y = balanced(10, c)
    _, res, _ = noise.corrupt("map", y, c, seed=0, mapping={0: 1, 3: 2, 2: 3}, rate=0.5)
    changed = res.labels != y
    assert int(changed.sum()) == 15
    moved = dict(zip(y[changed].tolist(), res.labels[changed].tolist(), strict=True))
    assert moved == {0: 1, 3: 2, 2: 3}
    _, full, _ = noise.corrupt("map", y, c, seed=0, mapping={0: 1})
    assert int((full.labels != y).sum()) == 10 and full.warnings


def test_idn_flips_towards_nearest_prototype():
    g = torch.Generator().manual_seed(0)
    c, d, n_per = 4, 16, 40
    centres = torch.randn(c, d, generator=g) * 3
    y = balanced(n_per, c)
    x = centres[y] + torch.randn(len(y), d, generator=g)
    _, res, _ = noise.corrupt("idn", y, c, seed=0, rate=0.3, features=x)
    changed = res.labels != y
    assert int(changed.sum()) == round(0.3 * len(y))
    target, margin = noise.nearest_other_class(x, y, c)
    assert torch.equal(res.labels[changed], target[changed])
    assert target.ne(y).all()
    # Confusable samples (high margin) are flipped more often than the rest.
    assert float(margin[changed].mean()) > float(margin[~changed].mean())


def test_transition_rows_sum_to_one():
    y = balanced(9, 3)
    noisy = y.roll(4)
    t = noise.transition_matrix(y, noisy, 4)
    assert torch.allclose(t.sum(1), torch.ones(4, dtype=torch.float64))
    assert t[3, 3] == 1.0
    for i in range(3):
        for j in range(3):
            expect = float(((y == i) & (noisy == j)).sum()) / 9
            assert abs(float(t[i, j]) - expect) < 1e-12


def test_cli_corrupt_writes_labelset(cli, features):
    r = cli("corrupt", features, "--sym", "0.5", "--seed", "1")
    assert r.code == 0, r.stderr
    art = artifacts.load(r.stdout.strip(), "labelset")
    feats = artifacts.load(features, "features")
    y = feats.tensors["train.labels"]
    assert torch.equal(art.tensors["true_labels"], y[art.tensors["index"]])
    assert int((art.tensors["labels"] != art.tensors["true_labels"]).sum()) == 50
    meta = art.meta["noise"]
    assert meta["type"] == "sym" and meta["n_noisy"] == 50 and meta["actual_rate"] == 0.5
    assert art.meta["upstream"]["features"]["digest"] == feats.digest
    assert art.meta["classnames"] == feats.classnames
    assert torch.allclose(
        art.tensors["transition"],
        noise.transition_matrix(art.tensors["true_labels"], art.tensors["labels"], 5),
    )
    assert "noise rate per class" in r.stderr and "class a 0.50" in r.stderr
    again = cli("corrupt", features, "--sym", "0.5", "--seed", "1")
    assert again.stdout == r.stdout and "cache hit" in again.stderr
    piped = cli("corrupt", "--sym", "0.5", "--seed", "1", stdin=f"{features}\n")
    assert piped.stdout == r.stdout


def test_cli_corrupt_variants(cli, features, tmp_path):
    r = cli("corrupt", features, "--json")
    assert r.code == 0 and json.loads(r.stdout)["type"] == "none"
    r = cli("corrupt", features, "--pair", "0.6", "--shots", "4", "--json")
    assert r.code == 0 and "majority" in r.stderr
    summary = json.loads(r.stdout)
    assert summary["n"] == 20 and summary["n_noisy"] == 12
    m = tmp_path / "map.yaml"
    m.write_text("class a: class b\nclass c: class d\n")
    r = cli("corrupt", features, "--map", m, "--rate", "0.5", "--json")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["map"] == {"class a": "class b", "class c": "class d"}
    r = cli("corrupt", features, "--idn", "0.2", "--out", tmp_path / "idn.safetensors")
    assert r.code == 0 and r.stdout.strip() == str(tmp_path / "idn.safetensors")


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["--sym", "1"], 2, "[0, 1)"),
        (["--sym", "0.2", "--pair", "0.2"], 2, "choose one noise type"),
        (["--pair", "0.9", "--shots", "1"], 2, "no clean sample"),
        (["--sym", "0.2", "--rate", "0.5"], 2, "--rate only applies"),
        (["--map", "MAP"], 2, "did you mean 'class b'"),
    ],
)
def test_cli_corrupt_errors(cli, features, tmp_path, args, code, needle):
    m = tmp_path / "map.json"
    m.write_text(json.dumps({"class bb": "class a"}))
    r = cli("corrupt", features, *[str(m) if a == "MAP" else a for a in args])
    assert r.code == code and needle in r.stderr
    assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    assert r.stdout == ""
