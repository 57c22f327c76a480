"""Constitutional AI (Bai et al., arXiv 2212.08073): constitutions as data, critique -> revision generation,
and the pieces the AI-feedback judge reward (:mod:`gmpo.rewards.judge`) shares.

- :mod:`gmpo.cai.constitution`: load our YAML format or the JSON of Hugging Face's constitutional-ai recipe;
  the shipped default (:data:`DEFAULT_CONSTITUTION`).
- :mod:`gmpo.cai.data`: prompt files, the fixed held-out split, the output dataset (jsonl + parquet).
- :mod:`gmpo.cai.client`: chat generation through the rollout engine or an OpenAI-compatible endpoint.
- :mod:`gmpo.cai.generate`: the resumable critique -> revision pipeline behind ``gmpo cai generate``.

Importing this package does not import torch.
"""
from gmpo.cai.constitution import DEFAULT_CONSTITUTION, Constitution, Principle, load_constitution

__all__ = ["DEFAULT_CONSTITUTION", "Constitution", "Principle", "load_constitution"]
