"""gmpo: Geometric-Mean Policy Optimization and the GRPO family for RL post-training of language models.

Importing this package is cheap: heavy modules (torch models, datasets) load on first use.
"""
__version__ = "0.1.0"

from gmpo.config import Config, load_config  # noqa: E402  (light: dataclasses + yaml)

__all__ = ["Config", "load_config", "__version__"]
