"""Response quality: scorers, rolling per-arm windows, the per-response fallback rule and the circuit breaker.

Scorers give each completion a value in [0, 1]:

- built-in checks that need no reference: ``nonempty`` (0 for an empty or whitespace-only answer),
  ``not_truncated`` (0 when the answer hit max_tokens), ``repetition`` (the fraction of distinct token
  4-grams: ~1 for ordinary text, near 0 for a loop), ``boxed`` (1 when the answer has a closed, non-empty
  ``\\boxed{...}``: our ``format`` reward);
- any other name is a reward function of ours or a user's (``gmpo.rewards.get_reward``: TRL signature
  ``f(prompts, completions, **columns) -> list[float]``), called without a reference;
- reference rewards (``--reward NAME``): run only when the request carries ``metadata.reference``, passed
  as the ``answer`` column (``math_answer``, ``gsm8k_answer``, ``numeric_answer``, ...).

A response's quality is the mean of its scores (averaged over its ``n`` choices); values outside [0, 1]
are clipped. The :class:`QualityMonitor` keeps the last ``breaker_window`` qualities of every experiment
arm; when an arm other than the control has at least ``breaker_min_requests`` of them and their mean falls
below ``breaker_threshold``, its breaker opens: the router sends its users to the control, and an alert
goes to the same sinks as the training guard (console line, a JSON line in alerts.jsonl with the guard's
keys, the guard's rate-limited :class:`gmpo.guard.Webhook`) and an event to the request log. After
``breaker_cooldown_s`` the breaker closes again with an empty window (half-open: a still-bad arm trips
again after ``breaker_min_requests`` requests).
"""
from __future__ import annotations

import collections
import json
import math
import sys
import threading
import time
from pathlib import Path

BUILTIN_SCORERS = ("nonempty", "not_truncated", "repetition", "boxed")


