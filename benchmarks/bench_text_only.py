"""Loading a ViT-B/16-sized CLIP in full vs its text tower only (`clip_model.load(image=False)`):
load time, peak and steady resident memory, side by side in one run.

Run from the repository root:

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/bench_text_only.py --repeats 3

A random `clip.model.CLIP(512, 224, 12, 768, 16, 77, 49408, 512, 8, 12)` (ViT-B/16's shapes) is
saved in a temporary folder as an fp16 state dict in OpenAI's layout (what `nlp` ships and
tests load) and, with --jit, also as a traced TorchScript archive (the format OpenAI's
downloads come in). Every load runs in a fresh subprocess, the variants alternating, so
that its peak resident memory is its own: the child imports torch, clip and nlp_cli, resets
the kernel's peak mark (VmHWM, /proc/self/clear_refs), notes its resident memory, times
`clip_model.load(CKPT, "cpu", PRECISION, image=...)`, and reports the peak above that baseline,
the resident memory left after the load, the parameter count and a digest of the hand-prompt
features of a few class names (the two variants must agree bit for bit). Prints a Markdown
table (medians over --repeats) and the ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def status_mb(field: str) -> float:
    """A memory figure of /proc/self/status (VmRSS: resident now, VmHWM: its peak) in MiB."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def reset_peak() -> None:
    """Start VmHWM again from the current resident memory (Linux: clear_refs 5), so the peak is
    the load's alone; ru_maxrss cannot be reset, and a child inherits its parent's across exec."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(ckpt: str, variant: str, precision: str, threads: int) -> None:
    import torch

    from nlp_cli import clip_model

    torch.set_num_threads(threads)
    clip_model._clip()  # the import of clip (and torchvision) is not the load's
    reset_peak()
    base = status_mb("VmRSS")
    start = time.perf_counter()
    loaded = clip_model.load(ckpt, "cpu", precision, image=variant == "full")
    seconds = time.perf_counter() - start
    peak = status_mb("VmHWM")
    after = status_mb("VmRSS")
    params = sum(p.numel() for p in loaded.model.parameters())
    feats = clip_model.hand_prompt_features(loaded.model, NAMES)
    digest = hashlib.sha256(feats.numpy().tobytes()).hexdigest()[:16]
    out = {"seconds": seconds, "base": base, "peak": peak - base, "after": after - base}
    print(json.dumps({**out, "params": params, "features": digest}))


def write_checkpoints(folder: Path, jit: bool) -> dict[str, Path]:
    import torch

    from nlp_cli import clip_model

    clip = clip_model._clip()
    torch.manual_seed(0)
    model = clip.model.CLIP(512, 224, 12, 768, 16, 77, 49408, 512, 8, 12).eval()
    out = {"fp16 state dict": clip_model.save_checkpoint(model, folder / "vit-b-16.pt")}
    if jit:
        # CLIP's half layout, as OpenAI's archives hold it (fp16 matrices, fp32 LayerNorms)
        clip.model.convert_weights(model)
        example = (torch.zeros(1, 3, 224, 224).half(), clip_model.tokenize(["a"]))
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example)
        traced.save(str(folder / "vit-b-16-jit.pt"))
        out["TorchScript archive"] = folder / "vit-b-16-jit.pt"
    return out


def run_child(ckpt: Path, variant: str, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--ckpt", str(ckpt)]
    cmd += ["--precision", a.precision, "--threads", str(a.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"child {variant} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16", "amp"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jit", action="store_true", help="also a TorchScript archive")
    p.add_argument("--child", choices=["full", "text"], help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.ckpt, a.child, a.precision, a.threads)
        return
    with tempfile.TemporaryDirectory() as tmp:
        files = write_checkpoints(Path(tmp), a.jit)
        rows = []
        for fmt, ckpt in files.items():
            runs: dict[str, list[dict]] = {"full": [], "text": []}
            for i in range(a.repeats):
                order = ("full", "text") if i % 2 == 0 else ("text", "full")
                for variant in order:
                    runs[variant].append(run_child(ckpt, variant, a))
            digests = {r["features"] for rs in runs.values() for r in rs}
            if len(digests) != 1:
                sys.exit(f"{fmt}: the text features differ between the variants: {digests}")
            med = {
                v: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak", "after")}
                | {"params": rs[0]["params"]}
                for v, rs in runs.items()
            }
            rows.append((fmt, ckpt.stat().st_size / 2**20, med))
    print(
        f"{a.repeats} runs per cell (medians), precision {a.precision}, {a.threads} thread(s); "
        "memory in MiB above the process's resident memory before the load\n"
    )
    print("| checkpoint | loaded | parameters | load s | peak MiB | resident after MiB |")
    print("|---|---|---:|---:|---:|---:|")
    for fmt, size, med in rows:
        for v, label in (("full", "full model"), ("text", "text tower (`image=False`)")):
            m = med[v]
            print(
                f"| {fmt} ({size:.0f} MiB) | {label} | {m['params'] / 1e6:.1f} M | "
                f"{m['seconds']:.2f} | {m['peak']:.0f} | {m['after']:.0f} |"
            )
    print()
    for fmt, _, med in rows:
        f, t = med["full"], med["text"]
        print(
            f"{fmt}: text-only / full: load time {t['seconds'] / f['seconds']:.2f}, peak "
            f"{t['peak'] / f['peak']:.2f}, resident after {t['after'] / f['after']:.2f}; "
            "text features identical"
        )


if __name__ == "__main__":
    main()
