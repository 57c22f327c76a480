"""Trainer hooks: the extension point guards, alerting and custom logic plug into.

A hook is any object with some of these methods (missing ones are skipped); subclass :class:`Hook` to get
no-op defaults. The trainer calls them in registration order:

- ``on_train_start(trainer)`` once, after the model, data and run directory exist (and after a resume).
- ``before_optimizer_step(trainer, step, stats) -> verdict`` before every optimizer step, with host floats
  ``stats``: ``loss`` (the mini-batch loss), ``grad_norm`` (before clipping), ``nonfinite`` (1.0 when the
  loss or the gradient holds NaN/Inf), ``ratio/token_max``, ``ratio/token_min``. Building `stats` costs one
  host sync per optimizer step, so the trainer only does it when at least one hook is registered.
- ``on_step_end(trainer, step, metrics) -> verdict | None`` after each rollout step with its logged metrics.

Verdicts: ``"ok"`` (apply the update), ``"skip"`` (discard this update's gradient: no optimizer or
scheduler step), or a :class:`Restore` (abandon the rest of the running step and return to a snapshot).
Hooks never restore the trainer themselves: the trainer carries out a Restore in one place, between steps
(:meth:`gmpo.train.GMPOTrainer.step`), then scales the learning rate by ``lr_factor`` (compounding over
successive rollbacks) and retries the step with a fresh rollout seed. When several hooks answer, the most
severe verdict wins (Restore > skip > ok); a stop is requested with ``trainer.request_stop(reason)``.

``step`` is the 1-based number of the rollout step being run; ``trainer.global_step`` counts completed
steps. What a hook may call on the trainer: ``global_step``, ``run_dir``, ``snapshot()``,
``load_last_checkpoint()``, ``save_checkpoint()``, ``request_stop(reason)``, ``rollbacks`` (restores carried
out so far in the run; every step after the k-th samples with retry-k seeds) and the counter ``events`` (increment it per event; it is
logged as ``guard/events``). Hooks with ``state_dict()`` / ``load_state_dict()`` have their state saved in
checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

OK = "ok"
SKIP = "skip"


@dataclass(frozen=True)
class Restore:
    """Verdict: abandon the running step and return to `snapshot` (from ``trainer.snapshot()`` or
    ``trainer.load_last_checkpoint()``) before the next step; multiply the learning rate by `lr_factor`."""

    snapshot: dict
    lr_factor: float = 1.0
    source: str = ""  # what the snapshot is, for messages


def severity(verdict: Any) -> int:
    """0 for ok/None, 1 for skip, 2 for a Restore; ValueError for anything else."""
    if verdict is None or verdict == OK:
        return 0
    if isinstance(verdict, Restore):
        return 2
    if verdict == SKIP:
        return 1
    raise ValueError(f"a hook returned {verdict!r}; expected 'ok', 'skip' or a Restore")


@runtime_checkable
class HookProtocol(Protocol):
    """The structural type of a hook (every method optional at runtime)."""

    def on_train_start(self, trainer: Any) -> None: ...

    def before_optimizer_step(self, trainer: Any, step: int, stats: dict[str, float]) -> Any: ...

    def on_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> Any: ...


class Hook:
    """Base class with no-op methods; override the ones you need."""

    def on_train_start(self, trainer: Any) -> None:
        """Called once before the first step."""

    def before_optimizer_step(self, trainer: Any, step: int, stats: dict[str, float]) -> Any:
        """Return "skip" to discard this optimizer step's gradient, a Restore to roll back, "ok" to apply it."""
        return OK

    def on_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> Any:
        """Called after each rollout step with its metrics; may return a Restore."""
        return None


class HookList:
    """Dispatches to registered hooks; a method a hook lacks is skipped."""

    def __init__(self, hooks: list[Any] | None = None):
        self.hooks: list[Any] = list(hooks or [])

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def add(self, hook: Any) -> None:
        """Register a hook (called after those already registered)."""
        self.hooks.append(hook)

    def on_train_start(self, trainer: Any) -> None:
        """Fan out ``on_train_start``."""
        for h in self.hooks:
            if hasattr(h, "on_train_start"):
                h.on_train_start(trainer)

    def _fan(self, method: str, *args) -> Any:
        worst = OK
        for h in self.hooks:  # every hook is called, so all see the values
            if hasattr(h, method):
                v = getattr(h, method)(*args)
                if severity(v) > severity(worst):
                    worst = v
        return worst

    def before_optimizer_step(self, trainer: Any, step: int, stats: dict[str, float]) -> Any:
        """The most severe verdict of the hooks (Restore > "skip" > "ok")."""
        return self._fan("before_optimizer_step", trainer, step, stats)

    def on_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> Any:
        """Fan out ``on_step_end``; the most severe verdict (a Restore or "ok")."""
        v = self._fan("on_step_end", trainer, step, metrics)
        return v if isinstance(v, Restore) else OK

    def state_dict(self) -> list[Any]:
        """Per-hook state for hooks that have ``state_dict`` (None for the others)."""
        return [h.state_dict() if hasattr(h, "state_dict") else None for h in self.hooks]

    def load_state_dict(self, states: list[Any]) -> None:
        """Restore what :meth:`state_dict` returned (hooks matched by position)."""
        for h, s in zip(self.hooks, states or []):
            if s is not None and hasattr(h, "load_state_dict"):
                h.load_state_dict(s)
