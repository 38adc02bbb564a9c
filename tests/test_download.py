"""Downloads from a local HTTP server: upstream archive layouts, checksums, resume, safety."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from nlp_cli import datasets
from nlp_cli.datasets import download as dl
from nlp_cli.errors import NlpError

SPLIT3 = ("train", "val", "test")


class Server:
    """Files by URL path; optional cut-off of the first response; records Range headers."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_first: dict[str, int] = {}  # path -> bytes to send before dropping the link
        self.ignore_range = False
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                if path not in server.files:
                    self.send_error(404)
                    return
                data = server.files[path]
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.cut_first.pop(path, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def jpeg(color=(200, 30, 30), size=(40, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 128).save(buf, "JPEG")
    return buf.getvalue()


def targz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def local(spec, server: Server, files: dict[str, bytes]):
    """The catalog entry with each source served by the local server (same file names)."""
    sources = []
    for src in spec.sources:
        path = f"/{spec.name}/{src.filename}"
        if src.filename in files:
            server.files[path] = files[src.filename]
        sources.append(dataclasses.replace(src, url=server.url + path, mirrors=(), checksum=None))
    return dataclasses.replace(spec, sources=tuple(sources))


# --- fetch: checksums and resume --------------------------------------------------------------


def test_fetch_verifies_sha256_and_md5(server, tmp_path):
    data = b"x" * 5000
    server.files["/f.bin"] = data
    out = dl.fetch(server.url + "/f.bin", tmp_path / "f.bin", sha256(data), progress=False)
    assert out.read_bytes() == data
    md5 = "md5:" + hashlib.md5(data).hexdigest()
    assert dl.fetch(server.url + "/f.bin", tmp_path / "g.bin", md5, progress=False).exists()


def test_wrong_checksum_fails_and_deletes_partial(server, tmp_path):
    server.files["/f.bin"] = b"evil payload"
    with pytest.raises(dl.DownloadError, match="checksum mismatch"):
        dl.fetch(server.url + "/f.bin", tmp_path / "f.bin", sha256(b"good"), progress=False)
    assert not (tmp_path / "f.bin").exists()
    assert not (tmp_path / "f.bin.part").exists()


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    data = bytes(range(256)) * 400
    server.files["/big.bin"] = data
    server.cut_first["/big.bin"] = 30000
    dest = tmp_path / "big.bin"
    with pytest.raises(dl.DownloadError, match="interrupted"):
        dl.fetch(server.url + "/big.bin", dest, sha256(data), retries=1, progress=False)
    part = tmp_path / "big.bin.part"
    assert part.stat().st_size == 30000 and not dest.exists()
    dl.fetch(server.url + "/big.bin", dest, sha256(data), progress=False)
    assert dest.read_bytes() == data
    assert server.ranges[-1] == "bytes=30000-"


def test_interruption_resumed_within_one_call(server, tmp_path):
    data = b"abc" * 20000
    server.files["/f.bin"] = data
    server.cut_first["/f.bin"] = 1000
    dl.fetch(server.url + "/f.bin", tmp_path / "f.bin", sha256(data), retries=3, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert server.ranges == [None, "bytes=1000-"]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    data = b"0123456789" * 1000
    server.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(b"garbage")
    server.ignore_range = True
    dl.fetch(server.url + "/f.bin", tmp_path / "f.bin", sha256(data), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data


def test_mirror_used_when_primary_fails(server, tmp_path):
    server.files["/mirror.bin"] = b"payload"
    out = dl.fetch(
        server.url + "/missing.bin",
        tmp_path / "f.bin",
        sha256(b"payload"),
        mirrors=(server.url + "/mirror.bin",),
        progress=False,
    )
    assert out.read_bytes() == b"payload"


# --- safe extraction --------------------------------------------------------------------------


def hostile_tars() -> dict[str, bytes]:
    out = {}
    for label, kind, name, link in [
        ("dotdot", tarfile.REGTYPE, "data/../../evil.txt", ""),
        ("absolute", tarfile.REGTYPE, "/tmp/nlp-evil.txt", ""),
        ("symlink-abs", tarfile.SYMTYPE, "data/passwd", "/etc/passwd"),
        ("symlink-up", tarfile.SYMTYPE, "data/up", "../../outside"),
        ("hardlink-out", tarfile.LNKTYPE, "data/hard", "../outside.txt"),
        ("device", tarfile.CHRTYPE, "data/dev", ""),
    ]:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            ok = tarfile.TarInfo("data/fine.txt")
            ok.size = 2
            tar.addfile(ok, io.BytesIO(b"ok"))
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.size = 4 if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(b"evil") if kind == tarfile.REGTYPE else None)
        out[label] = buf.getvalue()
    return out


@pytest.mark.parametrize("label", list(hostile_tars()))
def test_hostile_tar_is_refused_whole(tmp_path, label):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(hostile_tars()[label])
    dest = tmp_path / "out" / "inner"
    with pytest.raises(NlpError, match="refusing to extract"):
        dl.extract(archive, dest)
    assert not (dest / "data" / "fine.txt").exists()  # nothing extracted before refusing
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()


def test_hostile_zip_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(zipped({"ok/fine.txt": b"ok", "../evil.txt": b"evil"}))
    with pytest.raises(NlpError, match="refusing to extract"):
        dl.extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out" / "ok" / "fine.txt").exists()


def test_zip_symlink_pointing_outside_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("data/link")
        info.external_attr = (0o120777) << 16
        zf.writestr(info, "../../etc/passwd")
    archive = tmp_path / "a.zip"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(NlpError, match="points outside"):
        dl.extract(archive, tmp_path / "out")


def test_extract_strips_leading_folder(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(targz({"top/data/images/x.jpg": b"1", "top/README": b"2"}))
    dl.extract(archive, tmp_path / "out", strip="top/data/")
    assert (tmp_path / "out" / "images" / "x.jpg").read_bytes() == b"1"
    assert not (tmp_path / "out" / "README").exists()


# --- whole datasets in their upstream layouts -------------------------------------------------


def class_tree(prefix: str, classes: list[str], n: int = 10) -> dict[str, bytes]:
    return {
        f"{prefix}{c}/{c}_{i:04d}.jpg": jpeg((20 * k % 255, 40, 90))
        for k, c in enumerate(classes)
        for i in range(n)
    }


def test_dtd_tar_gz_and_split_file(server, tmp_path):
    split = {
        "train": [
            ["banded/banded_0000.jpg", 0, "banded"],
            ["zigzagged/zigzagged_0000.jpg", 1, "zigzagged"],
        ],
        "val": [["banded/banded_0001.jpg", 0, "banded"]],
        "test": [["zigzagged/zigzagged_0001.jpg", 1, "zigzagged"]],
    }
    files = {
        "dtd-r1.0.1.tar.gz": targz(
            {
                **class_tree("dtd/images/", ["banded", "zigzagged"]),
                "dtd/labels/labels_joint_anno.txt": b"",
            }
        ),
        "split_zhou_DescribableTextures.json": json.dumps(split).encode(),
    }
    spec = local(datasets.get("dtd"), server, files)
    folder, notes = dl.fetch_dataset(spec, tmp_path / "root", progress=False)
    assert folder == tmp_path / "root" / "dtd" and notes == []
    ds = spec.load(folder)
    assert ds.classnames == ["banded", "zigzagged"]
    assert [len(ds.paths[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    assert not (tmp_path / "root" / ".downloads" / "dtd-r1.0.1.tar.gz").exists()


def test_split_file_unreachable_is_regenerated(server, tmp_path):
    files = {"dtd-r1.0.1.tar.gz": targz(class_tree("dtd/images/", ["banded", "zigzagged"]))}
    spec = local(datasets.get("dtd"), server, files)  # the split file 404s
    folder, notes = dl.fetch_dataset(spec, tmp_path / "root", progress=False, seed=1)
    assert any("regenerat" in n for n in notes)
    ds = spec.load(folder)
    assert [len(ds.paths[s]) for s in ("train", "val", "test")] == [10, 4, 6]


def test_caltech_zip_with_nested_tar(server, tmp_path):
    classes = ["BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "airplanes", "accordion"]
    inner = targz(class_tree("101_ObjectCategories/", classes))
    files = {
        "caltech-101.zip": zipped(
            {"caltech-101/101_ObjectCategories.tar.gz": inner, "caltech-101/Annotations.tar": b""}
        )
    }
    spec = local(datasets.get("caltech101"), server, files)
    folder, _ = dl.fetch_dataset(spec, tmp_path / "root", progress=False)
    assert not (folder / "101_ObjectCategories.tar.gz").exists()
    ds = spec.load(folder)
    assert ds.classnames == ["face", "leopard", "accordion", "airplane"]
    assert (folder / "split_zhou_Caltech101.json").is_file()


def test_eurosat_zip(server, tmp_path):
    files = {"EuroSAT.zip": zipped(class_tree("2750/", ["AnnualCrop", "SeaLake"]))}
    spec = local(datasets.get("eurosat"), server, files)
    folder, _ = dl.fetch_dataset(spec, tmp_path / "root", progress=False)
    assert spec.load(folder).classnames == ["Annual Crop Land", "Sea or Lake"]


def test_fgvc_aircraft_keeps_only_data(server, tmp_path):
    names = {"train": ["0001", "0002"], "val": ["0003"], "test": ["0004"]}
    members = {
        f"fgvc-aircraft-2013b/data/images/{i}.jpg": jpeg() for v in names.values() for i in v
    }
    members["fgvc-aircraft-2013b/data/variants.txt"] = b"707-320\nA340-500\n"
    for s, ids in names.items():
        lines = [f"{i} {'707-320' if k % 2 == 0 else 'A340-500'}" for k, i in enumerate(ids)]
        members[f"fgvc-aircraft-2013b/data/images_variant_{s}.txt"] = "\n".join(lines).encode()
    members["fgvc-aircraft-2013b/README.html"] = b"x"
    spec = local(
        datasets.get("fgvc_aircraft"), server, {"fgvc-aircraft-2013b.tar.gz": targz(members)}
    )
    folder, _ = dl.fetch_dataset(spec, tmp_path / "root", progress=False)
    assert not (folder / "README.html").exists()
    ds = spec.load(folder)
    assert ds.classnames == ["707-320", "A340-500"]
    assert ds.paths["train"] == ["0001.jpg", "0002.jpg"]


def test_oxford_flowers_with_mat_labels(server, tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    import numpy as np

    labels = np.array([[1] * 10 + [2] * 10])
    mat = io.BytesIO()
    scipy_io.savemat(mat, {"labels": labels})
    jpgs = {f"jpg/image_{i:05d}.jpg": jpeg() for i in range(1, 21)}
    files = {
        "102flowers.tgz": targz(jpgs),
        "imagelabels.mat": mat.getvalue(),
        "cat_to_name.json": json.dumps(
            {"1": "pink primrose", "2": "hard-leaved pocket orchid"}
        ).encode(),
    }
    spec = local(datasets.get("oxford_flowers"), server, files)
    folder, notes = dl.fetch_dataset(spec, tmp_path / "root", progress=False)
    ds = spec.load(folder)
    assert ds.classnames == ["pink primrose", "hard-leaved pocket orchid"]
    assert [len(ds.paths[s]) for s in ("train", "val", "test")] == [10, 4, 6]


def test_no_network_names_url_and_from(cli, tmp_path, monkeypatch):
    spec = dataclasses.replace(
        datasets.get("dtd"),
        sources=(dl.Source("http://127.0.0.1:9/dtd-r1.0.1.tar.gz", "dtd-r1.0.1.tar.gz"),),
    )
    monkeypatch.setitem(datasets.CATALOG, "dtd", spec)
    r = cli("download", "dtd", "--root", tmp_path)
    assert r.code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot download http://127.0.0.1:9/")
    assert "--from" in lines[0] and "by hand" in lines[0]
    assert r.stdout == ""


def test_download_model_checks_sha256(cli, server, monkeypatch, nlp_home):
    from nlp_cli import clip_model

    data = b"fake checkpoint bytes" * 100
    digest = hashlib.sha256(data).hexdigest()
    server.files[f"/models/{digest}/Tiny.pt"] = data
    server.files[f"/models/{'0' * 64}/Bad.pt"] = data
    models = {
        "Tiny": f"{server.url}/models/{digest}/Tiny.pt",
        "Bad": f"{server.url}/models/{'0' * 64}/Bad.pt",
    }
    monkeypatch.setattr(clip_model, "openai_models", lambda: models)
    r = cli("download", "--model", "Tiny")
    assert r.code == 0, r.stderr
    assert Path(r.stdout.strip()) == clip_model.model_file("Tiny")
    assert Path(r.stdout.strip()).read_bytes() == data
    r = cli("download", "--model", "Bad")
    assert r.code == 1 and "checksum mismatch" in r.stderr
    r = cli("download", "--model", "Tinny")
    assert r.code == 2 and "did you mean 'Tiny'" in r.stderr


def test_cifar10_pickles_become_pngs_and_a_split(server, tmp_path):
    import pickle

    import numpy as np

    def batch(n: int, offset: int) -> bytes:
        rng = np.random.default_rng(offset)
        return pickle.dumps(
            {
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"labels": [(offset + i) % 10 for i in range(n)],
                b"filenames": [f"img_{offset + i}.png".encode() for i in range(n)],
            }
        )

    members = {f"cifar-10-batches-py/data_batch_{k}": batch(4, 10 * k) for k in range(1, 6)}
    members["cifar-10-batches-py/test_batch"] = batch(3, 100)
    spec = local(datasets.get("cifar10"), server, {"cifar-10-python.tar.gz": targz(members)})
    folder, _ = dl.fetch_dataset(spec, tmp_path / "root", progress=False)
    ds = spec.load(folder)
    assert [len(ds.paths[s]) for s in ("train", "val", "test")] == [20, 0, 3]
    assert ds.paths["test"][0] == "test/airplane/img_100.png"
    assert ds.classnames[:3] == ["airplane", "automobile", "bird"]
    with Image.open(ds.root / ds.paths["train"][0]) as im:
        assert im.size == (32, 32)
    first = np.asarray(pickle.loads(members["cifar-10-batches-py/data_batch_1"])[b"data"][0])
    with Image.open(ds.root / ds.paths["train"][0]) as im:
        assert np.array_equal(np.asarray(im).transpose(2, 0, 1).reshape(-1), first)


def test_oxford_pets_two_archives_and_coop_trainval_cut(server, tmp_path):
    stems = [f"Abyssinian_{i}" for i in range(1, 11)] + [
        f"great_pyrenees_{i}" for i in range(1, 11)
    ]
    images = {f"images/{s}.jpg": jpeg() for s in stems}
    rows = [f"{s} {1 if s.startswith('A') else 2} 1 1" for s in stems]
    annotations = {
        "annotations/trainval.txt": "\n".join(rows[:5] + rows[10:15]).encode(),
        "annotations/test.txt": "\n".join(rows[5:10] + rows[15:]).encode(),
    }
    files = {"images.tar.gz": targz(images), "annotations.tar.gz": targz(annotations)}
    spec = local(datasets.get("oxford_pets"), server, files)
    folder, notes = dl.fetch_dataset(spec, tmp_path / "root", progress=False)
    assert any("regenerat" in n for n in notes)
    ds = spec.load(folder)
    assert ds.classnames == ["abyssinian", "great_pyrenees"]
    # CoOp's split_trainval: round(5 * 0.2) = 1 image per class to val
    assert [len(ds.paths[s]) for s in ("train", "val", "test")] == [8, 2, 10]


def test_ucf101_midframes_zip(server, tmp_path):
    members = {f"UCF-101-midframes/Yo_Yo/v_YoYo_g0{i}_c01.jpg": jpeg() for i in range(1, 4)}
    split = {s: [[f"Yo_Yo/v_YoYo_g0{i}_c01.jpg", 0, "Yo_Yo"]] for i, s in enumerate(SPLIT3, 1)}
    files = {
        "UCF-101-midframes.zip": zipped(members),
        "split_zhou_UCF101.json": json.dumps(split).encode(),
    }
    spec = local(datasets.get("ucf101"), server, files)
    folder, _ = dl.fetch_dataset(spec, tmp_path / "root", progress=False)
    ds = spec.load(folder)
    assert ds.classnames == ["Yo_Yo"] and ds.paths["test"] == ["Yo_Yo/v_YoYo_g03_c01.jpg"]
    assert (ds.root / ds.paths["test"][0]).is_file()
