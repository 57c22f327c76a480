"""Helpers for tests and benchmarks of ``gmpo serve``: tiny models with known behaviour, pools, servers.

``constant_model(tok, text)`` is the tiny random-init model with its output layer replaced so that greedy
decoding always emits the first token of ``text`` (or EOS at once with ``text=""``): a model whose answers
a scorer can tell apart, for fallback and circuit-breaker tests.
"""
from __future__ import annotations

from gmpo.serve.config import ModelSpec, ServeConfig


def constant_model(tok, text: str, seed: int = 0):
    """A tiny causal LM whose greedy answer is ``text[0]`` repeated (``""``: an immediate EOS, empty answer)."""
    import torch

    from gmpo.testing import tiny_model

    model = tiny_model(tok, seed=seed)
    token = tok.eos_token_id if text == "" else tok(text[0], add_special_tokens=False)["input_ids"][0]
    hidden = model.config.hidden_size
    head = torch.nn.Linear(hidden, len(tok), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token] = 10.0
    model.lm_head = head  # logits = bias: token wins by e^10 under any temperature <= 1
    return model


def tiny_pool(cfg: ServeConfig, models: dict):
    """A :class:`gmpo.serve.models.ModelPool` of in-memory ``{name: (model, tokenizer)}``; sets ``cfg.models``."""
    from gmpo.serve.models import ModelPool, served_from

    cfg.models = [ModelSpec(name, f"<in-memory {name}>") for name in models]
    pool = ModelPool(cfg)
    for name, (model, tok) in models.items():
        pool.add(served_from(name, model, tok, cfg))
    return pool
