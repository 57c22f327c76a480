"""Rollout backends behind one interface (see :mod:`gmpo.rollout.base`).

``make_engine(backend, model, tokenizer)`` builds one; the trainer only calls ``generate`` and
``sync_weights``. Backends are listed in :data:`gmpo.rollout.backends.BACKENDS` (torch-free). The names
below load lazily, so importing the package (e.g. for the backend table) does not import torch.
"""
from __future__ import annotations

from gmpo.rollout.backends import BACKENDS

_LAZY = {"Rollout": "gmpo.rollout.base", "RolloutEngine": "gmpo.rollout.base", "SamplingParams": "gmpo.rollout.base"}


def make_engine(backend: str, model, tokenizer, *, bf16: bool = False, decode_batch_size: int = 256):
    """Build the rollout backend named ``backend`` ("engine" | "hf") around ``model`` and ``tokenizer``.

    ``bf16`` runs the generation forward under bf16 autocast; ``decode_batch_size`` caps the rows the
    engine decodes at once (ignored by "hf", which decodes the whole request as one batch).
    """
    return BACKENDS.get(backend)(model, tokenizer, bf16=bf16, decode_batch_size=decode_batch_size)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gmpo.rollout' has no attribute {name!r}")


__all__ = ["BACKENDS", "Rollout", "RolloutEngine", "SamplingParams", "make_engine"]
