"""The guard's detectors: each watches one stability signal and says when it is unhealthy.

``check(values) -> None`` (healthy) or ``(value, threshold, message)``; each keeps its own window and
state for resume. :func:`robust_z` is the robust z-score the windowed detectors use.
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any

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


class Detector:
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


class NonFinite(Detector):
    name, pre_update, keys = "nonfinite", True, ("loss", "grad_norm", "nonfinite")

    def check(self, v):
        bad = [k for k in ("loss", "grad_norm") if k in v and not _finite(v[k])]
        if float(v.get("nonfinite", 0.0)) > 0 or bad:
            what = ", ".join(f"{k}={float(v[k])}" for k in bad) or "non-finite gradients"
            return float("nan"), 0.0, f"NaN/Inf in the update ({what})"
        return None


class GradSpike(Detector):
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


class RatioExplosion(Detector):
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


class EntropyCollapse(Detector):
    name, keys = "entropy_collapse", ("policy/entropy",)

    def __init__(self, action, floor: float):
        super().__init__(action)
        self.floor = floor

    def check(self, v):
        e = float(v["policy/entropy"])
        if _finite(e) and e < self.floor:
            return e, self.floor, f"policy entropy {e:.4g} below the floor {self.floor:g}"
        return None


class RewardCollapse(Detector):
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


class LengthBlowup(Detector):
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


class NoSignal(Detector):
    name, keys = "no_signal", ("reward/frac_zero_std",)

    def check(self, v):
        f = float(v["reward/frac_zero_std"])
        if f >= 1.0:
            return f, 1.0, "every group has equal rewards: zero advantages, no learning signal this step"
        return None
