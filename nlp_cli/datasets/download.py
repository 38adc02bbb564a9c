"""Getting datasets and CLIP weights onto disk: HTTP with resume and checksums, safe extraction.

* `fetch` downloads into `<dest>.part`, resumes a partial file with an HTTP Range request,
  checks the digest (SHA-256 or MD5) and only then renames the file into place; a wrong digest
  deletes the partial file.
* `extract` unpacks tar (any compression) and zip archives, refusing the whole archive before
  writing anything when a member has an absolute path, a `..` component, a link pointing outside
  the target folder, or is a device/FIFO.
* `pin` records the SHA-256 of a file that has no published digest beside it (`<file>.sha256`,
  trust on first use); `check_pin` holds every later use of the file to that record.
* `adopt` (`nlp download NAME --from DIR`) never copies or modifies DIR: it makes
  `<root>/<folder>/` a real folder holding one symlink per top-level entry of DIR, so a
  regenerated split file is written beside the links, never into DIR.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from nlp_cli import __version__
from nlp_cli.datasets.spec import INCOMPLETE, DatasetSpec, Source
from nlp_cli.datasets.splits import save_split_file
from nlp_cli.errors import NlpError, UsageError, did_you_mean

CHUNK = 1 << 16
MARKER = ".nlp-from"
PIN = ".sha256"


class DownloadError(NlpError):
    """A transfer that failed (network, HTTP status, digest)."""


class DamagedArchiveError(NlpError):
    """An archive that ends early or cannot be decompressed."""


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, checksum: str | None) -> bool:
    """True when `path` matches `checksum` ("sha256:<hex>" / "md5:<hex>"); True if none given."""
    if not checksum:
        return True
    algo, _, want = checksum.partition(":")
    return _digest(path, algo) == want.lower()


# A download reports through `progress(label, bytes_done, bytes_total_or_None)`; the library
# never draws a bar itself (the CLI does). False or None: no reports.
Progress = Callable[[str, int, int | None], None]


def _transfer(url: str, part: Path, timeout: float, progress: Progress | bool | None) -> None:
    """One request: append to `part` from its current size (Range) or start it afresh."""
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"nlp/{__version__}"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # nothing left to send: the partial file is complete
            return
        raise
    with resp:
        if start and resp.status != 206:
            start = 0  # the server ignored Range: start over
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        report = progress if callable(progress) else None
        label = part.name.removesuffix(".part")
        with open(part, "ab" if start else "wb") as f:
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                if report is not None:
                    report(label, f.tell(), total)
            size = f.tell()
    if total is not None and size < total:
        raise http.client.IncompleteRead(b"", total - size)


def fetch(
    url: str,
    dest: Path,
    checksum: str | None = None,
    *,
    mirrors: tuple[str, ...] = (),
    retries: int = 3,
    timeout: float = 30.0,
    progress: Progress | bool | None = None,
    size: int | None = None,
) -> Path:
    """Download `url` to `dest` (resuming `dest.part`), verify it, and return `dest`.

    `size`, when given, is the file's length in bytes: a file of any other length is deleted.
    """
    dest = Path(dest)
    if dest.exists() and verify(dest, checksum) and size in (None, dest.stat().st_size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    reason = ""
    for candidate in (url, *mirrors):
        ok = False
        for _ in range(max(1, retries)):
            try:
                _transfer(candidate, part, timeout, progress)
                ok = True
                break
            except (TimeoutError, http.client.IncompleteRead, ConnectionError) as e:
                reason = f"transfer interrupted ({type(e).__name__}); rerun to resume"
            except urllib.error.HTTPError as e:
                reason = f"HTTP {e.code}"
                break
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                reason = str(getattr(e, "reason", e)) or type(e).__name__
                break
        if not ok or not part.exists():
            continue
        got_size = part.stat().st_size
        if size is not None and got_size != size:
            part.unlink()
            raise DownloadError(
                f"{candidate} sent {got_size} bytes, expected {size} (the partial file was deleted)"
            )
        if not verify(part, checksum):
            algo, _, want = (checksum or "").partition(":")
            got = _digest(part, algo)
            part.unlink()
            raise DownloadError(
                f"checksum mismatch for {candidate}: expected {algo} {want}, got {got} "
                "(the partial file was deleted)"
            )
        os.replace(part, dest)
        return dest
    raise DownloadError(f"cannot download {url} ({reason})")


def _member_path(name: str, strip: str, archive: Path) -> str | None:
    """The member's path inside the target folder, None when outside `strip`; refuses escapes."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise NlpError(f"refusing to extract {archive.name}: member {name!r} has an absolute path")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise NlpError(f"refusing to extract {archive.name}: member {name!r} escapes the folder")
    rel = "/".join(parts)
    if strip:
        prefix = strip.strip("/") + "/"
        if not (rel + "/").startswith(prefix):
            return None
        rel = rel[len(prefix) :]
    return rel or None


