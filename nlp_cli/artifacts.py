"""Artifacts: self-describing safetensors files, written atomically, checked on load.

Every artifact's metadata holds JSON-encoded values under these keys (docs/ARTIFACTS.md):
kind, schema, nlp_version, model, dataset, classnames, options, upstream, key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nlp_cli import __version__
from nlp_cli.errors import ArtifactError, UsageError
from nlp_cli.home import artifacts_dir

SCHEMA = 1
KINDS = ("features", "labelset", "partition", "prompt")
REQUIRED_TENSORS = {
    "features": ("train.features", "train.labels", "test.features", "test.labels"),
    "labelset": ("labels", "true_labels", "index"),
    "partition": ("labels", "true_labels", "index", "clean", "pseudo_labels", "scores"),
    "prompt": ("ctx",),
}


@dataclass
class Artifact:
    """A loaded artifact: its tensors, its decoded metadata and its file digest."""

    path: Path
    kind: str
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(repr=False)
    digest: str

    @property
    def classnames(self) -> list[str]:
        return list(self.meta.get("classnames") or [])

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.meta.get("model") or {})

    def ref(self) -> dict[str, str]:
        """How a downstream artifact names this one: kind, absolute path and digest."""
        return {"kind": self.kind, "path": str(self.path.resolve()), "digest": self.digest}


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else delete it.

    * A character or block device or a FIFO (`/dev/null`, a named pipe, `>(cmd)`) is written
      through: the path itself is yielded, never renamed over (as root, a rename would replace
      `/dev/null` with a regular file).
    * A symlink is kept: the temporary file goes beside the link's resolved target and is
      renamed over that target.
    * The new file gets the mode of the file it replaces, or `0o666 & ~umask` for a new file
      (what `open()` would give it), not mkstemp's 0600.
    """
    path = Path(path)
    if _is_special(path):
        yield path
        return
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if target.is_dir():
        raise ArtifactError(f"{path} is a folder: name a file to write")
    _refuse_odd_file(path, target)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise ArtifactError(f"cannot write to {parent}: {e.strerror or e}") from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _file_mode(target))
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _is_special(path: Path) -> bool:
    """A character or block device or a FIFO (through any symlinks): written through, in place."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)


def _refuse_odd_file(path: Path, target: Path) -> None:
    """Refuse to rename over what is neither a regular file nor absent (a socket, say)."""
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise ArtifactError(f"{path} is not a regular file: cannot write an artifact to it")


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _file_mode(target: Path) -> int:
    """The permission bits a rewritten `target` keeps, or those `open()` gives a new file."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return 0o666 & ~_umask()


