"""gmpo: Geometric-Mean Policy Optimization and the GRPO family for RL post-training of language models.

The Python API, in the shape TRL users know::

    from gmpo import GMPOConfig, GMPOTrainer
    trainer = GMPOTrainer(model=model, tokenizer=tok, config=GMPOConfig(train={"steps": 10}),
                          train_dataset=train_ds, eval_dataset=eval_ds, reward_funcs=[my_reward])
    summary = trainer.train()      # or trainer.step() one step at a time, then trainer.close()

Importing this package is cheap: the trainer (torch, transformers) loads on first use of ``GMPOTrainer``.
"""
__version__ = "0.1.0"

from gmpo.config import Config, load_config, make_config  # noqa: E402  (light: dataclasses + yaml)

GMPOConfig = make_config  # TRL-style name: GMPOConfig(recipe=None, overrides=None, **sections) -> Config


def __getattr__(name: str):
    if name == "GMPOTrainer":
        from gmpo.train.trainer import GMPOTrainer

        return GMPOTrainer
    raise AttributeError(f"module 'gmpo' has no attribute {name!r}")


__all__ = ["Config", "GMPOConfig", "GMPOTrainer", "load_config", "make_config", "__version__"]
