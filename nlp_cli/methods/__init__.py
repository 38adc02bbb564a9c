"""Training methods, registered by name: what happens before each epoch and per batch.

A method is a class with two hooks that the loop in `nlp_cli.train` calls:

* `before_epoch(model, runs, epoch, scale)`: once per epoch for all runs of this method that
  are active (so one text-encoder pass can serve them all): re-partition, refurbish targets, …
* `batch_loss(run, idx, text)`: the scalar to backpropagate for the batch `idx` of run `run`,
  given the current class text features; it records per-sample losses for the history.

Before either, `resolve(config, data)` may fill settings that depend on the data (JoAPR's
per-dataset preset); state that must outlive an epoch goes in `run.carry`, which checkpoints
keep, so a resumed run continues as an uninterrupted one.

Adding a method is one file in this package with a class decorated by `@register`.
"""

from __future__ import annotations

from typing import Any

from nlp_cli.registry import Registry

_REGISTRY: Registry[type] = Registry("method")


class Method:
    """The default hooks: the partition given with the data, the configured loss."""

    name = ""
    # TrainConfig fields that belong to this method (recorded only when it is the method).
    settings: tuple[str, ...] = ()

    def validate(self, config: Any) -> None:
        """Refuse settings this method cannot run with, in one line."""

    def resolve(self, config: Any, data: Any) -> Any:
        """The config this run trains with: `config`, or a copy with data-dependent settings."""
        return config

    def check_data(self, config: Any, data: Any) -> None:
        """Refuse data this method cannot train on, in one line."""

    def before_epoch(self, model: Any, runs: list[Any], epoch: int, scale: float) -> None:
        """Prepare this epoch for `runs` (all of this method, all active)."""

    def batch_loss(self, run: Any, idx: Any, text: Any) -> Any:
        raise NotImplementedError


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """The seed of one epoch's randomness (order, views; `stream` tells uses apart), inside
    torch's 64-bit seed range for any seed (a plain product overflows it for seeds ≥ 2**44)."""
    return (seed * 1_000_003 + epoch + stream) % 2**63


def register(cls: type) -> type:
    """Class decorator adding a method to the registry under `cls.name`."""
    _REGISTRY.add(cls.name, cls)
    return cls


def list_methods() -> list[str]:
    """Names of the registered methods, in registration order."""
    _load()
    return _REGISTRY.names()


def get(name: str) -> Method:
    """A fresh instance of the method called `name`; UsageError for an unknown name."""
    _load()
    return _REGISTRY.get(name)()


def _load() -> None:
    from nlp_cli.methods import joapr, nlprompt, standard  # noqa: F401  (they register)
