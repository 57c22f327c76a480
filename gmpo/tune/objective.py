"""What a trial scored: held-out accuracy, a scale-free stability, and the verdict on failed runs.

**Stability** (a number in (0, 1], 1 = perfectly steady) is defined on the step telemetry as

    S = 1 / (1 + CV),   CV = std_t(g_t) / mean_t(g_t)

over the per-step gradient norms g_t (``grad/norm``, before clipping; population std) of every step the
trial ran. Why not the motivating material's 1 / (1 + Var(loss)): a variance carries the square of the
loss's scale, which changes with the reduction (per sequence or per token), the reward scale under
unnormalised advantages, and the length normaliser, so it ranks trials by their units; and GMPO's loss is
-mean(A_i R_i) with group-normalised advantages that sum to zero, so on-policy it is 0 whatever happens to
the weights. The gradient norm is positive and its coefficient of variation is invariant to any rescaling
of the loss (g_t -> c g_t leaves CV unchanged), so it compares trials across learning rates, reductions
and reward scales; it is ``stability/grad_norm_std`` (DESIGN.md section 4) divided by the mean over the
whole run. Gradient-norm spikes (the guard's grad_spike detector) and collapse to zero (no learning signal)
both raise it. ``1/(1 + x)`` maps [0, inf) onto (0, 1], the range of accuracy, so the weights of
0.7 x accuracy + 0.3 x stability mean what they say. A run with mean gradient norm 0 has CV 0 by
convention (nothing moved; its accuracy says the rest).

**Failures are never scores**: a trial whose ``loss/value``, ``grad/norm`` or ``eval/accuracy`` was ever
NaN or infinite (even if the guard skipped that update), or that the guard stopped, or that raised or
exited non-zero, is recorded as FAIL with the reason; it gets no objective value, so no sampler can
mistake it for a good region.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from gmpo.config import ConfigError
from gmpo.runs.files import METRICS, read_alerts, read_metrics

NONFINITE_KEYS = ("loss/value", "grad/norm", "eval/accuracy")
DEFAULT_WEIGHTS = (0.7, 0.3)


def is_finite(x) -> bool:
    """True for a finite number; False for NaN/Inf (also as the strings 'nan', 'inf', '-inf')."""
    if isinstance(x, str):
        try:
            x = float(x)
        except ValueError:
            return False
    return isinstance(x, (int, float)) and math.isfinite(float(x))


def stability(grad_norms: list[float]) -> tuple[float, float]:
    """(S, CV): S = 1 / (1 + CV) with CV = population std / mean of the gradient norms (see the module doc).

    >>> stability([1.0, 3.0])   # mean 2, std 1, CV 0.5
    (0.6666666666666666, 0.5)
    """
    g = [float(x) for x in grad_norms if is_finite(x)]
    if not g:
        raise ValueError("stability: no finite gradient norms")
    mean = sum(g) / len(g)
    if mean <= 0.0:
        return 1.0, 0.0
    std = math.sqrt(sum((x - mean) ** 2 for x in g) / len(g))
    cv = std / mean
    return 1.0 / (1.0 + cv), cv


def parse_weights(spec: str | tuple | list | None) -> tuple[float, float]:
    """'0.7,0.3' -> (0.7, 0.3): the weights of accuracy and stability (non-negative, not both 0)."""
    if spec is None:
        return DEFAULT_WEIGHTS
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        w = tuple(float(x) for x in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"--weights: expected two numbers 'ACCURACY,STABILITY', got {spec!r}") from None
    if len(w) != 2 or any(not math.isfinite(x) or x < 0 for x in w) or sum(w) == 0:
        raise ConfigError(f"--weights: expected two non-negative numbers, not both 0, e.g. 0.7,0.3; got {spec!r}")
    return w  # type: ignore[return-value]


def combine(accuracy: float, stab: float, weights: tuple[float, float] = DEFAULT_WEIGHTS) -> float:
    """The single objective: w_acc x accuracy + w_stab x stability."""
    return weights[0] * accuracy + weights[1] * stab


@dataclass
class Outcome:
    """The verdict on one finished (or stopped) trial run; ``state`` is complete | pruned | fail."""

    state: str
    reason: str = ""
    accuracy: float | None = None
    stability: float | None = None
    grad_cv: float | None = None
    accuracy_start: float | None = None
    steps: int = 0
    pruned_step: int | None = None
    evals: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out accuracy) after step 0
    guard_events: int = 0

    def attrs(self) -> dict:
        """The fields stored as the Optuna trial's user attributes (JSON-friendly)."""
        return {"state": self.state, "fail_reason": self.reason, "accuracy": self.accuracy,
                "stability": self.stability, "grad_cv": self.grad_cv, "accuracy_start": self.accuracy_start,
                "steps": self.steps, "pruned_step": self.pruned_step, "guard_events": self.guard_events}


def nonfinite_reason(records: list[dict]) -> str:
    """'' or a message naming the first step and metric that was NaN/Inf."""
    for rec in records:
        for key in NONFINITE_KEYS:
            if key in rec and not is_finite(rec[key]):
                return f"{key} was {rec[key]} at step {rec.get('step')} (a NaN/Inf run is failed, never scored)"
    return ""


def guard_stop_reason(run_dir: str | Path, stop_reason: str | None = None) -> str:
    """'' or why the guard (or another hook) stopped the run: the summary's stop_reason or a 'stop' event."""
    stops = [a for a in read_alerts(run_dir) if a.get("action") == "stop"]
    if stops:
        a = stops[0]
        return f"guard stopped the run at step {a.get('step')}: {a.get('detector')}: {a.get('message')}"
    return f"stopped early: {stop_reason}" if stop_reason else ""


def analyse(run_dir: str | Path, stop_reason: str | None = None, *, pruned_step: int | None = None,
            error: str = "") -> Outcome:
    """Read a trial's run directory (only through :mod:`gmpo.runs.files`) and decide its outcome.

    ``error``: why the process/trainer failed ('' = it returned normally); ``pruned_step``: the step the
    pruner stopped it at. NaN/Inf and guard stops take precedence over pruning (they are failures).
    """
    records = read_metrics(Path(run_dir) / METRICS)
    start = next((r["eval/accuracy"] for r in records if r.get("step") == 0 and "eval/accuracy" in r), None)
    evals = [(int(r["step"]), r["eval/accuracy"]) for r in records if r.get("step", 0) > 0 and "eval/accuracy" in r]
    steps = max((int(r["step"]) for r in records if "loss/value" in r), default=0)
    events = len(read_alerts(run_dir))
    out = Outcome("fail", accuracy_start=start if is_finite(start) else None, steps=steps,
                  evals=[(s, float(a)) for s, a in evals], guard_events=events, pruned_step=pruned_step)
    bad = nonfinite_reason(records)
    stopped = guard_stop_reason(run_dir, stop_reason)
    if bad or stopped or error:
        out.reason = stopped or bad or error
        return out
    if pruned_step is not None:
        out.state, out.reason = "pruned", f"pruned at step {pruned_step} (held-out accuracy below the pruner's bar)"
        return out
    if not evals:
        out.reason = "no held-out accuracy after training (eval.at_end produced no eval/accuracy)"
        return out
    grads = [r["grad/norm"] for r in records if "grad/norm" in r]
    if not grads:
        out.reason = "no gradient norms were logged: stability is undefined"
        return out
    out.state = "complete"
    out.accuracy = float(evals[-1][1])
    out.stability, out.grad_cv = stability(grads)
    return out
