"""Seed control and RNG state capture: python, numpy, torch (CPU and CUDA).

Every random stream the trainer consumes inside a step is either one of these global generators (their
states are saved in checkpoints and snapshots) or a private generator seeded by :func:`derive_seed` from
``train.seed`` and the step number (rollout sampling, mini-batch shuffling), so a resumed run draws the
same numbers as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(base: int, *keys: Any) -> int:
    """A 63-bit seed determined by `base` and `keys` (e.g. derive_seed(seed, "rollout", step, round)).

    Hash-based, so nearby steps get unrelated streams and the value is stable across processes.
    """
    text = "/".join(str(k) for k in (base, *keys)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def rng_state() -> dict[str, Any]:
    """The global RNG states (python, numpy, torch CPU, torch CUDA when available) as plain objects."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
