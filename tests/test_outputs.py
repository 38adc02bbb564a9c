"""Outputs: nothing lost, nothing stale.

A stage's output never lands on what it reads, writes never replace a device, a FIFO or a
symlink, files get ordinary permissions, and no artifact holding NaN or inf is ever written.
docs/RELIABILITY.md lists each case with the test that holds it.
"""

from __future__ import annotations

import io
import os
import socket
import stat
import sys
import threading
from pathlib import Path

import pytest
import torch

from nlp_cli import artifacts
from nlp_cli.cli import output
from nlp_cli.errors import ArtifactError, UsageError


def _features(path: Path) -> Path:
    t = {
        "train.features": torch.randn(4, 8),
        "train.labels": torch.tensor([0, 1, 0, 1]),
        "test.features": torch.randn(2, 8),
        "test.labels": torch.tensor([0, 1]),
    }
    return artifacts.save(path, "features", t, {"classnames": ["a", "b"], "upstream": {}})


def _made_from(path: Path, kind: str, *sources: Path) -> Path:
    """An artifact of `kind` whose metadata names `sources` as its upstream."""
    upstream = {f"up{i}": artifacts.load(s).ref() for i, s in enumerate(sources)}
    n = 4
    t = {
        "labels": torch.zeros(n, dtype=torch.long),
        "true_labels": torch.zeros(n, dtype=torch.long),
        "index": torch.arange(n),
        "clean": torch.ones(n, dtype=torch.bool),
        "pseudo_labels": torch.zeros(n, dtype=torch.long),
        "scores": torch.zeros(n),
        "ctx": torch.zeros(2, 8),
    }
    keep = {k: t[k] for k in artifacts.REQUIRED_TENSORS[kind]}
    return artifacts.save(path, kind, keep, {"classnames": ["a", "b"], "upstream": upstream})


@pytest.fixture
def chain(tmp_path):
    """features → labelset → partition → prompt (the prompt also names the features)."""
    feats = _features(tmp_path / "feats.st")
    labels = _made_from(tmp_path / "labels.st", "labelset", feats)
    part = _made_from(tmp_path / "part.st", "partition", labels)
    prompt = _made_from(tmp_path / "prompt.st", "prompt", part, feats)
    return feats, labels, part, prompt


# --- check_output: the output is none of the inputs nor what they were made from ---------------


def test_output_that_is_an_input_is_refused(chain, tmp_path, monkeypatch):
    feats, labels, part, prompt = chain
    with pytest.raises(UsageError, match="is the input .*labels.st: writing it would destroy"):
        artifacts.check_output(labels, [labels])
    monkeypatch.chdir(tmp_path)  # ./x and /abs/x name the same file
    with pytest.raises(UsageError, match="is the input"):
        artifacts.check_output(Path("./labels.st"), [labels.resolve()])
    with pytest.raises(UsageError, match="is the input"):
        artifacts.check_output(tmp_path / "sub" / ".." / "labels.st", [Path("labels.st")])
    (tmp_path / "link.st").symlink_to(labels)  # a symlink to the input
    with pytest.raises(UsageError, match="is the input"):
        artifacts.check_output(tmp_path / "link.st", [labels])
    os.link(labels, tmp_path / "hard.st")  # a hard link to it
    with pytest.raises(UsageError, match="is the input"):
        artifacts.check_output(tmp_path / "hard.st", [labels])
    artifacts.check_output(tmp_path / "new.st", [labels, None])  # a fresh path is fine


def test_output_that_is_an_upstream_artifact_is_refused(chain, tmp_path):
    feats, labels, part, prompt = chain
    # three levels up: prompt → partition → labelset → features
    with pytest.raises(
        UsageError,
        match=r"labels.st is an artifact the input .*prompt.st was made"
        r" from through .*part.st: writing it would break .*prompt.st",
    ):
        artifacts.check_output(labels, [prompt])
    with pytest.raises(UsageError, match="feats.st is an artifact the input .*part.st was made"):
        artifacts.check_output(feats, [part])
    (tmp_path / "f-link.st").symlink_to(feats)
    with pytest.raises(UsageError, match=r"f-link.st \(that is .*feats.st\) is an artifact"):
        artifacts.check_output(tmp_path / "f-link.st", [prompt])
    artifacts.check_output(prompt, [labels])  # downstream of the input: fine (a rerun)


