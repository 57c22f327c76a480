"""The prepare phase: reference log-probs (only when beta != 0), KL shaping of the reward, advantages.

Fills ``batch.ref_logp``, adjusts ``batch.rewards`` when ``kl_in == "reward"`` (r_i -= beta * sum_t KL_t,
the sequence KL at sampling time), and sets ``batch.advantages`` (device) and ``batch.advantages_host``
(host copy for samples.jsonl, so logging needs no device sync). Advantages follow DESIGN.md section 3
(:func:`gmpo.algo.advantages.compute_advantages`).

Several ranks: the rewards of every rank are all-gathered (N floats on the host) and the advantages are
computed over the global batch, then each rank keeps its rows; group modes need nothing from other ranks
(whole groups live on one rank) but get the same numbers, and the batch-level mode gets the global std.
"""
from __future__ import annotations

import torch

from gmpo import perf
from gmpo.algo import ops
from gmpo.algo.advantages import compute_advantages
from gmpo.batch import RolloutBatch
from gmpo.train.update import no_grad_logp


def prepare(batch: RolloutBatch, spec, policy, ref_model, forward, micro_batch_size: int, n_params: int,
            device: torch.device, dist=None) -> tuple[float, dict[str, torch.Tensor]]:
    """Reference log-probs, KL shaping and advantages for `batch`; returns (FLOPs spent, metrics).

    policy: the trained model; ref_model: a frozen copy of the initial policy, or None under LoRA (the
    adapter-free base model is then the reference); forward: a :class:`gmpo.train.forward.PolicyForward`.
    """
    flops, metrics = 0.0, {}
    if spec.needs_reference:
        batch.ref_logp = torch.zeros_like(batch.rollout_logp)  # (N, T)
        rows = torch.arange(batch.n)
        policy.eval()
        if ref_model is not None:
            tokens = no_grad_logp(ref_model, forward, batch, rows, micro_batch_size, batch.ref_logp, dist)
        else:  # LoRA: the base model is the adapter-free policy
            with policy.disable_adapter():
                tokens = no_grad_logp(policy, forward, batch, rows, micro_batch_size, batch.ref_logp, dist)
        flops += perf.training_flops(n_params, 0, no_grad_tokens=tokens)
        if spec.kl_in == "reward":  # r_i -= beta * sum_t KL_t (sequence KL at sampling time)
            kl = ops.masked_sum(ops.kl_penalty(batch.rollout_logp, batch.ref_logp, spec.kl_estimator), batch.mask, -1)  # (N,)
            batch.rewards = batch.rewards - spec.beta * kl.float().cpu()
            metrics["reward/kl_penalty"] = (spec.beta * kl).mean()
    if dist is None:
        adv = compute_advantages(batch.rewards, batch.group_size, spec.advantage, spec.adv_eps).advantages  # on the host
    else:
        parts = dist.all_gather_object(batch.rewards, "rewards for advantages")  # [(N_r,)] in rank order
        start = sum(p.numel() for p in parts[: dist.rank])
        every = compute_advantages(torch.cat(parts), batch.group_size, spec.advantage, spec.adv_eps).advantages
        adv = every[start:start + batch.n].clone()
    batch.advantages_host = adv  # (N,)
    batch.advantages = adv.to(device)  # (N,)
    return flops, metrics
