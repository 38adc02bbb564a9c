"""Progress of long work on stderr: a Rich bar on a terminal, else one plain line per interval.

Both show the same numbers (count, rate, ETA) from one `Ticker`. A log file, a pipe or a Slurm
output file gets the plain lines (each flushed, so `tail -f` follows them); `--progress` picks
the rendering (auto: the bar on a terminal that is not TERM=dumb, the lines elsewhere; NO_COLOR
leaves the bar without colour). Rich is imported only when a bar is drawn.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from nlp_cli.cli import output
from nlp_cli.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

MODES = ("auto", "bar", "line", "none")
INTERVAL = 10.0
_settings: dict[str, Any] = {"mode": "auto", "interval": INTERVAL}


def configure(mode: str = "auto", interval: float = INTERVAL) -> None:
    """The rendering (`--progress`) and the seconds between plain lines (`--progress-interval`)."""
    if mode not in MODES:
        raise UsageError(f"--progress must be one of {', '.join(MODES)}, got {mode!r}")
    if not interval > 0:
        raise UsageError(f"--progress-interval must be positive, got {interval:g}")
    _settings.update(mode=mode, interval=float(interval))


def mode(console: Console | None = None) -> str:
    """bar, line or none: the configured one, or for auto what stderr is."""
    chosen = _settings["mode"]
    if chosen != "auto":
        return chosen
    console = console or output.console
    return "bar" if console.is_terminal and not console.is_dumb_terminal else "line"


def duration(seconds: float) -> str:
    """1h02m, 3m05s, 42s."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def rate_text(per_second: float) -> str:
    """2.5/s, 3.0/min or 1.2/h: the unit that keeps a digit before the point."""
    if per_second >= 1 or per_second == 0:
        return f"{per_second:.1f}/s"
    if per_second * 60 >= 1:
        return f"{per_second * 60:.1f}/min"
    return f"{per_second * 3600:.1f}/h"


class Ticker:
    """Count, rate and ETA of one piece of work, from (done, total) updates; `line()` is its
    plain line, and `update` prints it on stderr at most once per `interval` seconds.

    The rate is the average since the first update (a resumed run counts from where it
    resumed). `bound` marks work that may stop early (Sinkhorn at convergence): its ETA is an
    upper bound, shown as `eta ≤ …`.
    """

    def __init__(
        self,
        label: str,
        unit: str,
        interval: float | None = None,
        bound: bool = False,
        console: Console | None = None,
    ) -> None:
        self.label, self.unit, self.bound = label, unit, bound
        self.interval = _settings["interval"] if interval is None else interval
        self.console = console
        self.start = self.last = self.now = None
        self.first = 0.0
        self.done = self.total = 0.0
        self.detail = ""

    def restart(self) -> None:
        """Count the rate afresh from the next update (a new group of runs, a solver restart)."""
        self.start = None

    def measure(self, done: float, total: float, detail: str = "") -> float:
        """Record an update; returns the time it was taken at."""
        now = time.monotonic()
        if self.start is None:
            self.start, self.first, self.last = now, done, now
        self.done, self.total, self.detail, self.now = done, total, detail, now
        return now

    def rate(self) -> float | None:
        """Units per second since the first update; None before any time has passed."""
        if self.start is None or self.done <= self.first:
            return None
        return (self.done - self.first) / max(self.now - self.start, 1e-9)

    def eta(self) -> str:
        """`eta 3s` (or `eta ≤ 3s`), or "" when unknown or finished."""
        rate = self.rate()
        if rate is None or rate <= 0 or self.done >= self.total:
            return ""
        return f"eta {'≤ ' if self.bound else ''}{duration((self.total - self.done) / rate)}"

    def count(self) -> str:
        """`4/10 images`."""
        return f"{_count(self.done)}/{_count(self.total)} {self.unit}"

    def numbers(self) -> str:
        """`2.0/s, eta 3s`."""
        return ", ".join(x for x in (rate_text(self.rate() or 0.0), self.eta()) if x)

    def line(self) -> str:
        """`embedding 4/10 images (2.0/s, eta 3s)` and the detail, if any."""
        detail = f" {self.detail}" if self.detail else ""
        return f"{self.label} {self.count()} ({self.numbers()}){detail}"

    def update(self, done: float, total: float, detail: str = "") -> None:
        first = self.start is None
        now = self.measure(done, total, detail)
        if first or now - self.last < self.interval:
            return  # (no forced last line: the stage says when it is done, or fails in one line)
        self.last = now
        (self.console or output.console).print(self.line(), markup=False, highlight=False)


