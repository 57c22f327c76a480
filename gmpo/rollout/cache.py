"""A KV cache that appends in place: the rollout engine's decode cache.

Imported by the engine only when it generates, so importing :mod:`gmpo.rollout.engine` does not import
transformers.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` that writes new keys/values into a preallocated (B, H, capacity, D) buffer
    and exposes ``keys``/``values`` as views of its filled part.

    ``DynamicLayer.update`` concatenates, copying the whole cache at every decode step (as much memory
    traffic as the attention itself); here a step writes only the new token. Attention kernels take
    the strided views as they are.
    """

    def __init__(self, capacity: int, **kwargs):
        super().__init__(**kwargs)
        self.capacity = capacity
        self._k = self._v = None  # (B, H, capacity, D) buffers
        self._len = 0

    def _refresh(self) -> None:
        self.keys, self.values = self._k[:, :, : self._len], self._v[:, :, : self._len]  # (B, H, len, D) views

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        B, H, S, D = key_states.shape
        end = self._len + S
        if self._k is None or end > self._k.shape[2]:  # (re)allocate: once per chunk when capacity is right
            cap = max(self.capacity, end)
            k = key_states.new_empty((B, H, cap, D))
            v = value_states.new_empty((B, value_states.shape[1], cap, value_states.shape[3]))
            if self._len:
                k[:, :, : self._len], v[:, :, : self._len] = self.keys, self.values
            self._k, self._v = k, v
        self._k[:, :, self._len : end] = key_states
        self._v[:, :, self._len : end] = value_states
        self._len = end
        self._refresh()
        return self.keys, self.values

    def place(self, rows: slice, end: int, keys: torch.Tensor, values: torch.Tensor, batch: int) -> None:
        """Write a sub-batch's prompt keys/values (b, H, S, D) into batch rows ``rows``, right-aligned
        to end at position ``end`` (the positions before them are left padding, kept at zero: masked
        anyway, and finite, so a masked weight of 0 never meets garbage). The first call allocates
        the (batch, H, capacity, D) buffers."""
        if self._k is None:
            self.lazy_initialization(keys, values)
            cap = max(self.capacity, end)
            self._k = keys.new_zeros((batch, keys.shape[1], cap, keys.shape[3]))
            self._v = values.new_zeros((batch, values.shape[1], cap, values.shape[3]))
        S = keys.shape[2]
        self._k[rows, :, end - S : end] = keys
        self._v[rows, :, end - S : end] = values
        self._len = end
        self._refresh()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._k is not None:
            self._k, self._v = self._k[indices], self._v[indices]  # one gather of the buffers
            self._refresh()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._k is not None:
            self._k = self._k.repeat_interleave(repeats, dim=0)
            self._v = self._v.repeat_interleave(repeats, dim=0)
            self._refresh()

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        self.batch_select_indices(beam_idx)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0 and self._k is not None:
            self._len = max(self._len + tokens_to_remove, 0)
            self._refresh()

    def reset(self) -> None:
        self._k = self._v = None
        self._len = 0
        super().reset()


def make_cache(config, capacity: int):
    """A ``DynamicCache`` for ``config`` whose full-attention layers append in place into buffers of
    ``capacity`` positions (sliding-window or other special layers keep their own classes)."""
    cache = DynamicCache(config=config)  # per-layer types (full / sliding window) from the config
    layers = getattr(cache, "layers", None)
    if layers:
        for i, layer in enumerate(layers):
            if type(layer) is DynamicLayer:
                layers[i] = GrowingLayer(capacity)
    return cache


def all_growing(cache) -> bool:
    """Whether every layer of ``cache`` is a :func:`make_cache` in-place layer (so buckets can be placed)."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(isinstance(layer, GrowingLayer) for layer in layers)
