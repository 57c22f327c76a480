"""Per-step metric collection with ONE host transfer per step.

Metrics are gathered as device tensors (0-d, detached) while the step runs; :meth:`StepMetrics.resolve`
stacks them and copies them to the host in a single transfer, then merges the host floats (timings,
counters). Reductions over micro-batches and optimizer steps (weighted means, running min/max, token
quantiles) happen on the device through :class:`Reducer`, so nothing inside the step waits on the host.
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch

from gmpo.telemetry.bins import LOG_RATIO_EDGES


class Reducer:
    """Device-side running aggregates: weighted means, minima, maxima and concatenated samples."""

    def __init__(self):
        self._sum: dict[str, torch.Tensor] = {}
        self._wsum: dict[str, torch.Tensor | float] = defaultdict(float)
        self._min: dict[str, torch.Tensor] = {}
        self._max: dict[str, torch.Tensor] = {}
        self._cat: dict[str, list[torch.Tensor]] = defaultdict(list)

    def mean(self, name: str, value: torch.Tensor, weight: torch.Tensor | float = 1.0) -> None:
        """Add `value` with `weight` to the weighted mean `name`."""
        v = value.detach().float() * weight
        self._sum[name] = v if name not in self._sum else self._sum[name] + v
        self._wsum[name] = self._wsum[name] + weight

    def min(self, name: str, value: torch.Tensor) -> None:
        """Keep the running minimum of `value` (any shape) under `name`."""
        v = value.detach().float().min()
        self._min[name] = v if name not in self._min else torch.minimum(self._min[name], v)

    def max(self, name: str, value: torch.Tensor) -> None:
        """Keep the running maximum of `value` (any shape) under `name`."""
        v = value.detach().float().max()
        self._max[name] = v if name not in self._max else torch.maximum(self._max[name], v)

    def cat(self, name: str, values: torch.Tensor) -> None:
        """Collect 1-D samples (e.g. every token ratio) for quantiles at the end."""
        self._cat[name].append(values.detach().float().reshape(-1))

    def samples(self, name: str) -> torch.Tensor | None:
        """All collected samples of `name` as one 1-D tensor (None when none were added)."""
        parts = self._cat.get(name)
        return torch.cat(parts) if parts else None

    def results(self, dist=None) -> dict[str, torch.Tensor]:
        """The reduced 0-d tensors (still on the device); over every rank when `dist` (a
        :class:`gmpo.train.dist.Dist`) is given: sums and weights summed, minima and maxima reduced."""
        if dist is not None:
            return self._global_results(dist)
        out: dict[str, torch.Tensor] = {}
        for k, s in self._sum.items():
            w = self._wsum[k]
            out[k] = s / w if not isinstance(w, torch.Tensor) else s / w.clamp(min=1e-12)
        out.update(self._min)
        out.update(self._max)
        return out


    def _global_results(self, dist) -> dict[str, torch.Tensor]:
        """:meth:`results` over every rank: 3 all-reduces (sum, min, max); a name absent on a rank counts as
        weight 0 / +inf / -inf there."""
        names = dist.all_gather_object((sorted(self._sum), sorted(self._min), sorted(self._max)), "metric names")
        means, mins, maxs = (sorted(set().union(*(n[i] for n in names))) for i in range(3))
        dev = dist.device
        zero = torch.zeros((), device=dev)
        out: dict[str, torch.Tensor] = {}
        if means:
            sw = torch.stack([self._sum.get(k, zero).float().to(dev) for k in means]
                             + [torch.as_tensor(self._wsum.get(k, 0.0), dtype=torch.float32).to(dev) for k in means])
            dist.all_reduce(sw, "sum", "metric sums")
            s, w = sw[: len(means)], sw[len(means):]
            out.update(dict(zip(means, (s / w.clamp(min=1e-12)).unbind())))
        for op, keys, own, fill in (("min", mins, self._min, float("inf")), ("max", maxs, self._max, float("-inf"))):
            if keys:
                t = torch.stack([own[k].float().to(dev) if k in own else torch.full((), fill, device=dev) for k in keys])
                out.update(dict(zip(keys, dist.all_reduce(t, op, f"metric {op}").unbind())))
        return out


def quantiles(x: torch.Tensor, qs: list[float]) -> torch.Tensor:
    """Quantiles of a 1-D tensor (linear interpolation), subsampled evenly above 16M elements."""
    if x.numel() > 2**24:  # torch.quantile's input limit
        x = x[:: math.ceil(x.numel() / 2**24)]
    return torch.quantile(x, torch.tensor(qs, dtype=x.dtype, device=x.device))




def log_ratio_histogram(log_ratio: torch.Tensor) -> torch.Tensor:
    """(42,) float counts of token log-ratios l_t: [l <= -1, 40 bins (e_i, e_{i+1}] over (-1, 1], l > 1].

    The fixed bins make steps comparable (the dashboard draws them as a heat-map over steps, with the
    clip range marked: GMPO clips |l| at 0.4 by default). Computed on the device, no host sync.
    """
    edges = torch.tensor(LOG_RATIO_EDGES, dtype=log_ratio.dtype, device=log_ratio.device)
    idx = torch.bucketize(log_ratio.reshape(-1), edges)  # 0: l <= -1, i: e_{i-1} < l <= e_i, 41: l > 1
    return torch.bincount(idx, minlength=len(LOG_RATIO_EDGES) + 1).float()


class StepMetrics:
    """One step's metrics: tensors stay on their device until :meth:`resolve` (one host transfer).

    Scalars become floats; vectors (:meth:`add_vector`, e.g. ``ratio/log_hist``) become lists of floats.
    """

    def __init__(self):
        self._tensors: dict[str, torch.Tensor] = {}
        self._vectors: dict[str, torch.Tensor] = {}
        self._floats: dict[str, float] = {}

    def add_vector(self, name: str, value: torch.Tensor) -> None:
        """Record a 1-D tensor (kept on device until :meth:`resolve`)."""
        self._vectors[name] = value.detach().float().reshape(-1)

    def add(self, name: str, value) -> None:
        """Record a 0-d tensor (kept on device) or a python number."""
        if isinstance(value, torch.Tensor):
            self._tensors[name] = value.detach().float().reshape(())
        else:
            self._floats[name] = float(value)

    def update(self, values: dict) -> None:
        """Record several metrics."""
        for k, v in values.items():
            self.add(k, v)

    def resolve(self, dist=None) -> dict[str, float | list[float]]:
        """All metrics on the host: one device-to-host copy per device holding metrics (one on GPU runs).

        dist (several ranks): the 0-d metrics are first reduced over ranks
        (:meth:`gmpo.train.dist.Dist.reduce_scalars`: max / min by name, else the mean over ranks); vectors
        must already be global. Host floats stay this rank's.
        """
        if dist is not None and self._tensors:
            self._tensors = dist.reduce_scalars(self._tensors)
        out: dict[str, float | list[float]] = {}
        by_device: dict[torch.device, list[str]] = defaultdict(list)
        for k, t in self._tensors.items():
            by_device[t.device].append(k)
        for k, t in self._vectors.items():
            by_device[t.device].append(k)
        for device, keys in by_device.items():
            parts = [self._tensors[k].reshape(1) if k in self._tensors else self._vectors[k] for k in keys]
            flat = torch.cat(parts).tolist()  # the single transfer
            i = 0
            for k, part in zip(keys, parts):
                n = part.numel()
                out[k] = flat[i] if k in self._tensors else flat[i:i + n]
                i += n
        out.update(self._floats)
        return out


_PEAK_CACHE: dict[tuple[str, torch.dtype], float] = {}


def measure_peak_flops(device: torch.device | str, dtype: torch.dtype = torch.float32) -> float:
    """Achievable matmul FLOP/s on `device` in `dtype`, measured once per process (the MFU denominator).

    A square matmul (1024 on CPU, 8192 on CUDA) is timed after a warm-up; the best of several runs is
    used. Measured rather than looked up, so it reflects this machine (DESIGN.md section 6 quotes
    ~295 GFLOP/s fp32 and ~1.7 TFLOP/s bf16 for the reference 2-core CPU).
    """
    import time

    device = torch.device(device)
    key = (str(device), dtype)
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
    for _ in range(2):
        a @ b
    sync()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(3):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - t) / 3)
    _PEAK_CACHE[key] = 2.0 * n**3 / best
    return _PEAK_CACHE[key]
