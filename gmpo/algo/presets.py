"""Named algorithms as presets over the objectives in gmpo.losses and the advantage modes.

The trainer never branches on an algorithm name: it calls :func:`resolve` once and uses the returned
:class:`AlgorithmSpec` (which loss with which keyword arguments, which reduction and advantage mode,
whether DAPO's dynamic sampling and soft overlong penalty are on).

| preset   | loss | eps_low / eps_high | advantage | reduction               | extras                     |
|----------|------|--------------------|-----------|-------------------------|----------------------------|
| gmpo     | gmpo | 0.4 / 0.4 (log)    | group     | seq-mean                |                            |
| grpo     | grpo | 0.2 / 0.2          | group     | seq-mean-token-mean     |                            |
| dr_grpo  | grpo | 0.2 / 0.2          | none      | seq-mean-token-sum-norm | norm_len = max_new_tokens  |
| dapo     | grpo | 0.2 / 0.28         | group     | token-mean              | dynamic sampling, overlong |
| gspo     | gspo | 3e-4 / 4e-4        | group     | seq-mean                |                            |

Explicit config values (non-empty strings, non-None eps, norm_len > 0, true booleans) override a preset.
The tables themselves (what each loss accepts, the clip defaults, the presets) are in
:mod:`gmpo.algo.registry`; :func:`resolve` reads them and never branches on a name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gmpo.algo.losses import LossFn, get_loss
from gmpo.algo.registry import (ADVANTAGE_MODES, FILTER_METRICS, KL_ESTIMATORS, KL_PLACEMENTS, LOSSES, PRESETS,
                                preset)


@dataclass
class AlgorithmSpec:
    """Everything the trainer needs to know about the algorithm, with no name branches left.

    loss: a name in :data:`gmpo.algo.registry.LOSSES`; loss_kwargs: keyword arguments for it (clip bounds,
    and whichever of reduction, norm_len, beta, kl_estimator the loss accepts); reduction: for
    :func:`gmpo.algo.losses.reduction_count`; advantage: mode for :func:`gmpo.algo.advantages.compute_advantages`;
    dynamic_sampling / overlong / filter_metric: DAPO's extras.
    """

    loss: str
    loss_kwargs: dict[str, Any]
    reduction: str
    advantage: str
    dynamic_sampling: bool
    overlong: bool
    name: str = ""  # the preset it came from
    norm_len: int | None = None  # constant length of seq-mean-token-sum-norm (else None)
    adv_eps: float = 1e-4  # eps of the std denominators
    beta: float = 0.0  # KL coefficient (in the loss or in the reward, see kl_in)
    kl_estimator: str = "k3"  # k1 | k2 | k3
    kl_in: str = "loss"  # loss | reward
    overlong_buffer: int = 0  # L_buf of the soft overlong penalty
    overlong_penalty: float = 0.0  # penalty at the hard limit
    filter_metric: str = "accuracy"  # what dynamic sampling compares inside a group (see gmpo.train.collect)

    @property
    def loss_fn(self) -> LossFn:
        """The objective function (``self.loss_fn(logp, old_logp, adv, mask, ref_logp=..., **self.loss_kwargs)``)."""
        return get_loss(self.loss)

    @property
    def zero_advantage_inert(self) -> bool:
        """True when a completion with advantage exactly 0 adds nothing to the loss or its gradient.

        Every objective here is a sum of units ``-A_i * f(ratios)`` plus ``beta * KL`` when the KL sits in
        the loss; with no KL term in the loss a unit with A_i = 0 is exactly 0 for any log-probs, so the
        trainer may leave such rows out of the forward and backward (their denominators still count).
        """
        return not (self.kl_in == "loss" and self.beta != 0.0)

    @property
    def needs_reference(self) -> bool:
        """True when a reference policy must be kept (beta != 0, in the loss or in the reward)."""
        return self.beta != 0.0


def _choice(value: str, choices, what: str) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(choices)}")
    return value


def resolve(algo_cfg: Any, max_new_tokens: int, dynamic_sampling: bool = False) -> AlgorithmSpec:
    """Turn `algo_cfg` (gmpo.config.AlgorithmConfig) into an AlgorithmSpec.

    The preset named by ``algo_cfg.loss`` gives the defaults; explicit values override them:
    advantage (non-empty), eps_low / eps_high (not None), reduction (non-empty; one the loss accepts),
    norm_len (> 0; else max_new_tokens for seq-mean-token-sum-norm), filter_metric (non-empty).
    ``dynamic_sampling`` (the rollout setting) and ``algo_cfg.overlong.enabled`` switch those extras on for
    any preset; dapo has them on.
    """
    name = getattr(algo_cfg, "loss", "gmpo")
    p = preset(name)  # UnknownName (a ValueError) listing the presets
    loss = p["loss"]
    accepts = LOSSES.meta(loss)
    advantage = _choice(getattr(algo_cfg, "advantage", "") or p["advantage"], ADVANTAGE_MODES, "advantage mode")
    eps_low, eps_high = getattr(algo_cfg, "eps_low", None), getattr(algo_cfg, "eps_high", None)
    eps_low = p["eps_low"] if eps_low is None else float(eps_low)
    eps_high = p["eps_high"] if eps_high is None else float(eps_high)
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"clip bounds must be >= 0, got eps_low={eps_low}, eps_high={eps_high}")
    reduction = getattr(algo_cfg, "reduction", "") or p["reduction"]
    if reduction not in accepts["reductions"]:
        raise ValueError(f"algorithm.reduction={reduction!r} does not apply to {name} (loss '{loss}'); "
                         f"valid: {', '.join(accepts['reductions'])}")
    norm_len = None
    if reduction == "seq-mean-token-sum-norm":
        norm_len = int(getattr(algo_cfg, "norm_len", 0) or 0) or int(max_new_tokens)
        if norm_len <= 0:
            raise ValueError(f"seq-mean-token-sum-norm needs norm_len > 0 or max_new_tokens > 0, got {max_new_tokens}")
    beta = float(getattr(algo_cfg, "beta", 0.0) or 0.0)
    kl_estimator = _choice(getattr(algo_cfg, "kl_estimator", "k3") or "k3", KL_ESTIMATORS, "kl_estimator")
    kl_in = _choice(getattr(algo_cfg, "kl_in", "loss") or "loss", KL_PLACEMENTS, "kl_in")
    filter_metric = _choice(getattr(algo_cfg, "filter_metric", "") or p["filter_metric"], FILTER_METRICS,
                            "dynamic-sampling filter metric")
    offered = dict(eps_low=eps_low, eps_high=eps_high, reduction=reduction, norm_len=norm_len,
                   beta=beta if kl_in == "loss" else 0.0, kl_estimator=kl_estimator)
    kwargs = {k: offered[k] for k in accepts["kwargs"]}  # what this loss takes, from its registry entry
    overlong_cfg = getattr(algo_cfg, "overlong", None)
    overlong = bool(p["overlong"] or (overlong_cfg is not None and overlong_cfg.enabled))
    return AlgorithmSpec(
        loss=loss, loss_kwargs=kwargs, reduction=reduction, advantage=advantage,
        dynamic_sampling=bool(p["dynamic_sampling"] or dynamic_sampling), overlong=overlong,
        name=name, norm_len=norm_len, adv_eps=float(getattr(algo_cfg, "adv_eps", 1e-4)),
        beta=beta, kl_estimator=kl_estimator, kl_in=kl_in,
        overlong_buffer=int(getattr(overlong_cfg, "buffer", 0)) if overlong_cfg is not None else 0,
        overlong_penalty=float(getattr(overlong_cfg, "penalty", 0.0)) if overlong_cfg is not None else 0.0,
        filter_metric=filter_metric,
    )


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO soft overlong punishment (arXiv 2503.14476, Sec. 3.4), (N,) float32, values in [-penalty, 0].

    0 for len <= max_len - buffer; linear (max_len - buffer - len) / buffer * penalty inside the buffer,
    reaching -penalty at len = max_len (and staying there beyond).
    """
    if buffer <= 0 or buffer > max_len:
        raise ValueError(f"overlong buffer must be in (0, max_len={max_len}], got {buffer}")
    if penalty < 0:
        raise ValueError(f"overlong penalty must be >= 0, got {penalty}")
    length = lengths.to(torch.float32)
    r = (float(max_len - buffer) - length) / float(buffer) * float(penalty)  # DAPO R_length, middle case: (L_max - L_buf - |y|) / L_buf
    return r.clamp(min=-float(penalty), max=0.0)


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(P,) bool: groups of `group_size` consecutive rewards that are not all equal (DAPO dynamic
    sampling keeps these: an all-equal group has zero advantage and gives no gradient)."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"number of rewards ({rewards.shape[0]}) is not a multiple of group_size ({group_size})")
    r = rewards.view(-1, group_size)  # (P, G)
    return r.amax(-1) != r.amin(-1)


__all__ = ["AlgorithmSpec", "PRESETS", "resolve", "overlong_penalty", "informative_groups"]
