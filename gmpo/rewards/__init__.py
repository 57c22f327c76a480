"""Reward functions (TRL style ``f(prompts, completions, **columns) -> list[float]``) and the scoring runner.

Built-ins: ``math_answer`` (math-verify equivalence with a timeout), ``gsm8k_answer`` (gold after
``#### ``), ``numeric_answer`` (exact number), ``arithmetic`` (the built-in task), ``format`` (boxed,
R1 tags, or any regex). User code: ``get_reward("package.module:function")`` or ``"path/file.py:function"``.
"""
from gmpo.rewards.builtin import (
    BUILTIN_REWARDS,
    arithmetic_answer,
    format_reward,
    gsm8k_answer,
    math_answer,
    numeric_answer,
)
from gmpo.rewards.runner import REWARDS, RewardError, RewardResult, RewardRunner, get_reward, register_reward
from gmpo.rewards import code as _code  # noqa: E402,F401  (registers code_tests and code_format)

__all__ = [
    "BUILTIN_REWARDS",
    "REWARDS",
    "RewardError",
    "RewardResult",
    "RewardRunner",
    "arithmetic_answer",
    "format_reward",
    "get_reward",
    "gsm8k_answer",
    "math_answer",
    "numeric_answer",
    "register_reward",
]
