"""The rollout interface: ``engine.generate(prompts, params) -> Rollout``.

Every backend (gmpo's KV-cache sampler, HF ``generate``, a future vLLM server) implements
:class:`RolloutEngine`. The trainer and the evaluator only see this module's types, so a new backend
never touches them. Backends that hold their own copy of the weights (vLLM) receive them through
``sync_weights`` after each optimizer step; in-process backends share the policy module and do nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


@dataclass
class SamplingParams:
    """How to sample. ``n`` completions per prompt, laid out group-major (prompt i, sample j -> i*n + j)."""

    n: int = 1
    max_new_tokens: int = 32
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)  # stop strings; EOS always stops
    seed: int | None = None  # seeds a private torch.Generator: same seed, same samples
    entropy: bool = False  # also return the policy entropy at every sampled position (Rollout.entropy)


@dataclass
class Rollout:
    """Sampled completions for P prompts x n samples (N = P * n), right-padded.

    ``logprobs`` are log pi(o_t | prefix) of the sampled tokens under the policy's logits divided by
    the sampling temperature (1.0 when greedy), before top-p/top-k filtering: the same quantity the
    training forward computes, so they serve as ``old_logp`` when the policy has not moved.
    """

    prompt_ids: list[list[int]]  # P lists of prompt token ids (unpadded)
    completion_ids: torch.Tensor  # (N, T) long, right-padded with pad_token_id
    completion_mask: torch.Tensor  # (N, T) float 1/0: real completion tokens (EOS / stop text included)
    logprobs: torch.Tensor  # (N, T) float32, 0 where mask is 0
    truncated: torch.Tensor  # (N,) bool: hit max_new_tokens without EOS or a stop string
    texts: list[str]  # N decoded completions (special tokens skipped, cut after a stop string)
    n: int  # samples per prompt
    entropy: torch.Tensor | None = None  # (N, T) float32 entropy of log_softmax(logits / temperature) in nats, 0 where mask is 0; when requested

    @property
    def lengths(self) -> torch.Tensor:
        """(N,) completion lengths in tokens."""
        return self.completion_mask.sum(-1).long()


@runtime_checkable
class RolloutEngine(Protocol):
    """A generation backend."""

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> Rollout:
        """Sample ``params.n`` completions for each tokenised prompt."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Push updated policy weights to the backend (no-op for in-process backends)."""
        ...
