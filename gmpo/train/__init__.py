"""The training loop as phases: collect (sample + score), prepare (reference, KL, advantages), update
(mini-batches of micro-batches), optimize (clip, hooks, step), composed by :class:`GMPOTrainer`.

- :mod:`gmpo.train.trainer`: :class:`GMPOTrainer` (``train()``, ``step()``, the hook API).
- :mod:`gmpo.train.build`: building each part from the config or from objects passed in.
- :mod:`gmpo.train.collect`, :mod:`gmpo.train.prepare`, :mod:`gmpo.train.update`, :mod:`gmpo.train.optimize`:
  the phases; :mod:`gmpo.train.forward`: micro-batch assembly and the training forward.
- :mod:`gmpo.train.hooks`: the hook protocol and its verdicts (ok / skip / :class:`Restore`).

``GMPOTrainer`` is imported lazily (it pulls in torch and transformers).
"""
from __future__ import annotations


def __getattr__(name: str):
    if name == "GMPOTrainer":
        from gmpo.train.trainer import GMPOTrainer

        return GMPOTrainer
    raise AttributeError(f"module 'gmpo.train' has no attribute {name!r}")


__all__ = ["GMPOTrainer"]
