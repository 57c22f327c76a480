"""Speed helpers: the fastest AdamW variant a device supports, and a phase timer for step breakdowns.

Nothing here changes results beyond float rounding: the fused AdamW kernel computes the same update as
PyTorch's reference loop (one pass over each parameter instead of ~10 tensor-wide ops that each
allocate a temporary); the timer only reads clocks (synchronising CUDA at phase boundaries).
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


def adamw_options(params: list[torch.Tensor]) -> dict:
    """Keyword arguments selecting PyTorch's fused AdamW when every parameter's device and dtype allow it.

    Fused AdamW (CPU since torch 2.4, CUDA) is ~3x faster than the default per-parameter loop for a
    135M-parameter model on one CPU thread (0.09 s vs 0.27 s) and equal within float rounding.
    Returns {} (the default implementation) otherwise.
    """
    if not params:
        return {}
    devices = {p.device.type for p in params}
    if not devices <= {"cpu", "cuda"} or not all(p.is_floating_point() for p in params):
        return {}
    try:  # the constructor validates device and dtype support
        probe = [torch.zeros(1, device=p.device, dtype=p.dtype, requires_grad=True) for p in params[:1]]
        torch.optim.AdamW(probe, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return {}
    return {"fused": True}


class PhaseTimer:
    """Wall-clock seconds per named phase, accumulated across calls: ``with timer("forward"): ...``.

    On CUDA the device is synchronised at each boundary so GPU work lands in the phase that issued it.
    ``totals`` maps phase -> seconds; :meth:`other` is a measured total minus the named phases.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.totals: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, phase: str):
        self._sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.totals[phase] += time.perf_counter() - t

    def other(self, total: float) -> float:
        """Seconds of `total` not inside any named phase (never negative)."""
        return max(0.0, total - sum(self.totals.values()))

    def reset(self) -> None:
        """Forget all phases."""
        self.totals.clear()
