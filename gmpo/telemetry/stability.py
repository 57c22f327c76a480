"""Windowed stability metrics: the numbers the GMPO-vs-GRPO comparison is about (DESIGN.md section 4).

:class:`StabilityTracker` keeps the last ``window`` values of a few per-step metrics and turns them into

- ``stability/loss_var``        population variance of ``loss/value`` over the window
- ``stability/grad_norm_std``   population standard deviation of ``grad/norm`` over the window
- ``stability/ratio_range``     max(``ratio/token_max``) / min(``ratio/token_min``) over the window
                                (1.0 = every token ratio was exactly 1; the paper's Figure 1 spread)
- ``stability/entropy_slope``   least-squares slope of ``policy/entropy`` per step over the window
- ``stability/kl_slope``        least-squares slope of ``policy/kl`` per step over the window
- ``stability/reward_slope``    least-squares slope of ``reward/mean`` per step over the window

Population statistics (ddof = 0) and a zero slope for a single point keep every value defined from the
first step (a window of one) without NaN. Non-finite inputs (a NaN loss the guard is about to act on) are
not stored, so one bad step does not poison the window for ``window`` steps; a key whose window holds no
finite value yet is left out of the result. Pure Python on floats: no host sync, no torch.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any

# output key -> (input metric key(s), statistic)
_TRENDS = {
    "stability/entropy_slope": "policy/entropy",
    "stability/kl_slope": "policy/kl",
    "stability/reward_slope": "reward/mean",
}
_INPUTS = ("loss/value", "grad/norm", "ratio/token_max", "ratio/token_min", *_TRENDS.values())


def variance(xs: list[float]) -> float:
    """Population variance (ddof = 0) of a non-empty list; 0.0 for a single value."""
    n = len(xs)
    mean = sum(xs) / n
    return sum((x - mean) ** 2 for x in xs) / n


def slope(ts: list[float], ys: list[float]) -> float:
    """Ordinary least-squares slope of ys against ts; 0.0 when the ts do not vary (one point)."""
    n = len(ts)
    mt, my = sum(ts) / n, sum(ys) / n
    sxx = sum((t - mt) ** 2 for t in ts)
    if sxx == 0.0:
        return 0.0
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / sxx


class StabilityTracker:
    """Sliding-window stability statistics over the last ``window`` steps.

    Call :meth:`update` once per optimizer/rollout step with that step's metrics (the names of DESIGN.md
    section 4); it returns the ``stability/*`` keys to log beside them. ``state_dict``/``load_state_dict``
    round-trip the windows exactly, so a resumed run logs the same values as an uninterrupted one.
    """

    def __init__(self, window: int = 20):
        if int(window) < 1:
            raise ValueError(f"StabilityTracker window must be >= 1, got {window}")
        self.window = int(window)
        self.t = 0  # number of update() calls so far: the x-axis of the trend slopes
        self._buf: dict[str, deque[tuple[int, float]]] = {k: deque(maxlen=self.window) for k in _INPUTS}

    def update(self, metrics: dict[str, Any]) -> dict[str, float]:
        """Add one step's metrics and return the windowed ``stability/*`` values (floats, never NaN)."""
        t = self.t
        self.t += 1
        for key in _INPUTS:
            if key not in metrics:
                continue
            v = float(metrics[key])
            if math.isfinite(v):
                self._buf[key].append((t, v))
        return self.compute()

    def values(self, key: str) -> list[float]:
        """The finite values of input metric ``key`` currently in the window, oldest first."""
        return [v for _, v in self._buf[key]]

    def compute(self) -> dict[str, float]:
        """The ``stability/*`` values of the current window (no new data added)."""
        out: dict[str, float] = {}
        loss = self.values("loss/value")
        if loss:
            out["stability/loss_var"] = variance(loss)
        gn = self.values("grad/norm")
        if gn:
            out["stability/grad_norm_std"] = math.sqrt(variance(gn))
        hi, lo = self.values("ratio/token_max"), self.values("ratio/token_min")
        if hi and lo:
            # token ratios are exp(log-ratio) > 0; a floor keeps an underflowed 0.0 from dividing by zero
            out["stability/ratio_range"] = max(hi) / max(min(lo), 1e-30)
        for name, key in _TRENDS.items():
            pts = self._buf[key]
            if pts:
                out[name] = slope([float(t) for t, _ in pts], [v for _, v in pts])
        return out

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state (JSON/torch.save friendly) for exact resume."""
        return {"window": self.window, "t": self.t,
                "buffers": {k: [[t, v] for t, v in buf] for k, buf in self._buf.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the window size is taken from the state)."""
        self.window = int(state["window"])
        self.t = int(state["t"])
        self._buf = {k: deque(maxlen=self.window) for k in _INPUTS}
        for k, pts in state.get("buffers", {}).items():
            if k in self._buf:
                self._buf[k].extend((int(t), float(v)) for t, v in pts)