@contextlib.contextmanager
def locked(path: Path | str, on_wait: Callable[[Path], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the lock file `path` (created, and removed on release);
    `on_wait(path)` hears once that another process holds it and this one waits."""
    import fcntl

    path = Path(path)
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ArtifactError(f"cannot write to {path.parent}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(path)
                on_wait = None
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            # The holder before us may have removed the file: then lock the new one.
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def ensure_writable(path: Path | str) -> None:
    """Fail in one line, before any work, when the folder of `path` cannot be made or written."""
    path = Path(path)
    if _is_special(path):  # a device or a FIFO is written through, in place
        if not os.access(path, os.W_OK):
            raise ArtifactError(f"cannot write to {path}: permission denied")
        return
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot write to {parent}: {e.strerror or e}") from e
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ArtifactError(f"cannot write to {parent}: permission denied")


def check_output(
    out: Path | str | None, inputs: list[Path | str | None] | tuple = (), what: str = "--out"
) -> None:
    """Refuse, before any work, an output path that would destroy what the stage reads.

    One `UsageError` line for: a path holding a newline (stdout carries one path a line), an
    existing folder, an input itself, or an artifact an input was made from (the `upstream`
    references in each input's metadata, followed recursively). Paths are compared resolved,
    so a symlink, `./x` and `/abs/x` all count, as do hard links. A missing or unreadable input
    or upstream file is passed over (loading it gives its own error). Then `ensure_writable`.
    """
    if out is None:
        return
    text = str(out)
    if "\n" in text or "\r" in text:
        raise UsageError(f"{what} {text!r} contains a newline: name a file without one")
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"{what} {out} is an existing folder: name a file to write")
    real = os.path.realpath(out)
    for given in inputs:
        if given is None:
            continue
        for path, made in _inputs_and_upstream(Path(given)):
            if os.path.realpath(path) != real and not _same_file(path, out):
                continue
            if made is None:
                raise UsageError(
                    f"{what} {out} is the input {given}: writing it would destroy the input "
                    "(choose another path)"
                )
            same = "" if str(path) == str(out) else f" (that is {path})"
            via = "" if made == Path(given) else f" through {made}"
            raise UsageError(
                f"{what} {out}{same} is an artifact the input {given} was made from{via}: "
                f"writing it would break {given} (choose another path)"
            )
    ensure_writable(out)


def _inputs_and_upstream(start: Path) -> Iterator[tuple[Path, Path | None]]:
    """`start` (with None), then every upstream artifact reachable from it (with its user)."""
    yield start, None
    seen = {os.path.realpath(start)}
    todo = [start]
    while todo:
        path = todo.pop()
        for ref in _upstream_paths(path):
            key = os.path.realpath(ref)
            if key in seen or not ref.is_file():
                continue
            seen.add(key)
            yield ref, path
            todo.append(ref)


def _upstream_paths(path: Path) -> list[Path]:
    """The paths in an artifact's `upstream` references; [] for anything unreadable."""
    from safetensors import safe_open

    try:
        if not path.is_file():
            return []
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("upstream")
        upstream = json.loads(raw) if raw else {}
    except Exception:  # not an artifact: its own load reports that
        return []
    refs = list(upstream.values()) if isinstance(upstream, dict) else upstream
    if not isinstance(refs, list):
        return []
    return [Path(r["path"]) for r in refs if isinstance(r, dict) and isinstance(r.get("path"), str)]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write bytes so that `path` is either its old content or the complete new one."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # a FIFO or /dev/null cannot fsync
                os.fsync(f.fileno())


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write text atomically."""
    atomic_write_bytes(path, text.encode())


_digest_cache: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path | str) -> str:
    """SHA-256 of a file's bytes (memoised on path, size and mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _digest_cache:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _digest_cache[key] = h.hexdigest()
    return _digest_cache[key]


def cache_key(kind: str, upstream: dict[str, str], options: dict[str, Any]) -> str:
    """A short hash of what determines an artifact: its kind, upstream digests and options."""
    blob = json.dumps(
        {"kind": kind, "schema": SCHEMA, "upstream": upstream, "options": options},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_out(kind: str, stem: str, key: str, suffix: str = ".safetensors") -> Path:
    """A descriptive default path under NLP_HOME for an artifact."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem).strip("-") or kind
    return artifacts_dir(kind) / f"{safe}-{key[:10]}{suffix}"


def save(
    path: Path | str,
    kind: str,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
) -> Path:
    """Write an artifact atomically; `meta` gets kind, schema and version added."""
    from safetensors.torch import save as st_save

    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    missing = [t for t in REQUIRED_TENSORS[kind] if t not in tensors]
    if missing:
        raise ValueError(f"a {kind} artifact needs tensors {missing}")
    check_finite(path, tensors)
    full = {"kind": kind, "schema": SCHEMA, "nlp_version": __version__, **meta}
    encoded = {k: json.dumps(v, sort_keys=True) for k, v in full.items()}
    data = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, encoded)
    path = Path(path)
    atomic_write_bytes(path, data)
    return path


def check_finite(path: Path | str, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse, in one line naming the tensor, to write a floating tensor holding NaN or ±inf."""
    for name, t in tensors.items():
        if not t.is_floating_point() or not t.numel():
            continue
        flat = t.detach().reshape(-1)
        # in chunks, so that the check needs little memory beside a large tensor
        if all(bool(torch.isfinite(c).all()) for c in flat.split(1 << 24)):
            continue
        bad = sum(int((~torch.isfinite(c)).sum()) for c in flat.split(1 << 24))
        raise ArtifactError(
            f"refusing to write {path}: its tensor {name} holds {bad} NaN or infinite value(s)"
        )


def read_meta(path: Path | str) -> dict[str, Any]:
    """Decode only the metadata of an artifact (cheap: reads the header)."""
    from safetensors import safe_open

    path = Path(path)
    _check_exists(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        return {k: json.loads(v) for k, v in raw.items()}
    except Exception as e:  # safetensors raises several types for damaged files
        raise ArtifactError(
            f"{path} is not a readable nlp artifact (truncated, damaged or not safetensors)"
        ) from e


def load(path: Path | str, kind: str | tuple[str, ...] | None = None) -> Artifact:
    """Load and check an artifact; `kind` is the kind (or kinds) the caller accepts."""
    from safetensors import safe_open

    path = Path(path)
    meta = read_meta(path)
    got = meta.get("kind")
    if got not in KINDS:
        raise ArtifactError(f"{path} is a safetensors file but not an nlp artifact (no kind)")
    wanted = (kind,) if isinstance(kind, str) else kind
    if wanted and got not in wanted:
        raise ArtifactError(
            f"{path} is a {got} artifact, but a {' or '.join(wanted)} is expected here"
        )
    if meta.get("schema") != SCHEMA:
        raise ArtifactError(
            f"{path} has schema {meta.get('schema')}, this nlp reads schema {SCHEMA}"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ArtifactError(f"{path} is truncated or damaged: its tensors cannot be read") from e
    missing = [t for t in REQUIRED_TENSORS[got] if t not in tensors]
    if missing:
        raise ArtifactError(f"{path} lacks the tensors {missing} a {got} artifact must have")
    check_tensors(path, got, tensors, meta)
    return Artifact(path=path, kind=got, meta=meta, tensors=tensors, digest=file_digest(path))


def check_tensors(
    path: Path, kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Refuse, in one line, features that are not finite and labels that name no class."""
    for name, t in tensors.items():
        checked = name.endswith((".features", ".views")) or name == "ctx"
        if t.is_floating_point() and checked and t.numel():
            # max() propagates NaN and |±inf| = inf: one cheap pass over the data, then the
            # slower search for where the first bad value is only when there is one.
            if torch.isfinite(t.abs().max()):
                continue
            bad = ~torch.isfinite(t)
            if bad.any():
                row = int(torch.nonzero(bad)[0][-2]) if t.dim() > 1 else 0
                raise ArtifactError(
                    f"{path}: {name} holds {int(bad.sum())} NaN or infinite value(s), first in "
                    f"row {row} (re-create it with `nlp {'train' if name == 'ctx' else 'embed'}`)"
                )
    n_cls = len(meta.get("classnames") or [])
    label_names = [n for n in tensors if n in ("labels", "true_labels", "pseudo_labels")]
    label_names += [n for n in tensors if n.endswith(".labels")]
    for name in label_names:
        y = tensors[name]
        outside = y[(y < 0) | (y >= n_cls)] if y.numel() and n_cls else y[:0]
        if outside.numel():
            raise ArtifactError(
                f"{path}: {name} holds label {int(outside[0])} outside 0..{n_cls - 1} "
                f"(it has {n_cls} classes)"
            )
    if kind == "features":
        for name in [n for n in tensors if n.endswith(".features")]:
            split = name.removesuffix(".features")
            labels = tensors.get(f"{split}.labels")
            if labels is not None and len(labels) != len(tensors[name]):
                raise ArtifactError(
                    f"{path}: {split} has {len(tensors[name])} feature rows but "
                    f"{len(labels)} labels (re-create it with `nlp embed`)"
                )
    if kind in ("labelset", "partition"):
        sizes = {n: len(tensors[n]) for n in REQUIRED_TENSORS[kind]}
        if len(set(sizes.values())) > 1:
            raise ArtifactError(f"{path}: its per-sample tensors differ in length {sizes}")


def load_upstream(artifact: Artifact, role: str, kind: str | tuple[str, ...] | None = None):
    """Load the artifact `artifact` was made from, checking it has not changed since."""
    ref = (artifact.meta.get("upstream") or {}).get(role)
    if not ref:
        raise ArtifactError(f"{artifact.path} records no {role} it was made from")
    up_path = Path(ref["path"])
    if not up_path.exists():
        raise ArtifactError(f"{artifact.path} was made from {up_path}, which no longer exists")
    up = load(up_path, kind)
    if up.digest != ref["digest"]:
        raise ArtifactError(
            f"{up_path} changed after {artifact.path} was made from it (digest mismatch)"
        )
    return up


def check_compatible(a: Artifact | dict, b: Artifact | dict, what: str) -> None:
    """Refuse, in one line, two artifacts made for other classes or another CLIP model."""
    ma = a.meta if isinstance(a, Artifact) else a
    mb = b.meta if isinstance(b, Artifact) else b
    ca, cb = ma.get("classnames"), mb.get("classnames")
    if ca is not None and cb is not None and list(ca) != list(cb):
        raise ArtifactError(
            f"{what}: made for other classes ({len(ca)} vs {len(cb)} classes"
            + (f", e.g. {ca[0]!r} vs {cb[0]!r}" if ca and cb and ca[0] != cb[0] else "")
            + ")"
        )
    da = (ma.get("model") or {}).get("digest")
    db = (mb.get("model") or {}).get("digest")
    if da and db and da != db:
        na = (ma.get("model") or {}).get("name")
        nb = (mb.get("model") or {}).get("name")
        raise ArtifactError(f"{what}: made with another CLIP model ({na} vs {nb})")


def cached(path: Path, key: str, kind: str) -> bool:
    """True when `path` already holds a readable artifact of `kind` made with `key`.

    Only a regular file can: a device or a FIFO at `--out` is never read (reading a FIFO
    would wait for a writer that never comes).
    """
    if not Path(path).is_file():
        return False
    try:
        meta = read_meta(path)
    except ArtifactError:
        return False
    return meta.get("kind") == kind and meta.get("key") == key


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise ArtifactError(f"{path}: no such file")
    if path.is_dir():
        raise ArtifactError(f"{path} is a folder, an artifact file is expected")
