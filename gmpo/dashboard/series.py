"""Pure data helpers of the dashboard: the chart table, min/max downsampling, the log-ratio heat-map,
Wilson intervals and the clip range of a run. numpy only (no torch, no web stack), so each is testable alone.

Downsampling keeps the envelope: a chart asks for at most ``points`` x values; a longer series is cut into
``points // 2`` buckets of equal step width and each bucket becomes two points, its minimum at the bucket's
first step and its maximum at its last step (per series, NaN-aware). A spike of one step therefore stays
visible at any zoom, and the payload of a 30,000-step run is the same size as a 500-step run's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gmpo.telemetry.bins import LOG_RATIO_EDGES, LOG_RATIO_KEY

# ratio/log_hist: [l <= -1, 40 equal bins (e_i, e_i+1] over (-1, 1], l > 1] (gmpo.telemetry.bins, torch-free)
HIST_LO, HIST_HI, HIST_BINS = LOG_RATIO_EDGES[0], LOG_RATIO_EDGES[-1], len(LOG_RATIO_EDGES) - 1
HIST_LEN = HIST_BINS + 2
HIST_KEY = LOG_RATIO_KEY


@dataclass(frozen=True)
class Chart:
    """One training chart: its id, title, the metrics it plots, what it means (tooltip) and its y scale."""

    id: str
    title: str
    metrics: tuple[str, ...]
    help: str
    log_y: bool = False
    extra: dict = field(default_factory=dict)


CHARTS: tuple[Chart, ...] = (
    Chart("reward", "Reward", ("reward/mean",), "Mean total reward of the step's completions."),
    Chart("accuracy", "Held-out accuracy", ("eval/accuracy",),
          "Accuracy on the held-out set at each eval step; the band is the Wilson 95% interval over the "
          "data.eval_size problems of config.yaml."),
    Chart("seq_ratio", "Sequence ratio min / max", ("ratio/seq_min", "ratio/seq_max"),
          "Per step, the smallest and largest sequence-level ratio the objective uses (GMPO: the geometric "
          "mean of the token ratios, exp of the mean clipped log-ratio)."),
    Chart("token_ratio", "Token ratio range", ("ratio/token_min", "ratio/token_p01", "ratio/token_p99",
                                               "ratio/token_max"),
          "Per-token importance ratios rho = pi/pi_old over all completion tokens: min, 1st and 99th "
          "percentile, max (log scale).", log_y=True),
    Chart("clip", "Clip fractions", ("clip/frac_low", "clip/frac_high"),
          "Share of tokens whose ratio hit the lower / upper clip bound."),
    Chart("entropy", "Policy entropy", ("policy/entropy",), "Mean per-token entropy of the policy (nats)."),
    Chart("kl", "KL", ("policy/kl",), "Estimated KL divergence to the reference / old policy."),
    Chart("grad_norm", "Gradient norm", ("grad/norm",), "Global gradient norm before clipping."),
    Chart("loss", "Loss", ("loss/value",), "The objective's value (sign: minimised)."),
    Chart("stab_loss_var", "Windowed loss variance", ("stability/loss_var",),
          "Variance of the loss over the trailing window (gmpo.telemetry.stability)."),
    Chart("stab_grad_std", "Windowed grad-norm std", ("stability/grad_norm_std",),
          "Standard deviation of the gradient norm over the trailing window."),
    Chart("stab_ratio_range", "Windowed ratio range", ("stability/ratio_range",),
          "max token ratio / min token ratio over the trailing window (log scale).", log_y=True),
    Chart("step_time", "Step time split (s)", ("perf/rollout_s", "perf/reward_s", "perf/train_s"),
          "Seconds per step spent in rollout (generation), reward scoring and the update."),
    Chart("throughput", "Training throughput", ("perf/tokens_per_s",), "Tokens processed per second of step time."),
    Chart("length", "Completion length", ("rollout/len_mean", "rollout/len_max"),
          "Mean and longest completion length (tokens)."),
)
CHART_BY_ID = {c.id: c for c in CHARTS}


def chart(chart_id: str) -> Chart:
    """The chart named `chart_id` (KeyError with the valid ids)."""
    try:
        return CHART_BY_ID[chart_id]
    except KeyError:
        raise KeyError(f"unknown chart {chart_id!r}; valid: {', '.join(CHART_BY_ID)}") from None


def wilson(p: np.ndarray, n: int, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion `p` over `n` trials: (low, high), elementwise.

    centre = (p + z^2/2n) / (1 + z^2/n), half-width = z/(1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2)
    (Wilson 1927; Agresti & Coull 1998, eq. 2).
    """
    p = np.asarray(p, dtype=float)
    if n <= 0:
        raise ValueError(f"wilson: n must be > 0, got {n}")
    d = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z / d * np.sqrt(np.clip(p * (1 - p), 0, None) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def minmax_downsample(x: np.ndarray, ys: list[np.ndarray], points: int) -> tuple[np.ndarray, list[np.ndarray], float]:
    """Shrink sorted `x` (n,) and aligned `ys` [(n,)] to at most `points` rows keeping each bucket's min and max.

    Returns (x', ys', bucket_width_in_steps); the width is 0.0 when nothing was dropped (n <= points).
    NaN marks a missing value and is ignored inside a bucket (an all-NaN bucket stays NaN).
    """
    n = len(x)
    if points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    if n <= points:
        return x, ys, 0.0
    nb = points // 2
    lo, hi = float(x[0]), float(x[-1])
    width = (hi - lo + 1) / nb
    idx = np.minimum(((x - lo) / width).astype(np.int64), nb - 1)  # (n,) bucket of each row
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])  # (k,) first row of each non-empty bucket
    ends = np.r_[starts[1:], n] - 1  # (k,) last row
    single = starts == ends
    # each bucket: row at its first step (the min) then at its last step (the max); singletons once
    keep_second = ~single
    xo = np.empty(len(starts) + int(keep_second.sum()), dtype=float)
    pos_first = np.arange(len(starts)) + np.r_[0, np.cumsum(keep_second)[:-1]]
    xo[pos_first] = x[starts]
    xo[pos_first[keep_second] + 1] = x[ends[keep_second]]
    out = []
    with np.errstate(all="ignore"):
        for y in ys:
            mn = np.fmin.reduceat(y, starts)
            mx = np.fmax.reduceat(y, starts)
            yo = np.empty(len(xo), dtype=float)
            yo[pos_first] = np.where(single, y[starts], mn)
            yo[pos_first[keep_second] + 1] = mx[keep_second]
            out.append(yo)
    return xo, out, width


