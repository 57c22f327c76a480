"""Trainer hooks: the extension point guards, alerting and custom logic plug into.

A hook is any object with some of these methods (missing ones are skipped); subclass :class:`Hook` to get
no-op defaults. The trainer calls them in registration order:

- ``on_train_start(trainer)`` once, after the model, data and run directory exist (and after a resume).
- ``before_optimizer_step(trainer, step, stats) -> "ok" | "skip"`` before every optimizer step, with
  host floats ``stats``: ``loss`` (the mini-batch loss), ``grad_norm`` (before clipping), ``nonfinite``
  (1.0 when the loss or the gradient holds NaN/Inf), ``ratio/token_max``, ``ratio/token_min``. Returning
  "skip" discards the gradient: no optimizer or scheduler step. Building `stats` costs one host sync per
  optimizer step, so the trainer only does it when at least one hook is registered.
- ``on_step_end(trainer, step, metrics)`` after each rollout step with that step's logged metrics.

``step`` is the 1-based number of the rollout step being run; ``trainer.step`` counts completed steps.
What a hook may call on the trainer: ``step``, ``run_dir``, ``snapshot()``, ``restore(snap)`` (exact:
model, optimizer, scheduler, RNG, data position, step; restore *before* ``scale_lr`` since the scheduler
state is restored too), ``save_checkpoint()``, ``scale_lr(factor)``, ``request_stop(reason)`` and the
counter ``events`` (increment it per event; it is logged as ``guard/events``). A ``restore`` inside
``before_optimizer_step`` abandons the rest of that step's update. Hooks with ``state_dict()`` /
``load_state_dict()`` have their state saved in checkpoints and snapshots.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

OK = "ok"
SKIP = "skip"


@runtime_checkable
class HookProtocol(Protocol):
    """The structural type of a hook (every method optional at runtime)."""

    def on_train_start(self, trainer: Any) -> None: ...

    def before_optimizer_step(self, trainer: Any, step: int, stats: dict[str, float]) -> str: ...

    def on_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> None: ...


class Hook:
    """Base class with no-op methods; override the ones you need."""

    def on_train_start(self, trainer: Any) -> None:
        """Called once before the first step."""

    def before_optimizer_step(self, trainer: Any, step: int, stats: dict[str, float]) -> str:
        """Return "skip" to discard this optimizer step's gradient, "ok" to apply it."""
        return OK

    def on_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        """Called after each rollout step with its metrics."""


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

    def before_optimizer_step(self, trainer: Any, step: int, stats: dict[str, float]) -> str:
        """"skip" if any hook says skip (every hook is still called, so all see the stats)."""
        verdict = OK
        for h in self.hooks:
            if hasattr(h, "before_optimizer_step"):
                v = h.before_optimizer_step(trainer, step, stats)
                if v not in (None, OK, SKIP):
                    raise ValueError(f"{type(h).__name__}.before_optimizer_step returned {v!r}; expected 'ok' or 'skip'")
                if v == SKIP:
                    verdict = SKIP
        return verdict

    def on_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        """Fan out ``on_step_end``."""
        for h in self.hooks:
            if hasattr(h, "on_step_end"):
                h.on_step_end(trainer, step, metrics)

    def state_dict(self) -> list[Any]:
        """Per-hook state for hooks that have ``state_dict`` (None for the others)."""
        return [h.state_dict() if hasattr(h, "state_dict") else None for h in self.hooks]

    def load_state_dict(self, states: list[Any]) -> None:
        """Restore what :meth:`state_dict` returned (hooks matched by position)."""
        for h, s in zip(self.hooks, states or []):
            if s is not None and hasattr(h, "load_state_dict"):
                h.load_state_dict(s)
