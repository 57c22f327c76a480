"""Reward functions (TRL style ``f(prompts, completions, **columns) -> list[float]``) and the scoring runner.

Built-ins (each registers itself next to its code):
``math_answer`` (math-verify equivalence with a timeout), ``gsm8k_answer`` (gold after ``#### ``),
``numeric_answer`` (exact number), ``arithmetic`` (the built-in task), ``format`` (boxed, R1 tags, or any
regex), ``code_tests`` / ``code_format`` (sandboxed code execution, :mod:`gmpo.rewards.code`),
``constitution_judge`` (an AI judge applying a constitution, :mod:`gmpo.rewards.judge`). :func:`available` lists names, help
and options (for ``--help`` and config validation: :func:`check_spec`). User code:
``get_reward("package.module:function")`` or ``"path/file.py:function"``, or :func:`register_reward`.
Importing this package does not import torch.
"""
from gmpo.rewards.registry import (
    REWARDS,
    available,
    check_spec,
    describe,
    get_reward,
    register_reward,
    reward_options,
)
from gmpo.rewards.builtin import (  # noqa: E402  (registers the built-ins)
    arithmetic_answer,
    format_reward,
    gsm8k_answer,
    math_answer,
    numeric_answer,
)
from gmpo.rewards.runner import RewardError, RewardResult, RewardRunner  # noqa: E402
from gmpo.rewards import code as _code  # noqa: E402,F401  (registers code_tests and code_format)
from gmpo.rewards import judge as _judge  # noqa: E402,F401  (registers constitution_judge)

__all__ = [
    "REWARDS",
    "RewardError",
    "RewardResult",
    "RewardRunner",
    "arithmetic_answer",
    "available",
    "check_spec",
    "describe",
    "format_reward",
    "get_reward",
    "gsm8k_answer",
    "math_answer",
    "numeric_answer",
    "register_reward",
    "reward_options",
]
