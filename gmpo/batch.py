"""The rollout batch: the data one training step passes from sampling to the update, and nothing else.

A :class:`RolloutBatch` holds P prompts x G completions (N rows, group-major: prompt i, sample j -> row
i*G + j) on the training device: what the update needs (completion ids, mask, rollout log-probs,
advantages) and what telemetry needs (texts, per-function rewards, truncation). It sits below both
:mod:`gmpo.rollout` and :mod:`gmpo.train`; who fills each field:

- sampling (:func:`gmpo.train.collect.sample`): items, group_size, prompt_ids, completion_ids, mask,
  rollout_logp, truncated, texts, lengths, pad_id, entropy;
- scoring (:func:`gmpo.train.collect.score`): rewards, per_fn;
- preparation (:func:`gmpo.train.prepare.prepare`): ref_logp, KL shaping of rewards, advantages,
  advantages_host;
- the trainer: share_prompt (from ``train.share_prompt_forward``, off under gradient checkpointing).

How the rows are cut into micro-batches is the update's business (:mod:`gmpo.train.forward`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

_INTERNAL = ("prompt", "prompt_text", "prompt_ids")  # item keys that are not dataset columns


@dataclass
class RolloutBatch:
    """N = P * G sampled completions with their scores (rows group-major)."""

    items: list[dict]  # P prompt records from the PromptLoader
    group_size: int  # G
    prompt_ids: list[list[int]]  # N: the prompt tokens of each row
    completion_ids: torch.Tensor  # (N, T) long, pad after each completion
    mask: torch.Tensor  # (N, T) float 1/0 completion tokens
    rollout_logp: torch.Tensor  # (N, T) float32 log-probs the sampler reported
    truncated: torch.Tensor  # (N,) bool hit max_new_tokens
    texts: list[str]  # N decoded completions
    lengths: torch.Tensor  # (N,) long, on the host (used to build micro-batches)
    pad_id: int
    rewards: torch.Tensor | None = None  # (N,) float32 final reward (truncation, overlong, KL applied)
    per_fn: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N,) raw reward of each function
    advantages: torch.Tensor | None = None  # (N,) float32 on the device
    advantages_host: torch.Tensor | None = None  # (N,) the same on the host (for logging, no device sync)
    ref_logp: torch.Tensor | None = None  # (N, T) reference-policy log-probs (beta > 0 only)
    share_prompt: bool = False  # run each distinct prompt once per micro-batch (see gmpo.train.forward.SharedPrompt)
    entropy: torch.Tensor | None = None  # (N, T) float32 sampling-policy entropy per token, when the engine reports it

    @property
    def n(self) -> int:
        """Number of rows N."""
        return len(self.texts)

    @property
    def device(self) -> torch.device:
        """The training device the tensors live on."""
        return self.mask.device

    def select_groups(self, keep: torch.Tensor) -> "RolloutBatch":
        """The batch restricted to the groups where `keep` (P,) is True."""
        g = keep.cpu().nonzero().squeeze(-1).tolist()
        rows = [i * self.group_size + j for i in g for j in range(self.group_size)]
        return self._take(rows, [self.items[i] for i in g])

    def _take(self, rows: list[int], items: list[dict]) -> "RolloutBatch":
        idx = torch.tensor(rows, dtype=torch.long)
        dev = idx.to(self.device)
        opt = lambda t, i: None if t is None else t[i.to(t.device)]  # noqa: E731
        return replace(self, items=items, prompt_ids=[self.prompt_ids[r] for r in rows],
                       completion_ids=self.completion_ids[dev], mask=self.mask[dev], rollout_logp=self.rollout_logp[dev],
                       truncated=self.truncated[idx.to(self.truncated.device)], texts=[self.texts[r] for r in rows],
                       lengths=self.lengths[idx], rewards=opt(self.rewards, idx),
                       per_fn={k: v[idx.to(v.device)] for k, v in self.per_fn.items()},
                       advantages=opt(self.advantages, dev), advantages_host=opt(self.advantages_host, idx),
                       ref_logp=opt(self.ref_logp, dev), entropy=opt(self.entropy, dev))

    def first_groups(self, n_groups: int) -> "RolloutBatch":
        """The first `n_groups` groups."""
        return self._take(list(range(n_groups * self.group_size)), self.items[:n_groups])


def _pad_cols(t: torch.Tensor, width: int, value=0) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) if t.shape[1] < width else t


def concat(batches: list[RolloutBatch]) -> RolloutBatch:
    """Stack batches along rows (their completion widths are padded to the widest)."""
    if len(batches) == 1:
        return batches[0]
    b0 = batches[0]
    T = max(b.mask.shape[1] for b in batches)
    cat = lambda name, value=0: torch.cat([_pad_cols(getattr(b, name), T, value) for b in batches])  # noqa: E731
    return replace(
        b0, items=[it for b in batches for it in b.items], prompt_ids=[p for b in batches for p in b.prompt_ids],
        completion_ids=cat("completion_ids", b0.pad_id), mask=cat("mask"), rollout_logp=cat("rollout_logp"),
        truncated=torch.cat([b.truncated for b in batches]), texts=[t for b in batches for t in b.texts],
        lengths=torch.cat([b.lengths for b in batches]),
        rewards=None if b0.rewards is None else torch.cat([b.rewards for b in batches]),
        per_fn={k: torch.cat([b.per_fn[k] for b in batches]) for k in b0.per_fn},
        advantages=None, advantages_host=None, ref_logp=None,
        entropy=cat("entropy") if all(b.entropy is not None for b in batches) else None,
    )


def reward_inputs(items: list[dict], group_size: int) -> tuple[list[str], dict[str, list]]:
    """(prompts, columns) for a reward runner: each prompt record repeated for its `group_size` completions;
    every dataset column (the gold ``answer`` and the rest) as a keyword list."""
    prompts = [it["prompt"] for it in items for _ in range(group_size)]
    keys = [k for k in items[0] if k not in _INTERNAL] if items else []
    columns = {k: [it.get(k) for it in items for _ in range(group_size)] for k in keys}
    return prompts, columns
