"""Rollout backends behind one interface (see :mod:`gmpo.rollout.base`).

``make_engine(backend, model, tokenizer)`` builds one; the trainer only calls ``generate`` and
``sync_weights``. A backend that keeps its own copy of the weights (a vLLM server, say) registers a
builder in ``BACKENDS`` and receives new weights through ``sync_weights`` after each optimizer step.
"""
from gmpo.rollout.base import Rollout, RolloutEngine, SamplingParams


def _engine(model, tokenizer, *, bf16=False, decode_batch_size=256):
    from gmpo.rollout.engine import KVCacheEngine

    return KVCacheEngine(model, tokenizer, bf16=bf16, decode_batch_size=decode_batch_size)


def _hf(model, tokenizer, *, bf16=False, decode_batch_size=256):
    from gmpo.rollout.hf import HFGenerateEngine

    return HFGenerateEngine(model, tokenizer, bf16=bf16)


BACKENDS = {
    "engine": _engine,  # gmpo's KV-cache sampler with prompt-prefix sharing (default)
    "hf": _hf,  # transformers generate (reference)
}


def make_engine(backend: str, model, tokenizer, *, bf16: bool = False, decode_batch_size: int = 256) -> RolloutEngine:
    """Build the rollout backend named ``backend`` ("engine" | "hf") around ``model`` and ``tokenizer``.

    ``bf16`` runs the generation forward under bf16 autocast; ``decode_batch_size`` caps the rows the
    engine decodes at once (ignored by "hf", which decodes the whole request as one batch).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown rollout backend {backend!r}; choose one of: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[backend](model, tokenizer, bf16=bf16, decode_batch_size=decode_batch_size)


__all__ = ["BACKENDS", "Rollout", "RolloutEngine", "SamplingParams", "make_engine"]
