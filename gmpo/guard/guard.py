"""The training guard: stability detectors that act (warn, skip the update, roll back, stop).

:class:`Guard` is a trainer hook (:mod:`gmpo.train.hooks` protocol):

- ``before_optimizer_step(trainer, step, stats)`` runs the detectors that see an update before it is applied
  (NaN/Inf, gradient-norm spike, token-ratio explosion) and returns ``"skip"`` when the update must not be
  applied, or a :class:`gmpo.train.hooks.Restore` for a rollback;
- ``on_step_end(trainer, step, metrics)`` runs the per-step detectors (entropy collapse, reward collapse,
  completion-length blow-up, no learning signal), keeps the last good in-memory snapshot, and returns a
  Restore for a rollback.

The guard never restores the trainer itself: a rollback is a Restore verdict (the last good snapshot, or the
newest checkpoint on disk, and ``rollback_lr_factor``) that the trainer carries out between steps.

Each detector (:mod:`gmpo.guard.detectors`) has a threshold and an action from :data:`ACTIONS`. Every event
is a console line, a JSON line in ``<run_dir>/alerts.jsonl`` (step, detector, value, threshold, action,
time, message), an optional webhook POST, and ``trainer.events += 1`` (logged as ``guard/events``). A
``warn`` is edge-triggered: a condition that persists is reported once and re-armed when it clears, so a
slow collapse is one line, not one per step.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from gmpo.guard.detectors import (Detector, EntropyCollapse, GradSpike, LengthBlowup, NoSignal, NonFinite,
                                  RatioExplosion, RewardCollapse)
from gmpo.runs.files import ALERTS
from gmpo.train.hooks import OK, SKIP, Restore

log = logging.getLogger("gmpo.guard")

ACTIONS = ("off", "warn", "skip", "rollback", "stop")
_SEVERITY = {"warn": 1, "skip": 2, "rollback": 3, "stop": 4}


# ----------------------------------------------------------------------------------------------
# webhook


class Webhook:
    """JSON POST of guard events with a timeout, at most one retry, and a minimum interval between posts.

    Events inside the interval are not sent; their number rides along as ``suppressed`` in the next post.
    Failures are logged and swallowed: an alerting endpoint that is down never stops training.
    """

    def __init__(self, url: str, timeout: float = 3.0, min_interval: float = 30.0, clock=time.monotonic,
                 source: str = "gmpo.guard"):
        self.url, self.timeout, self.min_interval, self.clock = url, timeout, min_interval, clock
        self.source = source  # the "source" field of every post: who raised the event (gmpo.guard, gmpo.serve)
        self.last: float | None = None
        self.suppressed = 0
        self.sent = 0
        self.failed = 0

    def send(self, event: dict) -> bool:
        """POST one event (unless rate-limited); True when the endpoint answered 2xx."""
        now = self.clock()
        if self.last is not None and now - self.last < self.min_interval:
            self.suppressed += 1
            return False
        self.last = now
        body = json.dumps({**event, "suppressed": self.suppressed, "source": self.source}).encode()
        req = urllib.request.Request(self.url, data=body, method="POST", headers={"Content-Type": "application/json"})
        err: Exception | None = None
        for _ in range(2):  # one try and at most one retry
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    resp.read()
                self.sent += 1
                self.suppressed = 0
                return True
            except Exception as e:  # noqa: BLE001 - URLError/HTTPError, timeouts, http.client errors: never fatal
                err = e
        self.failed += 1
        log.warning("guard webhook %s failed: %s", self.url, err)
        return False


# ----------------------------------------------------------------------------------------------
# the hook


class Guard:
    """Trainer hook running the stability detectors of ``cfg`` (a :class:`gmpo.config.GuardConfig`).

    ``clock`` (default ``time.time``) stamps events; ``webhook`` overrides the one built from the config.
    """

    def __init__(self, cfg, clock=time.time, webhook: Webhook | None = None):
        for key in ("nonfinite", "grad_spike", "ratio", "entropy", "reward", "length", "no_signal"):
            a = getattr(cfg, f"{key}_action")
            if a not in ACTIONS:
                raise ValueError(f"guard.{key}_action={a!r} is not one of {', '.join(ACTIONS)}")
        self.cfg, self.clock = cfg, clock
        h = cfg.min_history
        self.detectors: list[Detector] = [
            NonFinite(cfg.nonfinite_action),
            GradSpike(cfg.grad_spike_action, cfg.grad_spike_z, cfg.grad_spike_window, h),
            RatioExplosion(cfg.ratio_action, cfg.ratio_bound),
            EntropyCollapse(cfg.entropy_action, cfg.entropy_floor),
            RewardCollapse(cfg.reward_action, cfg.reward_drop, cfg.reward_window, cfg.reward_smooth, h),
            LengthBlowup(cfg.length_action, cfg.length_factor, cfg.length_window, cfg.truncated_max, h),
            NoSignal(cfg.no_signal_action),
        ]
        self.detectors = [d for d in self.detectors if d.action != "off"]
        # in-memory snapshots cost a copy of weights + optimizer state: keep them only if a rollback can happen
        self.keep_snapshots = cfg.snapshot_every > 0 and any(d.action == "rollback" for d in self.detectors)
        self.webhook = webhook or (Webhook(cfg.webhook_url, cfg.webhook_timeout, cfg.webhook_min_interval)
                                   if cfg.webhook_url else None)
        self.snapshot: dict | None = None  # last good in-memory state (never saved: re-taken after resume)
        self.snapshot_step = -1
        self.healthy_steps = 0
        self.rollbacks = 0
        self.n_events = 0
        self._seen_step: dict[str, int] = {}  # per-step detector -> step it last ran at
        self._step_bad = False  # some detector condition was true during the running step
        self._step_rolled_back = False  # a rollback happened during the running step
        self._stopping = False  # this guard asked the trainer to stop
        self._save_pending = False  # a stop decided mid-step: checkpoint at the step's end
        self._main = True  # False on ranks other than 0 (set at train start): they decide but do not report

    # -- hook protocol --------------------------------------------------------------------------

    def on_train_start(self, trainer) -> None:
        """Take the first in-memory snapshot (the state training starts or resumes from)."""
        self._main = bool(getattr(trainer, "is_main", True))
        if self.keep_snapshots:
            self.snapshot, self.snapshot_step = trainer.snapshot(), int(trainer.global_step)

    def before_optimizer_step(self, trainer, step: int, stats: dict[str, float]):
        """Run the pre-update detectors on ``stats``: "ok", "skip" (the update must not be applied) or a
        Restore (roll back)."""
        if self._stopping or self._step_rolled_back:  # the running step is void: apply none of its remaining updates
            return SKIP
        fired = self._run(trainer, step, stats, pre=True)
        action, restore = self._act(trainer, step, fired, pre=True)
        if restore is not None:
            return restore
        return SKIP if action in ("skip", "rollback", "stop") else OK

    def on_step_end(self, trainer, step: int, metrics: dict[str, float]):
        """Run the per-step detectors on ``metrics``; keep a snapshot every ``snapshot_every`` healthy steps.
        Returns a Restore when a detector asks for a rollback, else None."""
        fired = self._run(trainer, step, metrics, pre=False)
        _, restore = self._act(trainer, step, fired, pre=False)
        if self._save_pending:
            self._save_for_stop(trainer, step)
        healthy = not (self._step_bad or self._step_rolled_back or self._stopping)
        self._step_bad = self._step_rolled_back = False  # the trainer calls on_step_end once per attempted step
        if not healthy:
            return restore
        self.healthy_steps += 1
        if self.keep_snapshots and self.healthy_steps % self.cfg.snapshot_every == 0:
            self.snapshot, self.snapshot_step = trainer.snapshot(), int(step)
        return None

    # -- detection ------------------------------------------------------------------------------

    def _run(self, trainer, step: int, values: dict, pre: bool) -> list[tuple[Detector, tuple]]:
        """Evaluate the detectors that belong to this call; return [(detector, (value, threshold, msg))]."""
        fired = []
        for d in self.detectors:
            if d.pre_update != pre and not (pre and d.sees(values)):
                continue  # a per-step detector runs before the update only if the trainer passes its keys
            if not d.pre_update:
                if self._seen_step.get(d.name) == step or not d.sees(values):
                    continue
                self._seen_step[d.name] = step
            elif not d.sees(values):
                continue
            hit = d.check(values)
            if hit is None:
                d.active = False
                continue
            self._step_bad = True
            if d.action == "warn" and d.active:
                continue  # still in the same episode: reported once already
            d.active = True
            fired.append((d, hit))
            if d.name == "nonfinite":
                break  # the other pre-update detectors would only echo the NaN
        return fired

    # -- actions --------------------------------------------------------------------------------

    def _act(self, trainer, step: int, fired: list, pre: bool) -> tuple[str, Restore | None]:
        """Emit one event per fired detector and decide the most severe action; (action or '', Restore or None)."""
        worst = ""
        for d, (value, threshold, msg) in fired:
            action = d.action
            if action == "skip" and not pre:
                action, msg = "warn", msg + " (seen after the update: cannot skip it, warning instead)"
            if action == "rollback" and self.rollbacks >= self.cfg.max_rollbacks:
                action, msg = "stop", msg + f" (already rolled back {self.rollbacks} times: stopping)"
            self.emit(trainer, step, d.name, value, threshold, action, msg)
            if _SEVERITY[action] > _SEVERITY.get(worst, 0):
                worst = action
        restore = self._rollback(trainer, step) if worst == "rollback" else None
        if worst == "rollback" and restore is None:
            worst = "stop"
        if worst == "stop":
            names = ", ".join(d.name for d, _ in fired)
            trainer.request_stop(f"guard: {names} at step {step}")
            self._stopping = True
            self._save_pending = True
            if pre:  # mid-step state is not a clean checkpoint: save when the step has ended (on_step_end)
                self._console(f"step {step}: stopping ({names}) when this step ends; its updates from now on are skipped")
            else:
                self._save_for_stop(trainer, step)
        return worst, restore

    def _save_for_stop(self, trainer, step: int) -> None:
        self._save_pending = False
        path = trainer.save_checkpoint()
        self._console(f"step {step}: stopped; checkpoint saved to {path}")

    def _rollback(self, trainer, step: int) -> Restore | None:
        """The Restore verdict for the last good state (None when there is nothing to restore)."""
        snap, src = self.snapshot, f"in-memory snapshot of step {self.snapshot_step}"
        if snap is None:
            snap, src = self._disk_snapshot(trainer)
        if snap is None:
            self._console(f"step {step}: rollback requested but no snapshot or checkpoint exists: stopping instead")
            return None
        self.rollbacks += 1
        for d in self.detectors:
            d.active = False
        self._seen_step.clear()  # the restored run replays step numbers: let the detectors see them again
        self._step_rolled_back = True
        self._console(f"step {step}: rolling back to the {src}; learning rate x{self.cfg.rollback_lr_factor:g} "
                      f"(compounding; rollback {self.rollbacks}/{self.cfg.max_rollbacks}); the retried step samples "
                      f"with a fresh seed (retry {int(getattr(trainer, 'rollbacks', 0)) + 1})")
        return Restore(snap, self.cfg.rollback_lr_factor, src)

    def _disk_snapshot(self, trainer) -> tuple[dict | None, str]:
        """The newest checkpoint on disk as a restorable state, via the trainer (None when there is none)."""
        load = getattr(trainer, "load_last_checkpoint", None)
        if load is None:
            return None, ""
        mine = self.state_dict()  # loading a checkpoint also loads hook states: keep this guard's own
        got = load()
        self.load_state_dict(mine)
        if got is None:
            return None, ""
        state, path = got
        return state, f"checkpoint {path}"

    def emit(self, trainer, step: int, detector: str, value: float, threshold: float, action: str, message: str) -> dict:
        """Record one event: console line, alerts.jsonl line, webhook post, trainer.events += 1."""
        ev = {"step": int(step), "detector": detector, "value": _json_num(value), "threshold": _json_num(threshold),
              "action": action, "time": self.clock(), "message": message}
        self._console(f"step {step}: {detector}: {message} -> {action}")
        if self._main:  # several ranks decide alike on global statistics; rank 0 alone reports
            run_dir = Path(trainer.run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / ALERTS, "a") as f:
                f.write(json.dumps(ev) + "\n")
            if self.webhook is not None:
                self.webhook.send(ev)
        trainer.events += 1
        self.n_events += 1
        return ev

    def _console(self, line: str) -> None:
        if not self._main:
            return
        try:
            from tqdm import tqdm
            tqdm.write(f"[gmpo guard] {line}", file=sys.stderr)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            print(f"[gmpo guard] {line}", file=sys.stderr, flush=True)

    # -- resume ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Windows, counters and the last snapshot step (the snapshot itself is re-taken on resume)."""
        return {"detectors": {d.name: d.state_dict() for d in self.detectors}, "snapshot_step": self.snapshot_step,
                "healthy_steps": self.healthy_steps, "rollbacks": self.rollbacks, "n_events": self.n_events,
                "seen_step": dict(self._seen_step), "step_bad": self._step_bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        for d in self.detectors:
            if d.name in state.get("detectors", {}):
                d.load_state_dict(state["detectors"][d.name])
        self.snapshot_step = int(state.get("snapshot_step", -1))
        self.healthy_steps = int(state.get("healthy_steps", 0))
        self.rollbacks = int(state.get("rollbacks", 0))
        self.n_events = int(state.get("n_events", 0))
        self._seen_step = {k: int(v) for k, v in state.get("seen_step", {}).items()}
        self._step_bad = bool(state.get("step_bad", False))


def _json_num(x: float) -> float | str:
    """A float JSON can carry (NaN/Inf become the strings 'nan'/'inf'/'-inf')."""
    x = float(x)
    return x if math.isfinite(x) else str(x)