def test_missing_upstream_and_non_artifact_inputs_are_passed_over(chain, tmp_path):
    feats, labels, part, prompt = chain
    feats.unlink()
    artifacts.check_output(feats, [part])  # its load will say the features no longer exist
    artifacts.check_output(tmp_path / "x.st", [part, tmp_path / "nope.st", tmp_path])
    (tmp_path / "notes.txt").write_text("not an artifact\n")
    artifacts.check_output(tmp_path / "x.st", [tmp_path / "notes.txt"])


def test_upstream_cycle_terminates(tmp_path):
    a = _features(tmp_path / "a.st")
    b = _made_from(tmp_path / "b.st", "labelset", a)
    _made_from(tmp_path / "a.st", "labelset", b)  # a now names b, which names (old) a
    artifacts.check_output(tmp_path / "c.st", [a])
    with pytest.raises(UsageError, match="b.st is an artifact the input"):
        artifacts.check_output(b, [a])


def test_output_with_a_newline_or_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(UsageError, match="contains a newline"):
        artifacts.check_output(tmp_path / "a\nb.st", [])
    with pytest.raises(UsageError, match="is an existing folder"):
        artifacts.check_output(tmp_path, [])
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ArtifactError, match="cannot write"):  # still checks writability
        artifacts.check_output(blocker / "out.st", [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


# --- atomic writes: devices, FIFOs, symlinks, permissions --------------------------------------


@pytest.fixture
def devnull(tmp_path) -> Path:
    """A private /dev/null (char device 1:3), so that a bug cannot replace the real one."""
    path = tmp_path / "null"
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        with open(path, "wb") as f:
            f.write(b"probe")
    except OSError as e:  # not root, or a nodev mount
        pytest.skip(f"cannot make a device node here: {e}")
    return path


def _labelset_tensors():
    return {"labels": torch.zeros(2).long(), "true_labels": torch.zeros(2).long()} | {
        "index": torch.arange(2)
    }


def test_a_device_is_written_through_never_renamed_over(devnull, tmp_path):
    artifacts.ensure_writable(devnull)
    artifacts.check_output(devnull, [])
    artifacts.atomic_write_text(devnull, "x")
    artifacts.save(devnull, "labelset", _labelset_tensors(), {})
    (tmp_path / "to-null").symlink_to(devnull)  # through a symlink too
    artifacts.atomic_write_bytes(tmp_path / "to-null", b"y")
    assert stat.S_ISCHR(os.stat(devnull).st_mode)
    assert (tmp_path / "to-null").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null", "to-null"]  # no temp file


def test_a_fifo_is_written_through(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert not artifacts.cached(fifo, "key", "labelset")  # not read: that would wait forever
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    path = artifacts.save(fifo, "labelset", _labelset_tensors(), {"classnames": ["a"]})
    reader.join(30)
    assert path == fifo and stat.S_ISFIFO(os.stat(fifo).st_mode)
    from safetensors.torch import load

    assert torch.equal(load(got[0])["index"], torch.arange(2))
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]


def test_a_symlink_is_kept_and_its_target_replaced(tmp_path):
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    target = real_dir / "result.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(Path("real") / "result.json")  # relative, as `ln -s` makes them
    chained = tmp_path / "chained.json"
    chained.symlink_to(link)
    artifacts.atomic_write_text(chained, "new")
    assert link.is_symlink() and chained.is_symlink() and target.read_text() == "new"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(real_dir / "later.json")
    artifacts.save(dangling, "labelset", _labelset_tensors(), {})
    assert dangling.is_symlink() and artifacts.load(real_dir / "later.json").kind == "labelset"
    assert sorted(p.name for p in real_dir.iterdir()) == ["later.json", "result.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "chained.json",
        "dangling.json",
        "link.json",
        "real",
    ]


def test_new_files_get_umask_permissions_and_rewrites_keep_their_mode(tmp_path):
    old = os.umask(0o027)
    try:
        artifacts.atomic_write_text(tmp_path / "new.json", "{}")
        artifacts.save(tmp_path / "new.st", "labelset", _labelset_tensors(), {})
        with artifacts.atomic_path(tmp_path / "new.pt") as tmp:
            torch.save({"x": 1}, tmp)
    finally:
        os.umask(old)
    for name in ("new.json", "new.st", "new.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name
    for mode in (0o600, 0o755, 0o444):
        p = tmp_path / f"kept-{mode:o}.st"
        p.write_text("old")
        p.chmod(mode)
        artifacts.save(p, "labelset", _labelset_tensors(), {})
        assert stat.S_IMODE(p.stat().st_mode) == mode and artifacts.load(p).kind == "labelset"


def test_a_socket_or_folder_is_not_replaced(tmp_path):
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "s"))
        with pytest.raises(ArtifactError, match="not a regular file"):
            artifacts.atomic_write_text(tmp_path / "s", "x")
        assert stat.S_ISSOCK(os.stat(tmp_path / "s").st_mode)
    finally:
        sock.close()
    (tmp_path / "d").mkdir()
    with pytest.raises(ArtifactError, match="is a folder"):
        artifacts.atomic_write_text(tmp_path / "d", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "s"]


# --- no non-finite artifact is ever written ----------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_save_refuses_non_finite_tensors(tmp_path, bad, dtype):
    p = tmp_path / "prompt.st"
    artifacts.save(p, "prompt", {"ctx": torch.zeros(2, 4)}, {})
    before = p.read_bytes()
    ctx = torch.zeros(2, 4, dtype=dtype)
    ctx[1, 2] = bad
    with pytest.raises(
        ArtifactError, match=r"prompt.st: its tensor history.loss holds 1 NaN or inf"
    ):
        artifacts.save(p, "prompt", {"ctx": torch.zeros(2, 4), "history.loss": ctx}, {})
    assert p.read_bytes() == before and [f.name for f in tmp_path.iterdir()] == ["prompt.st"]
    with pytest.raises(ArtifactError, match="its tensor ctx holds"):
        artifacts.save(tmp_path / "other.st", "prompt", {"ctx": ctx}, {})
    assert not (tmp_path / "other.st").exists()
    # integers, booleans and empty tensors pass; the check is one pass for finite tensors
    fine = {"ctx": torch.zeros(0, 4, dtype=dtype), "n": torch.arange(3), "b": torch.ones(2) > 0}
    artifacts.save(tmp_path / "fine.st", "prompt", fine, {})


# --- stdin naming several artifacts ------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["/x/a.st\n/x/b.st\n", "\n/x/a.st\n\n  /x/b.st \n/x/c.st\n", "a\r\nb\r\n"]
)
def test_stdin_with_several_paths_is_refused(monkeypatch, text):
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    with pytest.raises(UsageError, match=r"no single label set given: stdin holds [23] lines"):
        output.input_path(None, "label set")


