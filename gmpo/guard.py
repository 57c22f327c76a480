"""The training guard: stability detectors that act (warn, skip the update, roll back, stop).

:class:`Guard` is a trainer hook (``gmpo/hooks.py`` protocol, INTERFACES.md):

- ``before_optimizer_step(trainer, step, stats)`` runs the detectors that see an update before it is applied
  (NaN/Inf, gradient-norm spike, token-ratio explosion) and returns ``"skip"`` when the update must not be
  applied;
- ``on_step_end(trainer, step, metrics)`` runs the per-step detectors (entropy collapse, reward collapse,
  completion-length blow-up, no learning signal) and keeps the last good in-memory snapshot.

Each detector has a threshold and an action from :data:`ACTIONS`. Every event is a console line, a JSON line
in ``<run_dir>/alerts.jsonl`` (step, detector, value, threshold, action, time, message), an optional webhook
POST, and ``trainer.events += 1`` (logged as ``guard/events``). A ``warn`` is edge-triggered: a condition that
persists is reported once and re-armed when it clears, so a slow collapse is one line, not one per step.
"""
from __future__ import annotations

import json
import logging
import math
import statistics
import sys
import time
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

log = logging.getLogger("gmpo.guard")

ACTIONS = ("off", "warn", "skip", "rollback", "stop")
_SEVERITY = {"warn": 1, "skip": 2, "rollback": 3, "stop": 4}
MAD_SCALE = 1.4826  # makes the MAD a consistent estimator of the std for normal data
MAD_FLOOR = 0.05  # the robust scale is at least 5% of |median| (a constant history has MAD = 0)


def robust_z(x: float, history: list[float]) -> float:
    """Robust z-score of x against history: (x - median) / (1.4826 * MAD), scale floored at 5% of |median|."""
    med = statistics.median(history)
    mad = statistics.median([abs(h - med) for h in history])
    scale = max(MAD_SCALE * mad, MAD_FLOOR * abs(med), 1e-12)
    return (x - med) / scale


def _finite(v: Any) -> bool:
    return v is not None and math.isfinite(float(v))


# ----------------------------------------------------------------------------------------------
# detectors: check(values) -> None (healthy) or (value, threshold, message); each updates its own window


class _Detector:
    name = ""
    pre_update = False  # True: evaluated on every before_optimizer_step; False: once per step
    keys: tuple[str, ...] = ()

    def __init__(self, action: str):
        self.action = action
        self.active = False  # condition currently true (edge-triggered warnings)

    def sees(self, values: dict) -> bool:
        return any(k in values for k in self.keys)

    def check(self, values: dict) -> tuple[float, float, str] | None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"active": self.active}

    def load_state_dict(self, s: dict) -> None:
        self.active = bool(s.get("active", False))


class NonFinite(_Detector):
    name, pre_update, keys = "nonfinite", True, ("loss", "grad_norm", "nonfinite")

    def check(self, v):
        bad = [k for k in ("loss", "grad_norm") if k in v and not _finite(v[k])]
        if float(v.get("nonfinite", 0.0)) > 0 or bad:
            what = ", ".join(f"{k}={float(v[k])}" for k in bad) or "non-finite gradients"
            return float("nan"), 0.0, f"NaN/Inf in the update ({what})"
        return None


class GradSpike(_Detector):
    name, pre_update, keys = "grad_spike", True, ("grad_norm",)

    def __init__(self, action, z: float, window: int, min_history: int):
        super().__init__(action)
        self.z, self.min_history = z, min_history
        self.hist: deque[float] = deque(maxlen=window)

    def check(self, v):
        x = v.get("grad_norm")
        if not _finite(x) or float(x) == 0.0:  # 0: no learning signal (all-equal groups), says nothing of scale
            return None
        x, out = float(x), None
        if len(self.hist) >= self.min_history:
            z = robust_z(x, list(self.hist))
            if z > self.z:
                out = (z, self.z, f"gradient norm {x:.4g} is a spike (robust z {z:.1f} > {self.z:g}; "
                                  f"median of last {len(self.hist)}: {statistics.median(self.hist):.4g})")
        self.hist.append(x)  # the median/MAD shrug off a single spike; a lasting shift becomes the new normal
        return out

    def state_dict(self):
        return {**super().state_dict(), "hist": list(self.hist)}

    def load_state_dict(self, s):
        super().load_state_dict(s)
        self.hist.clear()
        self.hist.extend(float(x) for x in s.get("hist", []))