def repetition_score(ids: list[int], n: int = 4) -> float:
    """Distinct n-grams / all n-grams of a token sequence (1.0 when it has fewer than 2n tokens)."""
    if len(ids) < 2 * n:
        return 1.0
    grams = [tuple(ids[i: i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams)


class Scorers:
    """The configured scorers; :meth:`score` gives per-choice score dicts."""

    def __init__(self, scorers: list[str], rewards: list[str]):
        from gmpo.rewards import get_reward

        self.names = list(scorers)
        self._free = {}
        for name in self.names:
            if name == "boxed":
                self._free[name] = get_reward("format")
            elif name not in BUILTIN_SCORERS:
                self._free[name] = get_reward(name)  # raises a clear error for an unknown name
        self._ref = {name: get_reward(name) for name in rewards}

    def score(self, prompt: str, texts: list[str], ids: list[list[int]], finish: list[str],
              reference: str | None) -> list[dict[str, float]]:
        """One ``{scorer: value in [0, 1]}`` per choice."""
        out: list[dict[str, float]] = [{} for _ in texts]
        prompts = [prompt] * len(texts)
        for name in self.names:
            if name == "nonempty":
                vals = [float(bool(t.strip())) for t in texts]
            elif name == "not_truncated":
                vals = [float(f != "length") for f in finish]
            elif name == "repetition":
                vals = [repetition_score(x) for x in ids]
            else:
                vals = self._free[name](prompts, texts)
            for d, v in zip(out, vals):
                d[name] = _clip(v)
        if reference is not None:
            for name, fn in self._ref.items():
                for d, v in zip(out, fn(prompts, texts, answer=[reference] * len(texts))):
                    d[name] = _clip(v)
        return out


def _clip(v) -> float:
    v = float(v) if v is not None else 0.0
    return 0.0 if not math.isfinite(v) else min(1.0, max(0.0, v))


def combine(scores: list[dict[str, float]]) -> tuple[float | None, dict[str, float]]:
    """(quality = mean over choices of the mean score, per-scorer mean over choices); (None, {}) without scores."""
    if not scores or not scores[0]:
        return None, {}
    per = {k: sum(d[k] for d in scores) / len(scores) for k in scores[0]}
    quality = sum(sum(d.values()) / len(d) for d in scores) / len(scores)
    return quality, per


class AlertSinks:
    """The training guard's sinks: console, alerts.jsonl (the guard's keys), the guard's Webhook."""

    def __init__(self, alerts_path: str | Path, webhook_url: str = "", webhook_min_interval: float = 30.0):
        self.path = Path(alerts_path)
        self.webhook = None
        if webhook_url:
            from gmpo.guard import Webhook

            self.webhook = Webhook(webhook_url, min_interval=webhook_min_interval, source="gmpo.serve")
        self._lock = threading.Lock()

    def emit(self, step: int, detector: str, value: float, threshold: float, action: str, message: str,
             **extra) -> dict:
        """Write one event to every sink and return it."""
        ev = {"step": int(step), "detector": detector, "value": value, "threshold": threshold, "action": action,
              "time": time.time(), "message": message, **extra}
        print(f"[gmpo serve] {detector}: {message} -> {action}", file=sys.stderr, flush=True)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(ev) + "\n")
        if self.webhook is not None:
            threading.Thread(target=self.webhook.send, args=(ev,), daemon=True).start()  # never block a request
        return ev


class QualityMonitor:
    """Rolling per-arm quality and the circuit breaker (see the module docstring)."""

    def __init__(self, cfg, router, sinks: AlertSinks, reqlog=None, clock=time.monotonic):
        self.cfg, self.router, self.sinks, self.reqlog, self.clock = cfg, router, sinks, reqlog, clock
        self.windows: dict[str, collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=cfg.breaker_window))
        self.opened: dict[str, float] = {}  # arm -> clock time its breaker opened
        self.observed = 0
        self._lock = threading.Lock()

    def needs_fallback(self, quality: float | None) -> bool:
        """Whether a response of this quality is replaced by the fallback model's."""
        return quality is not None and self.cfg.fallback_threshold > 0 and quality < self.cfg.fallback_threshold

    def tick(self) -> None:
        """Close breakers whose cooldown has passed (half-open: an empty window, traffic back)."""
        exp = self.router.experiment
        with self._lock:
            due = [a for a, t in self.opened.items() if self.clock() - t >= self.cfg.breaker_cooldown_s]
            for arm in due:
                del self.opened[arm]
                self.router.open_arms.discard(arm)
                self.windows[arm].clear()
        for arm in due:
            msg = f"arm {arm}: cooldown of {self.cfg.breaker_cooldown_s:g}s passed, traffic back on the arm"
            print(f"[gmpo serve] breaker: {msg}", file=sys.stderr, flush=True)
            if self.reqlog is not None:
                self.reqlog.event("breaker_close", msg, experiment=exp.id if exp else None, arm=arm)

    def observe(self, arm: str | None, quality: float | None) -> bool:
        """Add one response's quality to its arm's window; True when this observation opened the breaker."""
        exp = self.router.experiment
        if arm is None or quality is None or exp is None:
            return False
        with self._lock:
            self.observed += 1
            win = self.windows[arm]
            win.append(quality)
            mean = sum(win) / len(win)
            trip = (self.cfg.breaker_threshold > 0 and arm != exp.control and arm not in self.opened
                    and len(win) >= self.cfg.breaker_min_requests and mean < self.cfg.breaker_threshold)
            if trip:
                self.opened[arm] = self.clock()
                self.router.open_arms.add(arm)
            step = self.observed
        if trip:
            msg = (f"experiment {exp.id}, arm {arm}: rolling quality {mean:.3f} over the last {len(win)} responses "
                   f"< {self.cfg.breaker_threshold:g}; its traffic goes to the control arm {exp.control} for "
                   f"{self.cfg.breaker_cooldown_s:g}s")
            self.sinks.emit(step, "quality_breaker", round(mean, 6), self.cfg.breaker_threshold, "reroute", msg,
                            experiment=exp.id, arm=arm)
            if self.reqlog is not None:
                self.reqlog.event("breaker_open", msg, experiment=exp.id, arm=arm)
                self.reqlog.event("alert", msg, experiment=exp.id, arm=arm)
        return trip