def _check_link(rel: str, target: str, archive: Path, name: str) -> None:
    if target.startswith("/") or os.path.isabs(target):
        raise NlpError(f"refusing to extract {archive.name}: link {name!r} points outside")
    joined = os.path.normpath(os.path.join(os.path.dirname(rel), target))
    if joined == ".." or joined.startswith("../") or joined.startswith("/"):
        raise NlpError(f"refusing to extract {archive.name}: link {name!r} points outside")


def extract(archive: Path, dest: Path, strip: str = "") -> None:
    """Unpack a tar or zip archive into `dest`, dropping the leading folder `strip`."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest, strip)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, dest, strip)
        else:
            raise DamagedArchiveError(
                f"{archive} is neither a tar nor a zip archive (truncated, or not an archive at "
                "all); download it again"
            )
    except (EOFError, tarfile.TarError, zipfile.BadZipFile, zlib.error) as e:
        raise DamagedArchiveError(
            f"{archive} is truncated or damaged ({type(e).__name__}: {e}); download it again"
        ) from e


def _extract_tar(archive: Path, dest: Path, strip: str) -> None:
    with tarfile.open(archive) as tar:
        members = []
        for m in tar.getmembers():
            rel = _member_path(m.name, strip, archive)
            if m.ischr() or m.isblk() or m.isfifo():
                raise NlpError(f"refusing to extract {archive.name}: {m.name!r} is a device file")
            if m.issym():
                if rel is not None:
                    _check_link(rel, m.linkname, archive, m.name)
            elif m.islnk():
                target = _member_path(m.linkname, strip, archive)
                if target is None:
                    raise NlpError(
                        f"refusing to extract {archive.name}: link {m.name!r} points outside"
                    )
                if rel is not None:
                    m = m.replace(linkname=target, deep=False)
            if rel is not None:
                members.append(m.replace(name=rel, deep=False))
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        try:
            tar.extractall(dest, members=members, **kwargs)
        except tarfile.FilterError as e:
            raise NlpError(f"refusing to extract {archive.name}: {e}") from e


def _extract_zip(archive: Path, dest: Path, strip: str) -> None:
    base = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        plan = []
        for info in zf.infolist():
            rel = _member_path(info.filename, strip, archive)
            is_link = stat.S_ISLNK(info.external_attr >> 16)
            if is_link and rel is not None:
                _check_link(rel, zf.read(info).decode(), archive, info.filename)
            if rel is not None:
                plan.append((info, rel, is_link))
        for info, rel, is_link in plan:
            out = dest / rel
            if not out.parent.resolve().is_relative_to(base):
                raise NlpError(f"refusing to extract {archive.name}: {rel!r} escapes the folder")
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            if is_link:
                out.unlink(missing_ok=True)
                os.symlink(zf.read(info).decode(), out)
                continue
            with zf.open(info) as src, open(out, "wb") as f:
                shutil.copyfileobj(src, f)


def adopt(spec: DatasetSpec, src: Path, folder: Path) -> None:
    """Make `folder` a CoOp folder for `spec` that links to the entries of the local copy `src`."""
    src = Path(src).expanduser()
    if not src.is_dir():
        raise UsageError(f"--from {src}: no such folder")
    for needed in [spec.image_dir, *spec.required]:
        if needed and not (src / needed).is_dir():
            raise UsageError(
                f"--from {src} is not a {spec.name} folder in CoOp's layout: {needed}/ is missing"
            )
    src = src.resolve()
    if folder.exists() and folder.resolve() == src:
        return
    marker = folder / MARKER
    if folder.exists() and any(folder.iterdir()):
        if not marker.is_file() or marker.read_text().strip() != str(src):
            raise NlpError(
                f"{folder} already exists and was not adopted from {src}: remove it first"
            )
    folder.mkdir(parents=True, exist_ok=True)
    for entry in sorted(src.iterdir()):
        link = folder / entry.name
        if link.is_symlink() and Path(os.readlink(link)) == entry:
            continue
        if not link.exists() and not link.is_symlink():
            link.symlink_to(entry, target_is_directory=entry.is_dir())
    marker.write_text(f"{src}\n")


def check_pin(path: Path) -> str:
    """The file's SHA-256; DownloadError when it differs from the one pinned beside it."""
    path = Path(path)
    got = _digest(path, "sha256")
    record = path.with_name(path.name + PIN)
    if record.is_file():
        want = (record.read_text().split() or [""])[0].lower()
        if want != got:
            raise DownloadError(
                f"{path} has SHA-256 {got}, not the {want} pinned in {record.name} when it was "
                "first fetched: the file changed (delete both and download it again)"
            )
    return got


