"""The rollout backend table (torch-free: config validation reads its names without importing torch).

Each entry is a lazy ``module:builder``; a builder takes ``(model, tokenizer, *, bf16, decode_batch_size)``
and returns a :class:`gmpo.rollout.base.RolloutEngine`. A backend that keeps its own copy of the weights
(a vLLM server, say) registers here and receives new weights through ``sync_weights`` after each step.
"""
from gmpo.registry import Registry

BACKENDS = Registry("rollout backend")
BACKENDS.add("engine", "gmpo.rollout.engine:build", help="gmpo's KV-cache sampler with prompt-prefix sharing (default)")
BACKENDS.add("hf", "gmpo.rollout.hf:build", help="transformers generate (reference)")