def _count(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


class Meter:
    """One piece of long work shown as `mode()` says: a row of the shared Rich bar, a Ticker's
    plain lines, or nothing; with `lines=False` the plain lines are left to the caller, which
    reads the numbers from `ticker`. Several meters may be open at once (a sweep's cells and
    the training inside them); they share one live display."""

    def __init__(
        self,
        label: str,
        unit: str,
        bound: bool = False,
        console: Console | None = None,
        interval: float | None = None,
        lines: bool = True,
    ) -> None:
        self.console = console or output.console
        self.mode = mode(self.console)
        if self.mode == "line" and not lines:
            self.mode = "count"  # the caller prints its own lines from the ticker's numbers
        self.ticker = Ticker(label, unit, interval, bound, self.console)
        self.task = None

    def __enter__(self) -> Meter:
        if self.mode == "bar":
            self.board = _board(self.console)
            self.board.users += 1
        return self

    def update(self, done: float, total: float, detail: str = "") -> None:
        if self.mode == "line":
            self.ticker.update(done, total, detail)
        elif self.mode == "count":
            self.ticker.measure(done, total, detail)
        elif self.mode == "bar":
            self.ticker.measure(done, total, detail)
            self.board.show(self)

    def restart(self) -> None:
        self.ticker.restart()

    def __exit__(self, *exc: object) -> None:
        if self.mode == "bar":
            self.board.release(self)


class _Board:
    """The one Rich Progress that every open bar meter is a row of."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, Progress, TextColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[count]} ({task.fields[numbers]}){task.fields[detail]}"),
            console=console,
            transient=True,
        )
        self.users = 0
        self.progress.start()

    def show(self, meter: Meter) -> None:
        t = meter.ticker
        fields = {
            "count": t.count(),
            "numbers": t.numbers(),
            "detail": f" {t.detail}" if t.detail else "",
        }
        if meter.task is None:
            meter.task = self.progress.add_task(t.label, total=t.total, **fields)
        self.progress.update(meter.task, completed=t.done, total=t.total, **fields)

    def release(self, meter: Meter) -> None:
        if meter.task is not None:
            self.progress.remove_task(meter.task)
        self.users -= 1
        if self.users == 0:
            self.progress.stop()
            _boards.pop(id(self.progress.console), None)


_boards: dict[int, _Board] = {}


def _board(console: Console) -> _Board:
    if id(console) not in _boards:
        _boards[id(console)] = _Board(console)
    return _boards[id(console)]


class Steps(Meter):
    """Training's optimiser steps, fed by `on_step(epoch, step, steps, epochs)`: the count is the
    steps taken, the total adds the steps left at the current epoch's size (an epoch's size may
    change: NLPrompt's partition does). A new group of runs (epoch back at its start) counts
    afresh."""

    def __init__(self, label: str = "training", **kwargs: Any) -> None:
        super().__init__(label, "steps", **kwargs)
        self.epoch = -1
        self.base = self.size = 0

    def __call__(self, epoch: int, step: int, steps: int, epochs: int) -> None:
        if epoch < self.epoch or self.epoch < 0:
            self.restart()
            self.base = epoch * steps  # a resumed run: its earlier epochs at this size
        elif epoch > self.epoch:
            self.base += self.size
        self.epoch, self.size = epoch, steps
        total = self.base + steps * (epochs - epoch)
        self.update(self.base + step, total, f"epoch {epoch + 1}/{epochs}")
