"""Checking a :class:`Config` and describing it: allowed values generated from the registries that own the
names, ranges, and the option reference printed by ``gmpo train --help`` and the README.
"""
from __future__ import annotations

import dataclasses
import typing

from gmpo.config.schema import Config, ConfigError, GuardConfig


def choices() -> dict[str, tuple[str, ...]]:
    """Allowed values of every choice-valued key, generated from the registries that own the names."""
    from gmpo.algo.registry import ADVANTAGE_MODES, KL_ESTIMATORS, KL_PLACEMENTS, PRESETS, REDUCTIONS
    from gmpo.rollout.backends import BACKENDS

    actions = ("off", "warn", "skip", "rollback", "stop")
    out = {
        "model.dtype": ("float32", "bfloat16"),
        "rollout.backend": BACKENDS.names(),
        "rollout.truncated_reward": ("zero", "keep"),
        "algorithm.loss": PRESETS.names(),
        "algorithm.advantage": ("",) + ADVANTAGE_MODES,
        "algorithm.reduction": ("",) + REDUCTIONS,
        "algorithm.kl_estimator": KL_ESTIMATORS,
        "algorithm.kl_in": KL_PLACEMENTS,
        "algorithm.filter_metric": ("", "accuracy", "reward"),
        "optim.schedule": ("constant", "cosine"),
        "train.bf16": ("auto", "true", "false"),
        "train.recompute_old_logp": ("auto", "always", "never"),
        "train.reward_errors": ("raise", "zero"),
        "train.parallel": ("ddp", "fsdp2"),
    }
    for f in dataclasses.fields(GuardConfig):
        if f.name.endswith("_action"):
            out[f"guard.{f.name}"] = actions
    return out


def _help_values() -> dict[str, str]:
    """Values substituted into ``{...}`` placeholders of the field comments (help text from the registries)."""
    from gmpo.algo.registry import LOSSES, eps_text

    return {"eps": eps_text(), "grpo_reductions": " | ".join(LOSSES.meta("grpo")["reductions"])}


def validate(cfg: Config) -> None:
    """Check choices and ranges; raise ConfigError naming the key."""
    for key, allowed in choices().items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if isinstance(value, bool):  # YAML turns `true` into a bool
            value = str(value).lower()
            setattr(getattr(cfg, section), name, value)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(repr(c) for c in allowed if c)}")
    positive = {
        "rollout.prompts_per_step": cfg.rollout.prompts_per_step,
        "rollout.group_size": cfg.rollout.group_size,
        "rollout.max_new_tokens": cfg.rollout.max_new_tokens,
        "train.steps": cfg.train.steps,
        "train.ppo_epochs": cfg.train.ppo_epochs,
        "train.micro_batch_size": cfg.train.micro_batch_size,
        "train.dist_timeout": cfg.train.dist_timeout,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    if cfg.rollout.temperature <= 0:
        raise ConfigError("rollout.temperature must be > 0 (use a small value for near-greedy sampling)")
    if not 0 < cfg.rollout.top_p <= 1:
        raise ConfigError(f"rollout.top_p must be in (0, 1], got {cfg.rollout.top_p}")
    n = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    mb = cfg.train.mini_batch_size or n
    if n % mb:
        raise ConfigError(f"train.mini_batch_size={mb} must divide the rollout batch ({n} completions)")
    if mb % cfg.train.micro_batch_size and cfg.train.micro_batch_size < mb:
        raise ConfigError(f"train.micro_batch_size={cfg.train.micro_batch_size} must divide the mini-batch ({mb})")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    if not cfg.rewards:
        raise ConfigError("rewards: at least one reward function is needed")
    if cfg.train.parallel == "fsdp2" and cfg.model.lora.enabled:
        raise ConfigError("train.parallel=fsdp2 does not support LoRA (model.lora.enabled=true): LoRA trains a few "
                          "adapter weights, so use train.parallel=ddp")
    _check_rewards(cfg.rewards)


def _check_rewards(specs) -> None:
    """Registered reward names and their options are checked here (torch-free); user code 'module:function'
    is imported and checked when the trainer builds its reward runner."""
    from gmpo.rewards import check_spec

    for i, spec in enumerate(specs):
        name = spec.name
        if not isinstance(name, str) or ":" in name:
            continue
        try:
            check_spec(name, spec.kwargs)
        except ValueError as e:
            raise ConfigError(f"rewards[{i}]: {e}") from None


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every option, read from the field comments in this file."""
    import inspect

    src = inspect.getsource(cls)
    comments: dict[str, str] = {}
    for line in src.splitlines():
        s = line.strip()
        if ":" in s and "#" in s and not s.startswith(("#", "class", "def", "@")):
            name = s.split(":", 1)[0].strip()
            comments[name] = s.split("#", 1)[1].strip()
    rows: list[tuple[str, str, str]] = []
    inst = cls()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, key + "."))
            continue
        default = getattr(inst, f.name)
        if f.name == "rewards":
            from gmpo.rewards import REWARDS

            # gmpo's own rewards (a user's registered ones work too, but the help text stays the same everywhere)
            names = ", ".join(n for n in REWARDS.names()
                              if str(getattr(REWARDS.entry(n).target, "__module__", "")).startswith("gmpo."))
            rows.append((key, "[{name: math_answer, weight: 1.0}]", "list of {name, weight, kwargs} reward functions: "
                         f"a registered name ({names}; options in `gmpo train --help` of each) or 'module:function' / "
                         "'path/file.py:function'"))
            continue
        rows.append((key, repr(default), _fill(comments.get(f.name, ""), key)))
    return rows


def _fill(text: str, key: str) -> str:
    """Replace ``{choices}`` (the key's allowed values) and other ``{name}`` placeholders in a comment."""
    if "{" not in text:
        return text
    allowed = choices().get(key, ())
    values = {"choices": " | ".join(c for c in allowed if c), **_help_values()}
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


def markdown_reference() -> str:
    """The config reference table for the README (generated from the same comments as --help)."""
    lines = ["| key | default | description |", "|---|---|---|"]
    for key, default, help_text in describe(Config):
        lines.append(f"| `{key}` | `{default}` | {help_text.replace('|', '/')} |")
    return "\n".join(lines)