def test_stdin_with_one_path_among_blank_lines_is_taken(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n  \n/x/labels.st  \n\n"))
    assert output.input_path(None) == Path("/x/labels.st")


def test_several_paths_on_stdin_is_one_line_for_a_stage(cli):
    r = cli("analyze-grad", stdin="/x/a.safetensors\n/x/b.safetensors\n")
    assert r.code == 2 and r.stdout == "" and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: no single label set given: stdin holds 2 lines")


@pytest.fixture
def trained(cli, features, tmp_path):
    """A label set, its partition and a one-epoch prompt trained on the label set."""
    from conftest import make_sym_labelset

    labels = make_sym_labelset(features, tmp_path / "labels.safetensors", rate=0.4)
    part = tmp_path / "part.safetensors"
    assert cli("purify", labels, "--out", part).code == 0
    prompt = tmp_path / "prompt.safetensors"
    r = cli("train", labels, "--epochs", "1", "--n-ctx", "4", "--out", prompt)
    assert r.code == 0, r.stderr
    return {"features": features, "labels": labels, "part": part, "prompt": prompt}


@pytest.mark.parametrize(
    "args, victim",
    [
        (["eval", "{prompt}", "--out", "{prompt}"], "prompt"),
        (["eval", "{prompt}", "--out", "{features}"], "features"),
        (["eval", "{prompt}", "--plot", "{prompt}"], "prompt"),
        (["corrupt", "{features}", "--sym", "0.2", "--out", "{features}"], "features"),
        (["purify", "{labels}", "--out", "{labels}"], "labels"),
        (["purify", "{labels}", "--out", "{features}"], "features"),
        (["purify", "{labels}", "--report", "{features}"], "features"),
        (["train", "{labels}", "--epochs", "1", "--out", "{features}"], "features"),
        (["train", "{part}", "--epochs", "1", "--out", "{labels}"], "labels"),
        (["train", "{labels}", "--epochs", "1", "--export-coop", "{features}"], "features"),
        (["analyze-grad", "{labels}", "--out", "{labels}"], "labels"),
        (["analyze-grad", "{labels}", "--plot", "{features}"], "features"),
    ],
    ids=lambda x: " ".join(x) if isinstance(x, list) else x,
)
def test_no_stage_writes_over_its_inputs(cli, trained, args, victim):
    from nlp_cli import artifacts

    before = artifacts.file_digest(trained[victim])
    r = cli(*[a.format(**{k: str(v) for k, v in trained.items()}) for a in args])
    assert r.code == 2, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert "input" in r.stderr
    assert artifacts.file_digest(trained[victim]) == before


def test_two_runs_with_one_out_are_refused(cli, trained, tmp_path):
    out = tmp_path / "same.safetensors"
    r = cli(
        "train",
        trained["labels"],
        "--loss",
        "ce,dsoftmax",
        "--epochs",
        "1",
        "--out",
        out,
        "--out",
        out,
    )
    assert r.code == 2 and "two runs would write" in r.stderr
    assert not out.exists()


def test_inputs_over_two_clip_models_train_each_with_its_own(cli, features, tmp_path):
    from conftest import make_features

    from nlp_cli import artifacts, clip_model

    other_clip = clip_model.save_checkpoint(clip_model.build_tiny(seed=5), tmp_path / "b.pt")
    other = make_features(tmp_path / "feats-b.safetensors", other_clip)
    outs = [tmp_path / "pa.safetensors", tmp_path / "pb.safetensors"]
    r = cli(
        "train",
        features,
        other,
        "--epochs",
        "1",
        "--n-ctx",
        "4",
        "--out",
        outs[0],
        "--out",
        outs[1],
    )
    assert r.code == 0, r.stderr
    for out, feats in zip(outs, (features, other), strict=True):
        made = artifacts.load(out, "prompt").meta["model"]["digest"]
        assert made == artifacts.load(feats, "features").meta["model"]["digest"]


def test_a_file_of_the_recorded_model_name_in_the_cwd_is_passed_over(
    cli, features, tmp_path, monkeypatch
):
    """The recorded name is tried first; a different file of that name in the current folder
    must not make a valid artifact unusable: the recorded path is tried next."""
    from nlp_cli import artifacts, clip_model

    name = artifacts.load(features, "features").meta["model"]["name"]
    cwd = tmp_path / "elsewhere"
    (cwd / Path(name).parent).mkdir(parents=True, exist_ok=True)
    clip_model.save_checkpoint(clip_model.build_tiny(seed=7), cwd / name)
    monkeypatch.chdir(cwd)
    r = cli("eval", "--zero-shot", features, "--json")
    assert r.code == 0, r.stderr


def test_huge_seed_and_too_long_context_are_one_line(cli, features):
    r = cli("train", features, "--epochs", "1", "--n-ctx", "2", "--seed", str(2**62))
    assert r.code == 0, r.stderr
    r = cli("train", features, "--epochs", "1", "--n-ctx", "100")
    assert r.code == 2 and "more than the text tower's 77" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--lr", "nan"], "--lr must be finite"),
        (["--lr", "inf"], "--lr must be finite"),
        (["--momentum", "nan"], "--momentum must be finite"),
        (["--weight-decay", "inf"], "--weight-decay must be finite"),
    ],
)
def test_non_finite_training_options_are_refused(cli, features, args, needle):
    r = cli("train", features, "--epochs", "1", *args)
    assert r.code == 2 and needle in r.stderr