class RatioExplosion(_Detector):
    name, pre_update, keys = "ratio_explosion", True, ("ratio/token_max", "ratio/token_min")

    def __init__(self, action, bound: float):
        super().__init__(action)
        self.bound = bound

    def check(self, v):
        hi, lo = float(v.get("ratio/token_max", 1.0)), float(v.get("ratio/token_min", 1.0))
        worst = max(hi, 1.0 / lo if lo > 0 else float("inf"))
        if worst > self.bound:
            return worst, self.bound, f"token ratio out of [1/{self.bound:g}, {self.bound:g}] (min {lo:.4g}, max {hi:.4g})"
        return None


class EntropyCollapse(_Detector):
    name, keys = "entropy_collapse", ("policy/entropy",)

    def __init__(self, action, floor: float):
        super().__init__(action)
        self.floor = floor

    def check(self, v):
        e = float(v["policy/entropy"])
        if _finite(e) and e < self.floor:
            return e, self.floor, f"policy entropy {e:.4g} below the floor {self.floor:g}"
        return None


class RewardCollapse(_Detector):
    name, keys = "reward_collapse", ("reward/mean",)

    def __init__(self, action, drop: float, window: int, smooth: int, min_history: int):
        super().__init__(action)
        self.drop, self.min_history = drop, min_history
        self.recent: deque[float] = deque(maxlen=max(1, smooth))
        self.smoothed: deque[float] = deque(maxlen=max(1, window))

    def check(self, v):
        r = v["reward/mean"]
        if not _finite(r):
            return None
        self.recent.append(float(r))
        s = sum(self.recent) / len(self.recent)
        self.smoothed.append(s)
        best = max(self.smoothed)
        if len(self.smoothed) >= self.min_history and best - s > self.drop:
            return s, best - self.drop, f"smoothed reward {s:.4g} fell more than {self.drop:g} below its best {best:.4g}"
        return None

    def state_dict(self):
        return {**super().state_dict(), "recent": list(self.recent), "smoothed": list(self.smoothed)}

    def load_state_dict(self, s):
        super().load_state_dict(s)
        self.recent.clear()
        self.recent.extend(s.get("recent", []))
        self.smoothed.clear()
        self.smoothed.extend(s.get("smoothed", []))


class LengthBlowup(_Detector):
    name, keys = "length_blowup", ("rollout/len_mean", "rollout/truncated_frac")

    def __init__(self, action, factor: float, window: int, truncated_max: float, min_history: int):
        super().__init__(action)
        self.factor, self.truncated_max, self.min_history = factor, truncated_max, min_history
        self.hist: deque[float] = deque(maxlen=max(1, window))

    def check(self, v):
        out = None
        tf = v.get("rollout/truncated_frac")
        if _finite(tf) and float(tf) > self.truncated_max:
            out = (float(tf), self.truncated_max, f"{float(tf):.0%} of completions truncated (> {self.truncated_max:g})")
        n = v.get("rollout/len_mean")
        if _finite(n):
            n = float(n)
            if out is None and len(self.hist) >= self.min_history:
                med = statistics.median(self.hist)
                if n > self.factor * med:
                    out = (n, self.factor * med, f"mean completion length {n:.1f} > {self.factor:g} x running median {med:.1f}")
            self.hist.append(n)
        return out

    def state_dict(self):
        return {**super().state_dict(), "hist": list(self.hist)}

    def load_state_dict(self, s):
        super().load_state_dict(s)
        self.hist.clear()
        self.hist.extend(float(x) for x in s.get("hist", []))


class NoSignal(_Detector):
    name, keys = "no_signal", ("reward/frac_zero_std",)

    def check(self, v):
        f = float(v["reward/frac_zero_std"])
        if f >= 1.0:
            return f, 1.0, "every group has equal rewards: zero advantages, no learning signal this step"
        return None


# ----------------------------------------------------------------------------------------------
# webhook


