"""Rollout backends behind one interface (see :mod:`gmpo.rollout.base`)."""
from gmpo.rollout.base import Rollout, RolloutEngine, SamplingParams

__all__ = ["Rollout", "RolloutEngine", "SamplingParams"]
