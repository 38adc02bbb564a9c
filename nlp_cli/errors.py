"""Errors the CLI turns into one line on stderr and an exit code."""


class NlpError(Exception):
    """A failure the user can act on; exit code 1."""

    exit_code = 1


class UsageError(NlpError):
    """Bad options or arguments; exit code 2."""

    exit_code = 2


class ArtifactError(NlpError):
    """A missing, damaged or incompatible artifact; exit code 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (Slurm, `timeout`, `docker stop`), raised in the main thread: handled like Ctrl-C.

    A KeyboardInterrupt, so that whatever cleans up after Ctrl-C (the atomic writes' temporary
    files, a DataLoader's workers) does the same here; the CLI reports it as `error: terminated`
    and exits 143 (128 + SIGTERM).
    """


def did_you_mean(name: str, choices: list[str]) -> str:
    """A ' (did you mean X?)' hint for a misspelt name, or ''."""
    import difflib

    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