class Webhook:
    """JSON POST of guard events with a timeout, at most one retry, and a minimum interval between posts.

    Events inside the interval are not sent; their number rides along as ``suppressed`` in the next post.
    Failures are logged and swallowed: an alerting endpoint that is down never stops training.
    """

    def __init__(self, url: str, timeout: float = 3.0, min_interval: float = 30.0, clock=time.monotonic):
        self.url, self.timeout, self.min_interval, self.clock = url, timeout, min_interval, clock
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
        body = json.dumps({**event, "suppressed": self.suppressed, "source": "gmpo.guard"}).encode()
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
        self.detectors: list[_Detector] = [
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

    # -- hook protocol --------------------------------------------------------------------------

    def on_train_start(self, trainer) -> None:
        """Take the first in-memory snapshot (the state training starts or resumes from)."""
        if self.keep_snapshots:
            self.snapshot, self.snapshot_step = trainer.snapshot(), int(trainer.step)

    def before_optimizer_step(self, trainer, step: int, stats: dict[str, float]) -> str:
        """Run the pre-update detectors on ``stats``; "skip" when the update must not be applied."""
        if self._stopping:  # stop takes effect after the running step: apply none of its remaining updates
            return "skip"
        fired = self._run(trainer, step, stats, pre=True)
        action = self._act(trainer, step, fired, pre=True)
        return "skip" if action in ("skip", "rollback", "stop") else "ok"

    def on_step_end(self, trainer, step: int, metrics: dict[str, float]) -> None:
        """Run the per-step detectors on ``metrics``; keep a snapshot every ``snapshot_every`` healthy steps."""
        fired = self._run(trainer, step, metrics, pre=False)
        self._act(trainer, step, fired, pre=False)
        if self._save_pending:
            self._save_for_stop(trainer, step)
        healthy = not (self._step_bad or self._step_rolled_back or self._stopping)
        self._step_bad = self._step_rolled_back = False  # the trainer calls on_step_end once per attempted step
        if not healthy:
            return
        self.healthy_steps += 1
        if self.keep_snapshots and self.healthy_steps % self.cfg.snapshot_every == 0:
            self.snapshot, self.snapshot_step = trainer.snapshot(), int(step)

    # -- detection ------------------------------------------------------------------------------

    def _run(self, trainer, step: int, values: dict, pre: bool) -> list[tuple[_Detector, tuple]]:
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

    def _act(self, trainer, step: int, fired: list, pre: bool) -> str:
        """Emit one event per fired detector and carry out the most severe action; return it ('' if none)."""
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
        if worst == "rollback" and not self._rollback(trainer, step):
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
        return worst

    def _save_for_stop(self, trainer, step: int) -> None:
        self._save_pending = False
        path = trainer.save_checkpoint()
        self._console(f"step {step}: stopped; checkpoint saved to {path}")

    def _rollback(self, trainer, step: int) -> bool:
        """Restore the last good state and scale the learning rate; False when there is nothing to restore."""
        snap, src = self.snapshot, f"in-memory snapshot of step {self.snapshot_step}"
        if snap is None:
            snap, src = self._disk_snapshot(trainer)
        if snap is None:
            self._console(f"step {step}: rollback requested but no snapshot or checkpoint exists: stopping instead")
            return False
        trainer.restore(snap)
        trainer.scale_lr(self.cfg.rollback_lr_factor)
        self.rollbacks += 1
        for d in self.detectors:
            d.active = False
        self._seen_step.clear()  # the restored run replays step numbers: let the detectors see them again
        self._step_rolled_back = True
        self._console(f"step {step}: rolled back to the {src}; learning rate x{self.cfg.rollback_lr_factor:g} "
                      f"(rollback {self.rollbacks}/{self.cfg.max_rollbacks})")
        return True

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
        run_dir = Path(trainer.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "alerts.jsonl", "a") as f:
            f.write(json.dumps(ev) + "\n")
        if self.webhook is not None:
            self.webhook.send(ev)
        trainer.events += 1
        self.n_events += 1
        return ev

    @staticmethod
    def _console(line: str) -> None:
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


def read_alerts(run_dir: str | Path) -> list[dict]:
    """The events of ``<run_dir>/alerts.jsonl`` (empty when there were none)."""
    p = Path(run_dir) / "alerts.jsonl"
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
