"""Rollout batches: sampling a round of prompts, scoring it, keeping informative groups, held-out accuracy.

A :class:`RolloutBatch` holds P prompts x G completions (N rows, group-major: prompt i, sample j -> row
i*G + j) on the training device, with what the update phase needs (completion ids, mask, rollout
log-probs, advantages) and what telemetry needs (texts, per-function rewards, truncation).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from gmpo.rollout.base import SamplingParams
from gmpo.update import MicroBatch, build_micro_batch

_INTERNAL = ("prompt", "prompt_text", "prompt_ids")


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
    share_prompt: bool = False  # run each distinct prompt once per micro-batch (see gmpo.update.SharedPrompt)
    entropy: torch.Tensor | None = None  # (N, T) float32 sampling-policy entropy per token, when the engine reports it

    @property
    def n(self) -> int:
        """Number of rows N."""
        return len(self.texts)

    @property
    def device(self) -> torch.device:
        return self.mask.device

    def micro_batch(self, rows: torch.Tensor) -> MicroBatch:
        """Rows `rows` assembled for one training forward (padded to their own max lengths)."""
        return build_micro_batch(self.prompt_ids, self.completion_ids, self.lengths, rows.cpu(), self.pad_id, self.device,
                                 self.group_size if self.share_prompt else 0)

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


def sample(engine, items: list[dict], params: SamplingParams, pad_id: int, device: torch.device) -> RolloutBatch:
    """Generate ``params.n`` completions for each prompt record."""
    out = engine.generate([it["prompt_ids"] for it in items], params)
    n = params.n
    return RolloutBatch(
        items=items, group_size=n, prompt_ids=[it["prompt_ids"] for it in items for _ in range(n)],
        completion_ids=out.completion_ids.to(device), mask=out.completion_mask.to(device).float(),
        rollout_logp=out.logprobs.to(device).float(), truncated=out.truncated.cpu().bool(), texts=list(out.texts),
        lengths=out.completion_mask.sum(-1).long().cpu(), pad_id=pad_id,
        entropy=out.entropy.to(device) if out.entropy is not None else None,
    )


def reward_inputs(items: list[dict], group_size: int) -> tuple[list[str], dict[str, list]]:
    """(prompts, columns) for a reward runner: each prompt record repeated for its G completions."""
    prompts = [it["prompt"] for it in items for _ in range(group_size)]
    keys = [k for k in items[0] if k not in _INTERNAL] if items else []
    columns = {k: [it.get(k) for it in items for _ in range(group_size)] for k in keys}
    return prompts, columns


def score(batch: RolloutBatch, runner, *, zero_truncated: bool, overlong=None) -> int:
    """Fill ``batch.rewards`` and ``batch.per_fn``; returns the number of reward-function errors.

    Final reward = weighted sum of the reward functions, 0 for truncated completions when
    `zero_truncated` (the paper's setting), plus ``overlong(lengths)`` (DAPO soft penalty) when given.
    ``per_fn`` keeps each function's raw score (before truncation and penalties).
    """
    prompts, columns = reward_inputs(batch.items, batch.group_size)
    res = runner(prompts, batch.texts, columns)
    total = res.total.detach().float().cpu()  # (N,)
    if zero_truncated:
        total = torch.where(batch.truncated, torch.zeros_like(total), total)
    if overlong is not None:
        total = total + overlong(batch.lengths)
    batch.rewards = total
    names = short_names(list(res.per_fn))
    batch.per_fn = {names[k]: v.detach().float().cpu() for k, v in res.per_fn.items()}
    return int(res.n_errors)


def short_names(names: list[str]) -> dict[str, str]:
    """Metric-friendly reward names: 'path/to/file.py:fn' and 'pkg.mod:fn' become 'fn' (when unique)."""
    short = {n: n.rsplit(":", 1)[-1] if ":" in n else n for n in names}
    counts = {}
    for v in short.values():
        counts[v] = counts.get(v, 0) + 1
    return {n: (s if counts[s] == 1 else n) for n, s in short.items()}


def sample_records(batch: RolloutBatch, k: int) -> list[dict]:
    """`k` rows spread evenly over the batch, as JSON-ready dicts for samples.jsonl."""
    if k <= 0 or batch.n == 0:
        return []
    idx = torch.linspace(0, batch.n - 1, steps=min(k, batch.n)).round().long().unique().tolist()
    adv = batch.advantages_host if batch.advantages_host is not None else batch.advantages
    adv = adv.detach().cpu() if adv is not None else None
    out = []
    for i in idx:
        item = batch.items[i // batch.group_size]
        out.append({
            "prompt": item.get("prompt"), "answer": _jsonable(item.get("answer")), "completion": batch.texts[i],
            "rewards": {k2: float(v[i]) for k2, v in batch.per_fn.items()},
            "reward": float(batch.rewards[i]) if batch.rewards is not None else None,
            "advantage": float(adv[i]) if adv is not None else None,
            "length": int(batch.lengths[i]), "truncated": bool(batch.truncated[i]),
        })
    return out


def _jsonable(v):
    return v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)


def heldout_accuracy(engine, tokenizer, eval_ds, data_cfg, reward_spec, max_new_tokens: int,
                     stop: list[str] | None = None, batch_size: int = 256) -> float:
    """Greedy accuracy on `eval_ds`: the fraction of prompts whose first reward function scores > 0.5.

    Prompts are rendered with the training template; generation is greedy (temperature 0).
    """
    from gmpo.data import PromptLoader
    from gmpo.rewards import RewardRunner

    if len(eval_ds) == 0:
        return float("nan")
    loader = PromptLoader(eval_ds, tokenizer, replace(data_cfg, shuffle=False), batch_size=len(eval_ds))
    items = loader.next_batch()  # every eval prompt once, in order
    runner = RewardRunner([replace(reward_spec, weight=1.0)], errors="zero")
    correct = 0
    params = SamplingParams(n=1, max_new_tokens=max_new_tokens, temperature=0.0, stop=list(stop or []), seed=0)
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        out = engine.generate([it["prompt_ids"] for it in chunk], params)
        prompts, columns = reward_inputs(chunk, 1)
        res = runner(prompts, list(out.texts), columns)
        first = next(iter(res.per_fn.values()))
        correct += int((first.float() > 0.5).sum())
    return correct / len(items)