def test_config_values_are_type_checked(cli, features, tmp_path):
    for text, needle in (
        ("csc: 'false'\n", "--csc must be true or false"),
        ("lr: '0.01'\n", "--lr must be a number"),
        ("epochs: 1.5\n", "--epochs must be a whole number"),
    ):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(text)
        r = cli("train", features, "--config", cfg)
        assert r.code == 2 and needle in r.stderr, (text, r.stderr)


def test_a_diverging_run_stops_and_writes_nothing(cli, features, tmp_path):
    out = tmp_path / "p.safetensors"
    r = cli("train", features, "--epochs", "2", "--lr", "1e30", "--out", out)
    assert r.code == 1 and "training diverged in epoch" in r.stderr
    assert not out.exists()


def test_a_non_finite_init_context_is_refused(cli, features, tmp_path):
    import torch

    bad = tmp_path / "model.pth.tar-1"
    torch.save({"state_dict": {"ctx": torch.full((16, 32), float("nan"))}, "epoch": 1}, bad)
    r = cli("train", features, "--epochs", "1", "--init-from", bad)
    assert r.code == 1 and "NaN" in r.stderr


def test_generic_faults_are_one_clear_line(cli, tiny_clip, tmp_path, monkeypatch):
    import json as _json

    from conftest import make_image_folder

    # a one-class folder
    one = tmp_path / "one" / "train" / "only"
    one.mkdir(parents=True)
    from PIL import Image

    for i in range(6):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(one / f"{i}.png")
    r = cli("embed", tmp_path / "one", "--model", tiny_clip)
    assert r.code == 1 and "needs at least 2" in r.stderr and r.stderr.count("\n") == 1
    # a CSV with a byte-order mark and a header row
    imgs = make_image_folder(tmp_path / "imgs")
    rows = ["path,label,split"] + [
        f"{p.relative_to(imgs).as_posix()},{p.parent.name},{p.parts[-3]}"
        for p in sorted(imgs.rglob("*.png"))
    ]
    csv_path = imgs / "list.csv"
    csv_path.write_text("\ufeff" + "\n".join(rows) + "\n", encoding="utf-8")
    r = cli("embed", csv_path, "--model", tiny_clip, "--json")
    assert r.code == 0, r.stderr
    assert _json.loads(r.stdout)["counts"]["train"] == 18
    # a listed image that does not exist: found before the model loads
    bad_csv = imgs / "bad.csv"
    bad_csv.write_text("\n".join([*rows, "train/class0/gone.png,class0,train"]) + "\n")
    r = cli("embed", bad_csv, "--model", tiny_clip)
    assert r.code == 1 and "do not exist" in r.stderr
    # a split file that is a list
    coop = tmp_path / "coop"
    (coop / "images").mkdir(parents=True)
    (coop / "split_zhou_X.json").write_text("[1, 2, 3]")
    from nlp_cli.datasets.splits import read_split_file
    from nlp_cli.errors import NlpError

    with pytest.raises(NlpError, match="holds a list"):
        read_split_file(coop / "split_zhou_X.json")