def pin(path: Path) -> tuple[str, bool]:
    """Record the file's SHA-256 beside it (trust on first use), or check it against the record.

    Returns the digest and whether it was recorded just now."""
    path = Path(path)
    digest = check_pin(path)
    record = path.with_name(path.name + PIN)
    if record.is_file():
        return digest, False
    from nlp_cli.artifacts import atomic_write_text

    atomic_write_text(record, f"{digest}  {path.name}\n")
    return digest, True


def _fetch_source(src: Source, spec: DatasetSpec, root: Path, folder: Path, **kw) -> None:
    if not src.extract:
        fetch(
            src.url, folder / src.filename, src.checksum, mirrors=src.mirrors, size=src.size, **kw
        )
        return
    archive = fetch(
        src.url,
        root / ".downloads" / src.filename,
        src.checksum,
        mirrors=src.mirrors,
        size=src.size,
        **kw,
    )
    try:
        extract(archive, folder, src.strip)
    except DamagedArchiveError:
        archive.unlink(missing_ok=True)  # so that a rerun downloads it afresh
        raise
    for inner in src.inner:
        extract(folder / inner, folder)
        (folder / inner).unlink()
    archive.unlink()


def fetch_dataset(
    spec: DatasetSpec,
    root: Path,
    from_dir: Path | None = None,
    *,
    seed: int = 1,
    progress: Progress | bool | None = None,
    timeout: float = 30.0,
) -> tuple[Path, list[str]]:
    """Put `spec` under `root` (download, or adopt `from_dir`); returns its folder and notes."""
    root = Path(root)
    if spec.generate is not None:
        if from_dir is not None:
            raise UsageError(f"{spec.name} is generated locally; --from does not apply")
        return spec.generate(root, 0), []
    folder = root / spec.folder
    notes: list[str] = []
    if from_dir is not None:
        adopt(spec, Path(from_dir), folder)
    elif not spec.present(folder):
        folder.mkdir(parents=True, exist_ok=True)
        # Until every source is in place the folder counts as absent, even if its image
        # folder already exists (a run that died half-way through an extraction).
        (folder / INCOMPLETE).touch()
        for src in spec.sources:
            if src.creates and (folder / src.creates).exists():
                continue
            try:
                _fetch_source(src, spec, root, folder, progress=progress, timeout=timeout)
            except DownloadError as e:
                if src.optional:
                    notes.append(f"{e}; regenerating {src.filename} with CoOp's rule instead")
                    continue
                hint = f" ({spec.note})" if spec.note else ""
                raise DownloadError(
                    f"{e}: place {src.filename} by hand "
                    f"{'unpacked ' if src.extract else ''}in {folder}, or use "
                    f"`nlp download {spec.name} --from DIR` with a copy in CoOp's layout{hint}"
                ) from e
        (folder / INCOMPLETE).unlink()
    for src in spec.sources:
        if src.pin and (folder / src.filename).is_file():
            digest, new = pin(folder / src.filename)
            if new:
                notes.append(
                    f"{src.filename} has no published checksum: pinned its SHA-256 {digest} "
                    f"in {src.filename}{PIN} (every later use is checked against it)"
                )
    if spec.prepare is not None:
        notes += spec.prepare(folder) or []
    if spec.split_file and not (folder / spec.split_file).is_file():
        if spec.build is None:
            raise NlpError(f"{folder} has no {spec.split_file}")
        save_split_file(spec.build(folder, seed), folder / spec.split_file)
        notes.append(f"{spec.split_file} was missing: regenerated with CoOp's rule (seed {seed})")
    return folder, notes


