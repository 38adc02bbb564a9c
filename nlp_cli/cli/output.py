"""The one place that decides what goes to stdout (artifact paths, JSON) and stderr (the rest)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlp_cli.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    console: Console

_console: Console | None = None


def _stderr() -> Console:
    """The stderr console, made on first use: importing Rich would cost `nlp --help` and TAB
    a fair share of their time."""
    global _console
    if _console is None:
        from rich.console import Console

        # Log lines are not wrapped at the console width (80 columns when stderr is a file or
        # a pipe): a long line stays one line for grep and for the reader of a log.
        _console = Console(stderr=True, highlight=False, soft_wrap=True)
    return _console


def __getattr__(name: str) -> Any:
    if name == "console":
        return _stderr()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def input_path(arg: Path | None, what: str = "input artifact") -> Path:
    """The positional path, or else the one non-empty line piped on stdin.

    Several non-empty lines are refused rather than guessed at: the previous stage wrote more
    than one artifact (or something else than a path reached stdin).
    """
    if arg is not None:
        return Path(arg)
    stdin = sys.stdin
    if stdin is None or stdin.closed or stdin.isatty():
        raise UsageError(f"no {what} given: pass a path, or pipe one in from the previous stage")
    lines = [line.strip() for line in stdin.read().splitlines() if line.strip()]
    if not lines:
        raise UsageError(f"no {what} given: stdin was empty (did the previous stage fail?)")
    if len(lines) > 1:
        shown = ", ".join(repr(line[:60]) for line in lines[:2])
        raise UsageError(
            f"no single {what} given: stdin holds {len(lines)} lines ({shown}"
            f"{', …' if len(lines) > 2 else ''}); pipe one path, or pass it as an argument"
        )
    return Path(lines[0])


def emit(path: Path | str, summary: dict[str, Any] | None = None, as_json: bool = False) -> None:
    """Print the artifact path (or, with --json, a JSON summary holding it) on stdout."""
    if as_json:
        print(json.dumps({"path": str(path), **(summary or {})}, default=_jsonable))
    else:
        print(str(path))
    sys.stdout.flush()


def emit_json(data: dict[str, Any]) -> None:
    """Print a JSON object on stdout (for commands whose result is data, not a file)."""
    print(json.dumps(data, default=_jsonable))
    sys.stdout.flush()


def info(message: str) -> None:
    """A log line on stderr, printed as it is (brackets in names and paths are not markup)."""
    _stderr().print(message, markup=False)


def warn(message: str) -> None:
    """A warning line on stderr (its text printed as it is)."""
    from rich.markup import escape

    _stderr().print(f"[yellow]warning:[/yellow] {escape(message)}")


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