def align(step_sets: list[np.ndarray], values: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Put series with their own sorted steps on the union of steps (NaN where a series has no row)."""
    if not step_sets:
        return np.empty(0, dtype=np.int64), []
    first = step_sets[0]
    if all(len(s) == len(first) and np.array_equal(s, first) for s in step_sets[1:]):
        return first, list(values)  # the common case: one run, metrics logged on the same steps
    c = np.sort(np.concatenate(step_sets), kind="stable")
    xu = c[np.r_[True, c[1:] != c[:-1]]] if len(c) else c  # sorted union (cheaper than np.unique's hashing)
    out = []
    for s, v in zip(step_sets, values):
        if len(s) == len(xu) and (len(s) == 0 or (s[0] == xu[0] and s[-1] == xu[-1])):
            out.append(v)  # same steps (the common case: one run, or runs logged in lockstep)
            continue
        y = np.full(len(xu), np.nan)
        y[np.searchsorted(xu, s)] = v
        out.append(y)
    return xu, out


def heatmap(steps: np.ndarray, hist: np.ndarray, cols: int) -> dict:
    """The log-ratio heat-map of one run: per column (a step or a bucket of steps) the share of tokens per bin.

    steps (m,) sorted; hist (m, 42) counts. With m > cols, steps are grouped into `cols` buckets of equal
    step width and their counts summed. Returns x0/x1 (first/last step of each column), z (columns x 42
    fractions, rounded to 1e-4) and tokens (counts per column).
    """
    m = len(steps)
    if m == 0:
        return {"x0": [], "x1": [], "z": [], "tokens": [], "bucket": 0.0}
    if hist.shape != (m, HIST_LEN):
        raise ValueError(f"heatmap: hist must be ({m}, {HIST_LEN}), got {hist.shape}")
    if m <= cols:
        starts, width = np.arange(m), 0.0
    else:
        lo, hi = float(steps[0]), float(steps[-1])
        width = (hi - lo + 1) / cols
        idx = np.minimum(((steps - lo) / width).astype(np.int64), cols - 1)
        starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    counts = np.add.reduceat(hist.astype(np.float64), starts, axis=0)  # (k, 42)
    tokens = counts.sum(axis=1)
    with np.errstate(all="ignore"):
        z = np.where(tokens[:, None] > 0, counts / tokens[:, None], 0.0)
    ends = np.r_[starts[1:], m] - 1
    return {"x0": steps[starts].tolist(), "x1": steps[ends].tolist(), "z": np.round(z, 4).tolist(),
            "tokens": tokens.tolist(), "bucket": width}


def clip_range(loss: str | None, eps_low: float | None, eps_high: float | None) -> dict:
    """The clip range of a run in log-ratio space, for the heat-map's marks.

    gmpo clips each token's log-ratio to [-eps_low, eps_high] (GMPO paper Eq. 3-4, one-sided by the sign of
    the advantage); grpo (and dr_grpo, dapo) clip the ratio to [1 - eps_low, 1 + eps_high], i.e.
    log(1 - eps_low) .. log(1 + eps_high); gspo clips the sequence ratio (not each token) with the same bounds.
    None where the algorithm is unknown.
    """
    from gmpo.algo.registry import PRESETS, preset  # torch-free name tables

    if not loss or loss not in PRESETS:
        return {"lo": None, "hi": None, "space": None, "note": f"unknown algorithm {loss!r}: clip range not marked"}
    p = preset(loss)
    lo = p["eps_low"] if eps_low is None else float(eps_low)
    hi = p["eps_high"] if eps_high is None else float(eps_high)
    if p["loss"] == "gmpo":
        return {"lo": -lo, "hi": hi, "space": "log", "note": f"{loss}: |log-ratio| clip [-{lo:g}, {hi:g}]"}
    note = f"{loss}: ratio clip [1-{lo:g}, 1+{hi:g}]"
    if p["loss"] == "gspo":
        note += " on the sequence ratio"
    return {"lo": math.log(max(1.0 - lo, 1e-12)), "hi": math.log1p(hi), "space": "ratio", "note": note}


def to_json_list(a: np.ndarray, digits: int = 6) -> list:
    """A float array as a JSON-ready list: non-finite values become None, the rest `digits` significant digits."""
    a = np.asarray(a, dtype=float)
    fin = np.isfinite(a)
    out = [None] * len(a)
    if fin.any():
        vals = a[fin]
        mag = np.floor(np.log10(np.abs(np.where(vals == 0, 1.0, vals))))
        scale = 10.0 ** (digits - 1 - mag)
        rounded = (np.round(vals * scale) / scale).tolist()
        for i, v in zip(np.flatnonzero(fin).tolist(), rounded):
            out[i] = v
    return out
