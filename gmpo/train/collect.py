"""The collect phase: sample a round of prompts, score it, keep informative groups (dynamic sampling).

:class:`Collector` turns a step number and an attempt count into a scored :class:`gmpo.batch.RolloutBatch`:
``prompts_per_step`` prompts x ``group_size`` completions; truncated completions get 0 when
``rollout.truncated_reward == "zero"``; DAPO's soft overlong penalty is added; with dynamic sampling only
groups whose filter values differ are kept, sampling more rounds until the batch is full (at most
``rollout.max_sampling_rounds`` extra rounds; then it trains on what it has, logged as
``rollout/sampling_rounds`` and ``rollout/groups_kept``).

Seeds: round ``r`` of step ``s`` samples with ``derive_seed(seed, "rollout", s, r)``; a step retried after
a rollback (attempt ``k >= 1``) uses ``derive_seed(seed, "rollout", s, r, "retry", k)``, so a retry does
not replay the trajectory that failed, and the whole run stays reproducible from the seed.

Several ranks (:mod:`gmpo.train.dist`): every rank reads the same prompts from the loader and samples the
whole groups of its contiguous share, with the round's seed derived once more per rank
(:meth:`gmpo.train.dist.Dist.rollout_seed`), so the union is reproducible for a given world size. Under
dynamic sampling each rank fills its share (``prompts_per_step / world`` groups); the rounds are decided
together (a rank that is full keeps reading the loader without sampling until every rank is full), so
every rank's loader stays at the same position.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from gmpo import seeding
from gmpo.algo import presets
from gmpo.batch import RolloutBatch, concat, reward_inputs
from gmpo.rollout.base import SamplingParams

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


def score(batch: RolloutBatch, runner, *, zero_truncated: bool, overlong=None,
          fn_metrics: dict[str, float] | None = None) -> int:
    """Fill ``batch.rewards`` and ``batch.per_fn``; returns the number of reward-function errors.

    A reward function that reports on its last call in a ``last_metrics`` dict (``code_tests``: outcome
    counts ``status/*``, ``tests_passed_frac``, ``exec_s``) has them collected into `fn_metrics` as
    ``reward/<fn>/<key>``: ``status/*`` counts add up over dynamic-sampling rounds, other values keep the list
    of per-round values (averaged by :func:`rollout_metrics`).

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
    if fn_metrics is not None:
        for f in runner.fns:
            for key, value in (getattr(f.fn, "last_metrics", None) or {}).items():
                name = f"reward/{names.get(f.name, f.name)}/{key}"
                if key.startswith("status/"):
                    fn_metrics[name] = fn_metrics.get(name, 0.0) + float(value)
                else:
                    fn_metrics.setdefault(name, []).append(float(value))
    return int(res.n_errors)


def short_names(names: list[str]) -> dict[str, str]:
    """Metric-friendly reward names: 'path/to/file.py:fn' and 'pkg.mod:fn' become 'fn' (when unique)."""
    short = {n: n.rsplit(":", 1)[-1] if ":" in n else n for n in names}
    counts = {}
    for v in short.values():
        counts[v] = counts.get(v, 0) + 1
    return {n: (s if counts[s] == 1 else n) for n, s in short.items()}


def sample_records(batch: RolloutBatch, k: int, seed: int | None = None) -> list[dict]:
    """`k` rows spread evenly over the batch, as JSON-ready dicts for samples.jsonl (with the rollout `seed`)."""
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
            **({"seed": int(seed)} if seed is not None else {}),
        })
    return out


def _jsonable(v):
    return v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)


def rollout_seed(seed: int, step: int, rnd: int, attempt: int = 0) -> int:
    """The sampling seed of round `rnd` of `step`; attempt k >= 1 (a retry after a rollback) gets a fresh one."""
    if attempt <= 0:
        return seeding.derive_seed(seed, "rollout", step, rnd)
    return seeding.derive_seed(seed, "rollout", step, rnd, "retry", attempt)


def filter_values(batch: RolloutBatch, metric: str) -> torch.Tensor:
    """(N,) the values dynamic sampling compares inside a group.

    ``accuracy``: the first reward function's raw score (before truncation zeroing and the overlong
    penalty), as the DAPO paper and verl filter; ``reward``: the final shaped reward.
    """
    if metric == "reward":
        return batch.rewards
    if metric == "accuracy":
        return next(iter(batch.per_fn.values()))
    raise ValueError(f"unknown dynamic-sampling filter metric {metric!r}; valid: accuracy, reward")


@dataclass
class RoundStats:
    """Host-side accounting of one step's sampling rounds."""

    gen_s: float = 0.0
    reward_s: float = 0.0
    errors: int = 0
    rounds: int = 0
    groups: int = 0
    seeds: list[int] = field(default_factory=list)
    fn_metrics: dict[str, float | list[float]] = field(default_factory=dict)  # reward/<fn>/<key> (see score)
    tokens: float = 0.0  # completion tokens sampled this step, every rank (set by rollout_metrics)


class Collector:
    """Samples and scores the rollout batch of a step (see the module docstring).

    engine: a :class:`gmpo.rollout.RolloutEngine`; loader: a :class:`gmpo.data.loader.PromptLoader`;
    rewards: a :class:`gmpo.rewards.RewardRunner`; spec: the :class:`gmpo.algo.presets.AlgorithmSpec`;
    rc: the rollout config section; pad_id / device: where the batch lives.
    """

    def __init__(self, engine, loader, rewards, spec, rc, seed: int, pad_id: int, device: torch.device, dist=None):
        self.engine, self.loader, self.rewards, self.spec, self.rc = engine, loader, rewards, spec, rc
        self.seed, self.pad_id, self.device = seed, pad_id, device
        self.dist = dist  # a gmpo.train.dist.Dist, or None for one process

    def _overlong(self):
        spec, rc = self.spec, self.rc
        if not spec.overlong:
            return None
        return lambda lengths: presets.overlong_penalty(lengths, rc.max_new_tokens, spec.overlong_buffer,
                                                        spec.overlong_penalty)

    def __call__(self, step: int, attempt: int = 0) -> tuple[RolloutBatch, list[RolloutBatch], RoundStats]:
        """(the batch to train on, every round sampled, stats) for rollout step `step` (1-based)."""
        rc, spec, G, P = self.rc, self.spec, self.rc.group_size, self.rc.prompts_per_step
        dist = self.dist
        if dist is not None:
            lo, hi = dist.shard(P)
            P = hi - lo  # this rank's share of the step's groups
        overlong = self._overlong()
        rounds = 1 + (rc.max_sampling_rounds if spec.dynamic_sampling else 0)
        seen, kept, st, full = [], [], RoundStats(), False
        for rnd in range(rounds):
            items = self.loader.next_batch()
            seed = rollout_seed(self.seed, step, rnd, attempt)
            if dist is not None:
                items, seed = items[lo:hi], dist.rollout_seed(seed)
            if not full:
                st.seeds.append(seed)
                b = self._sample_round(items, G, seed, overlong, st)
                seen.append(b)
                if not spec.dynamic_sampling:
                    kept = [b]
                    break
                keep = presets.informative_groups(filter_values(b, spec.filter_metric), G)
                if bool(keep.any()):
                    kept.append(b.select_groups(keep))
                full = sum(len(k.items) for k in kept) >= P
            if dist is None:
                if full:
                    break
            elif not dist.any(not full, "dynamic-sampling rounds"):  # every rank full
                break
        if kept:
            batch = concat(kept)
            if len(batch.items) > P:
                batch = batch.first_groups(P)
        else:  # dynamic sampling found no informative group: train on the last round (zero advantages)
            batch = seen[-1]
        st.groups = len(batch.items)
        return batch, seen, st

    def _sample_round(self, items: list[dict], G: int, seed: int, overlong, st: RoundStats) -> RolloutBatch:
        """Sample and score one round of `items` x `G` with `seed`; timings and errors go to `st`."""
        rc = self.rc
        params = SamplingParams(n=G, max_new_tokens=rc.max_new_tokens, temperature=rc.temperature, top_p=rc.top_p,
                                top_k=rc.top_k, stop=list(rc.stop), entropy=True, seed=seed)
        t = time.perf_counter()
        b = sample(self.engine, items, params, self.pad_id, self.device)
        t2 = time.perf_counter()
        st.errors += score(b, self.rewards, zero_truncated=rc.truncated_reward == "zero", overlong=overlong,
                           fn_metrics=st.fn_metrics)
        st.gen_s += t2 - t
        st.reward_s += time.perf_counter() - t2
        st.rounds += 1
        return b


def seen_arrays(seen: list[RolloutBatch], st: RoundStats) -> dict:
    """The host data of every completion sampled this step (all rounds) that the rollout metrics read."""
    return {"rewards": torch.cat([b.rewards for b in seen]), "lengths": torch.cat([b.lengths for b in seen]),
            "truncated": torch.cat([b.truncated for b in seen]),
            "per_fn": {name: torch.cat([b.per_fn[name] for b in seen]) for name in seen[0].per_fn},
            "rounds": st.rounds, "groups": st.groups, "errors": st.errors, "fn_metrics": dict(st.fn_metrics)}


def _merge_fn_metrics(parts: list[dict]) -> dict:
    out: dict = {}
    for p in parts:
        for k, v in p.items():
            out[k] = out.get(k, [] if isinstance(v, list) else 0.0) + v  # counts add, per-round values concatenate
    return out


def merge_arrays(parts: list[dict]) -> dict:
    """:func:`seen_arrays` of every rank (rank order) as one: the whole step's completions."""
    cat = lambda key: torch.cat([p[key] for p in parts])  # noqa: E731
    return {"rewards": cat("rewards"), "lengths": cat("lengths"), "truncated": cat("truncated"),
            "per_fn": {n: torch.cat([p["per_fn"][n] for p in parts]) for n in parts[0]["per_fn"]},
            "rounds": max(p["rounds"] for p in parts), "groups": sum(p["groups"] for p in parts),
            "errors": sum(p["errors"] for p in parts),
            "fn_metrics": _merge_fn_metrics([p["fn_metrics"] for p in parts])}


def rollout_metrics(seen: list[RolloutBatch], st: RoundStats, group_size: int, dist=None) -> dict[str, torch.Tensor | float]:
    """reward/*, rollout/* over every completion sampled this step (all rounds; all ranks when `dist` is
    given: one all-gather of the host arrays), as tensors or floats; sets ``st.tokens``."""
    a = seen_arrays(seen, st)
    if dist is not None:
        a = merge_arrays(dist.all_gather_object(a, "rollout metrics"))
    r = a["rewards"]  # (N_all,) on the host
    lengths = a["lengths"].float()
    out = {"reward/mean": r.mean(), "reward/std": r.std() if r.numel() > 1 else torch.zeros(()),
           "reward/frac_zero_std": 1.0 - presets.informative_groups(r, group_size).float().mean(),
           "rollout/len_mean": lengths.mean(), "rollout/len_min": lengths.min(), "rollout/len_max": lengths.max(),
           "rollout/truncated_frac": a["truncated"].float().mean(),
           "rollout/sampling_rounds": a["rounds"], "rollout/groups_kept": a["groups"], "reward/errors": a["errors"]}
    for name, v in a["per_fn"].items():
        out[f"reward/{name}/mean"] = v.mean()
    out.update({k: (sum(v) / len(v) if isinstance(v, list) else v) for k, v in a["fn_metrics"].items()})
    st.tokens = float(a["lengths"].sum())  # completion tokens sampled this step (every rank)
    return out
