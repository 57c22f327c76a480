"""Differences between the transformers versions gmpo supports (5.17 on the GPU machines, 5.2x here).

transformers renamed the KV-cache argument of causal-LM ``forward`` from ``past_key_values`` to ``cache``
(the old name warns and goes in 5.40) and the output field likewise. Every call of ours that passes or
reads a cache goes through these two helpers, so it works on both and warns on neither.
"""
from __future__ import annotations

import inspect
from typing import Any

_KWARG: dict[type, str] = {}


def _base(model: Any) -> Any:
    """The model whose ``forward`` has the real signature (peft wrappers forward ``**kwargs``)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def cache_kwarg(model: Any) -> str:
    """``"cache"`` when this model's forward takes it (transformers >= 5.2x), else ``"past_key_values"``."""
    cls = type(_base(model))
    if cls not in _KWARG:
        params = inspect.signature(cls.forward).parameters
        _KWARG[cls] = "cache" if "cache" in params else "past_key_values"
    return _KWARG[cls]


def output_cache(out: Any) -> Any:
    """The KV cache a forward returned, under either field name (None when it returned none)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)