def fetch_model(
    name: str, *, progress: Progress | bool | None = None, timeout: float = 30.0
) -> Path:
    """Download an OpenAI CLIP checkpoint to `clip_model.model_file(name)`, checking SHA-256."""
    from nlp_cli import clip_model

    models = clip_model.openai_models()
    if name not in models:
        raise UsageError(
            f"unknown CLIP model {name!r}{did_you_mean(name, list(models))}: "
            f"known are {', '.join(models)}"
        )
    url = models[name]
    # OpenAI's URLs carry the file's SHA-256 as their second-to-last part; clip checks it so too.
    sha256 = url.rstrip("/").split("/")[-2]
    dest = clip_model.model_file(name)
    try:
        return fetch(url, dest, f"sha256:{sha256}", progress=progress, timeout=timeout)
    except DownloadError as e:
        raise DownloadError(f"{e}: place the file by hand at {dest}") from e


def fetch_open_clip(arch: str, tag: str) -> Path:
    """Download open_clip's pretrained weights `tag` of `arch` through open_clip's own download
    (Hugging Face Hub or URL, its checksums) into `clip_model.open_clip_tag_dir(arch, tag)`.

    open_clip writes into a scratch folder; only a finished file is moved into place, so a failed
    or interrupted download leaves nothing behind and what was there before stays.
    """
    import tempfile

    from nlp_cli import clip_model

    oc = clip_model._open_clip()
    known = oc.list_models()
    if arch not in known:
        raise UsageError(f"unknown open_clip architecture {arch!r}{did_you_mean(arch, known)}")
    tags = oc.list_pretrained_tags_by_model(arch)
    if tag not in tags:
        raise UsageError(
            f"{clip_model.OPEN_CLIP}{arch} has no pretrained tag {tag!r}{did_you_mean(tag, tags)}"
            f": known are {', '.join(tags) or 'none'}"
        )
    stored = clip_model.stored_open_clip(arch, tag)
    if stored is not None:
        return stored
    dest_dir = clip_model.open_clip_tag_dir(arch, tag)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir.parent, prefix=f".{tag}-") as scratch:
        try:
            with clip_model._quiet():
                got = oc.download_pretrained(oc.get_pretrained_cfg(arch, tag), cache_dir=scratch)
        except Exception as e:
            detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise DownloadError(
                f"cannot download {clip_model.OPEN_CLIP}{arch} weights {tag} ({detail}): without "
                f"network pass a checkpoint file with --pretrained PATH"
            ) from None
        if not got or not Path(got).is_file():
            raise DownloadError(f"open_clip gave no weights file for {arch} {tag}")
        real = Path(os.path.realpath(got))  # the Hub's cache links snapshots to blobs
        staged = Path(scratch) / "done"
        staged.mkdir()
        os.replace(real, staged / Path(got).name)
        os.replace(staged, dest_dir)
    return clip_model.stored_open_clip(arch, tag)
