"""The `nlp` command: one Typer app; each stage is a module in this package with `register(app)`."""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import signal
import sys
import threading
from collections.abc import Iterator

import typer

from nlp_cli import __version__
from nlp_cli.errors import NlpError, Terminated
from nlp_cli.home import cores

# Stages appear in `nlp --help` in pipeline order; a module joins by defining register(app).
STAGE_ORDER = [
    "download",
    "embed",
    "corrupt",
    "purify",
    "train",
    "eval",
    "predict",
    "label_issues",
    "analyze_grad",
    "aggregate",
]

PROGRESS = ("auto", "bar", "line", "none")  # progress.MODES, held equal by a test

app = typer.Typer(
    name="nlp",
    help="Prompt learning on CLIP under noisy labels (NLPrompt, DSPT and baselines).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"nlp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        help="CPU threads for torch (default: half the cores this process may use, at least 1; "
        "OMP_NUM_THREADS wins when set).",
    ),
    progress: str = typer.Option(
        "auto",
        "--progress",
        help="Progress on stderr: bar (Rich), line (one plain line per interval, for log files "
        "and Slurm), none, or auto (bar on a terminal, line elsewhere).",
        autocompletion=lambda incomplete: [m for m in PROGRESS if m.startswith(incomplete)],
    ),
    progress_interval: float = typer.Option(
        10.0, "--progress-interval", help="Seconds between plain progress lines."
    ),
) -> None:
    """Prompt learning on CLIP under noisy labels.

    Stages talk through files: each prints the path of the artifact it wrote on stdout,
    and reads its input from a path argument or from stdin, so they compose in pipes:

        nlp corrupt FEATS --sym 0.5 | nlp purify | nlp train --loss nlprompt | nlp eval
    """
    set_threads(threads)
    from nlp_cli.cli import progress as meters

    meters.configure(progress, progress_interval)


def set_threads(threads: int | None) -> int:
    """The CPU threads torch computes with: `threads`, else OMP_NUM_THREADS, else half the cores.

    Every core's thread oversubscribes a machine whose cores other processes share (a training
    run then burns several times the CPU time of a one-thread run), so the default leaves half
    the cores. Set before torch is imported, through OMP_NUM_THREADS, so
    that `--help` needs no torch; applied directly when torch is already loaded."""
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else max(1, cores() // 2)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads


def _stage_modules() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    names = [n for n in names if n != "output"]
    return sorted(names, key=lambda n: (STAGE_ORDER.index(n) if n in STAGE_ORDER else 99, n))


for _name in _stage_modules():
    _module = importlib.import_module(f"{__name__}.{_name}")
    if hasattr(_module, "register"):
        _module.register(app)


def run(argv: list[str] | None = None) -> int:
    """Run the app and return its exit code; errors become one `error: …` line on stderr.

    SIGTERM is handled like Ctrl-C (temporary files cleaned up) but reported as
    `error: terminated` with exit code 143.
    """
    with _sigterm_raises() as terminated:
        return _run(argv, terminated)


def _run(argv: list[str] | None, terminated: list[bool]) -> int:
    debug = os.environ.get("NLP_DEBUG", "") not in ("", "0")
    try:
        result = app(args=argv, prog_name="nlp", standalone_mode=False)
        if result == 130 and terminated:  # Typer turned our Terminated into 130, silently
            _error("terminated")
            return 143
        if result == 130:  # Typer turns Ctrl-C inside a command into exit code 130, silently
            _error("interrupted")
        return result if isinstance(result, int) else 0
    except NlpError as e:
        if debug:
            raise
        _error(str(e))
        return e.exit_code
    except KeyboardInterrupt as e:
        if isinstance(e, Terminated) or terminated:
            _error("terminated")
            return 143
        _error("interrupted")
        return 130
    except Exception as e:
        # Click's usage errors (vendored by Typer) carry exit_code and format_message.
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            if debug:
                raise
            _error(e.format_message())
            return int(e.exit_code)
        if type(e).__name__ == "Abort":
            _error("aborted")
            return 1
        if debug:
            raise
        _error(f"{type(e).__name__}: {e} (set NLP_DEBUG=1 for the traceback)")
        return 1


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[list[bool]]:
    """While a command runs, SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread.

    Yields a list that is non-empty once SIGTERM arrived (Typer reports any KeyboardInterrupt
    as exit code 130, so `run` needs to know which one it was). A second SIGTERM while the
    first one unwinds is ignored, so that the clean-up is not itself interrupted; SIGKILL
    still ends the process. A SIGTERM the parent set to be ignored stays ignored, and the
    previous handler is restored afterwards.
    """
    terminated: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield terminated
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        yield terminated
        return

    def handler(signum: int, frame: object) -> None:
        terminated.append(True)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield terminated
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _error(message: str) -> None:
    line = " ".join(str(message).split())
    sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
