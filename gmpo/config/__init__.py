"""Run configuration: the schema (:mod:`gmpo.config.schema`), building it from YAML, dicts and overrides
(:mod:`gmpo.config.build`), and checking and describing it (:mod:`gmpo.config.check`). Light to import:
dataclasses and yaml only (the registries it reads for choices are torch-free).
"""
from gmpo.config.build import (apply_overrides, from_dict, load_config, make_config, parse_override, save_config,
                               to_dict)
from gmpo.config.check import choices, describe, markdown_reference, validate
from gmpo.config.schema import (DEFAULT_MODEL, AlgorithmConfig, ArithmeticConfig, Config, ConfigError, DataConfig,
                                EvalConfig, GuardConfig, LogConfig, LoraConfig, ModelConfig, OptimConfig,
                                OverlongConfig, RewardSpec, RolloutConfig, SFTConfig, TrainConfig)

__all__ = [
    "DEFAULT_MODEL", "AlgorithmConfig", "ArithmeticConfig", "Config", "ConfigError", "DataConfig", "EvalConfig",
    "GuardConfig", "LogConfig", "LoraConfig", "ModelConfig", "OptimConfig", "OverlongConfig", "RewardSpec",
    "RolloutConfig", "SFTConfig", "TrainConfig", "apply_overrides", "choices", "describe", "from_dict", "load_config",
    "make_config", "markdown_reference", "parse_override", "save_config", "to_dict", "validate",
]