def test_features_with_lengths_that_differ_are_refused(features, tmp_path):
    from nlp_cli import artifacts
    from nlp_cli.errors import ArtifactError

    art = artifacts.load(features, "features")
    tensors = dict(art.tensors)
    tensors["train.labels"] = tensors["train.labels"][:-1]
    bad = tmp_path / "bad.safetensors"
    artifacts.save(
        bad,
        "features",
        tensors,
        {k: v for k, v in art.meta.items() if k not in ("kind", "schema", "nlp_version")},
    )
    with pytest.raises(ArtifactError, match="feature rows but"):
        artifacts.load(bad, "features")


def test_disk_full_in_a_checkpoint_is_one_line(tmp_path, monkeypatch):
    import torch

    from nlp_cli import checkpoints
    from nlp_cli.errors import ArtifactError

    def full(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0\n"
            "PytorchStreamWriter failed writing file data/0: file write failed"
        )

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(ArtifactError, match="disk full") as info:
        checkpoints.save_checkpoint(tmp_path / "p.ckpt", {"x": 1})
    assert "\n" not in str(info.value) and not list(tmp_path.iterdir())


def test_a_held_lock_says_it_waits(tmp_path):
    import threading
    import time

    from nlp_cli import artifacts

    lock = tmp_path / ".x.lock"
    heard: list = []
    entered = threading.Event()

    def holder():
        with artifacts.locked(lock):
            entered.set()
            time.sleep(0.5)

    t = threading.Thread(target=holder)
    t.start()
    entered.wait(5)
    with artifacts.locked(lock, on_wait=heard.append):
        pass
    t.join()
    assert heard == [lock]
