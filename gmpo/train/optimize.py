"""The optimize phase: the optimizer, the learning-rate schedule, and one guarded optimizer step.

:func:`optimizer_step` clips the gradient, asks the hooks for a verdict on the update (one host sync,
only when a hook listens), then either discards the gradient ("skip", or a restore requested by a hook)
or steps the optimizer and scheduler and hands the new weights to the rollout engine.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from gmpo import perf
from gmpo.telemetry.collector import Reducer
from gmpo.train.hooks import OK


class LRSchedule:
    """Linear warm-up over `warmup` optimizer steps, then constant or cosine decay to `min_ratio` x lr."""

    def __init__(self, warmup: int, total: int, kind: str = "constant", min_ratio: float = 0.0):
        self.warmup, self.total, self.kind, self.min_ratio = warmup, max(total, 1), kind, min_ratio

    def __call__(self, s: int) -> float:
        if s < self.warmup:
            return (s + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (s - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(params: list[torch.nn.Parameter], oc) -> torch.optim.Optimizer:
    """AdamW over `params` from the optim config section (the fused kernel where the device supports it)."""
    return torch.optim.AdamW(params, lr=oc.lr, betas=tuple(oc.betas), eps=oc.adam_eps, weight_decay=oc.weight_decay,
                             **perf.adamw_options(params))


def build_scheduler(optimizer: torch.optim.Optimizer, oc, total_updates: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The LambdaLR of :class:`LRSchedule` over `total_updates` optimizer steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRSchedule(oc.warmup_steps, total_updates, oc.schedule,
                                                                   oc.min_lr_ratio))


def schedule_length(scheduler) -> int:
    """The number of optimizer steps the schedule was built for."""
    return int(scheduler.lr_lambdas[0].total)


def optimizer_step(params: list[torch.nn.Parameter], optimizer, scheduler, max_grad_norm: float,
                   consult: Callable[[dict], object] | None, sync: Callable[[], None], loss: torch.Tensor,
                   ratio: dict, red: Reducer) -> tuple[bool, object]:
    """Clip, consult the hooks, step; returns (whether the weights changed, the hooks' verdict).

    consult(stats) -> verdict gets host floats ``loss``, ``grad_norm`` (before clipping), ``nonfinite``,
    ``ratio/token_max``, ``ratio/token_min``; None means no hook listens (no host sync at all).
    """
    gnorm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))  # pre-clip norm
    if hasattr(gnorm, "full_tensor"):  # FSDP2 (DTensor gradients): the global norm, the same on every rank
        gnorm = gnorm.full_tensor()
    red.mean("loss/value", loss)
    red.mean("grad/norm", gnorm)
    verdict = OK
    if consult is not None:  # building host stats costs a sync: only when someone listens
        vals = torch.stack([loss.detach().float(), gnorm.detach().float(), ratio["max"], ratio["min"]]).tolist()
        stats = {"loss": vals[0], "grad_norm": vals[1], "ratio/token_max": vals[2], "ratio/token_min": vals[3],
                 "nonfinite": float(not (math.isfinite(vals[0]) and math.isfinite(vals[1])))}
        verdict = consult(stats)
    if verdict != OK:  # skip, or a restore: the gradient is discarded
        optimizer.zero_grad(set_to_none=True)
        red.mean("optim/skipped", torch.ones(()))
        return False, verdict
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    sync()
    red.mean("optim/skipped", torch.zeros(()))
    return True, verdict


__all__ = ["LRSchedule", "build_optimizer", "build_scheduler", "optimizer_step", "schedule_length"]
