"""Policy objectives as pure tensor functions: GMPO, the GRPO family (GRPO, Dr. GRPO, DAPO) and GSPO.

Every loss takes ``logp, old_logp`` (B, T), ``advantages`` (B,), ``mask`` (B, T) plus keyword scalars
and returns a :class:`LossOutput`. Notation (DESIGN.md section 3): l_t = logp_t - old_logp_t,
rho_t = exp(l_t), m_t the completion mask, A_i the sequence advantage.

Reduction and gradient accumulation. Each objective is a sum of *units* (one per sequence, or one per
token) divided by a denominator ``count``; ``LossOutput.loss = sum(units) / count`` is the loss of this
batch alone. :func:`reduction_count` gives the denominator of a whole mini-batch, so a trainer that
cuts a mini-batch into micro-batches and back-propagates
``out.loss * out.count / reduction_count(reduction, full_mask, norm_len)`` for each piece gets exactly
the gradient of the uncut mini-batch, however it is cut.

Masking rules (all losses): positions with m_t = 0 may hold any value (even NaN/Inf) and change neither
the loss nor the gradient; a sequence whose mask is all zero is not a sequence at all: it contributes
no unit and is not counted (so it cannot produce NaN either). No function here syncs with the host.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from gmpo.algo.ops import kl_penalty, masked_sum
from gmpo.algo.registry import KL_ESTIMATORS, LOSSES, REDUCTIONS

TOKEN_REDUCTIONS = LOSSES.meta("grpo")["reductions"]  # the reductions of a token-level objective
_EPS = {name: (LOSSES.meta(name)["eps_low"], LOSSES.meta(name)["eps_high"]) for name in LOSSES}  # the one set of clip defaults


@dataclass
class LossOutput:
    """Result of an objective on one batch.

    loss: scalar tensor = sum of units / count (what to back-propagate for this batch alone).
    count: 0-d float tensor, this batch's denominator (sequences for the seq-* reductions, tokens for
        token-mean, sequences * norm_len for seq-mean-token-sum-norm). A tensor, not a Python float,
        so no host sync is needed; it behaves like a float in arithmetic.
    metrics: detached 0-d tensors: clip/frac_low, clip/frac_high, ratio/token_min, ratio/token_max,
        ratio/seq_min, ratio/seq_max (+ policy/kl when a reference is given).
    """

    loss: torch.Tensor
    count: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# shared pieces

def _check(logp, old_logp, advantages, mask, ref_logp, beta, kl_estimator) -> None:
    if logp.dim() != 2:
        raise ValueError(f"logp must be (B, T), got shape {tuple(logp.shape)}")
    B, T = logp.shape
    if old_logp.shape != logp.shape:
        raise ValueError(f"old_logp shape {tuple(old_logp.shape)} != logp shape {tuple(logp.shape)}")
    if mask.shape != logp.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != logp shape {tuple(logp.shape)}")
    if advantages.shape != (B,):
        raise ValueError(f"advantages must be (B,) = ({B},), got shape {tuple(advantages.shape)}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown kl_estimator {kl_estimator!r}; valid: {', '.join(KL_ESTIMATORS)}")
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs ref_logp (log-probs of the reference policy)")
        if ref_logp.shape != logp.shape:
            raise ValueError(f"ref_logp shape {tuple(ref_logp.shape)} != logp shape {tuple(logp.shape)}")


def _valid(mask: torch.Tensor) -> torch.Tensor:
    return mask != 0  # (B, T) bool


def _log_ratio(logp, old_logp, valid) -> torch.Tensor:
    """l_t = logp - old_logp at real tokens, exactly 0 at padding (garbage there never reaches a grad)."""
    l = logp - old_logp.detach()  # (B, T)
    return torch.where(valid, l, torch.zeros((), dtype=l.dtype, device=l.device))


def _token_kl(logp, ref_logp, valid, kind) -> torch.Tensor:
    """Per-token KL estimate (B, T), 0 at padding."""
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    lp = torch.where(valid, logp, zero)  # padding: l_ref = 0 - 0, finite, zero gradient
    ref = torch.where(valid, ref_logp.detach().to(logp.dtype), zero)
    return torch.where(valid, kl_penalty(lp, ref, kind), zero)


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return num / torch.where(den != 0, den, torch.ones((), dtype=den.dtype, device=den.device))


def _seq_lengths(mask: torch.Tensor) -> torch.Tensor:
    return mask.to(torch.float32).sum(-1)  # (B,)


def reduction_count(reduction: str, mask: torch.Tensor, norm_len: int | float | None = None) -> torch.Tensor:
    """The denominator of `reduction` for the batch described by `mask` (B, T), as a 0-d float tensor.

    seq-mean, seq-mean-token-mean: number of sequences with at least one real token;
    token-mean: number of real tokens (sum of the mask);
    seq-mean-token-sum-norm: number of sequences * norm_len (Dr. GRPO's constant length).
    Call it on a whole mini-batch's mask and scale each micro-batch loss by ``out.count / this``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
    if mask.dim() != 2:
        raise ValueError(f"mask must be (B, T), got shape {tuple(mask.shape)}")
    lengths = _seq_lengths(mask)  # (B,)
    n_seq = (lengths != 0).to(torch.float32).sum()
    if reduction == "token-mean":
        return lengths.sum()
    if reduction == "seq-mean-token-sum-norm":
        if norm_len is None or norm_len <= 0:
            raise ValueError("reduction 'seq-mean-token-sum-norm' needs norm_len > 0 (e.g. max_new_tokens)")
        return n_seq * float(norm_len)
    return n_seq


def _reduce_tokens(tok: torch.Tensor, mask: torch.Tensor, reduction: str, norm_len) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of units and count for per-token losses `tok` (B, T) under a GRPO-family reduction."""
    if reduction not in TOKEN_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r} for a token-level loss; valid: {', '.join(TOKEN_REDUCTIONS)}")
    count = reduction_count(reduction, mask, norm_len)
    if reduction == "seq-mean-token-mean":
        # unit_i = (1/|o_i|) sum_t loss_t  (GRPO: 1/G sum_i 1/|o_i| sum_t)
        units = _safe_div(masked_sum(tok, mask, -1), _seq_lengths(mask).to(tok.dtype))  # (B,)
        total = units.sum()
    else:
        # token-mean (DAPO): sum_i sum_t loss_t / sum_i |o_i|;  sum-norm (Dr. GRPO): ... / (G * L)
        total = masked_sum(tok, mask)
    return total, count


def _reduce_seqs(seq: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of per-sequence units `seq` (B,) over non-empty sequences, and their number."""
    nonempty = _seq_lengths(mask) != 0  # (B,)
    total = torch.where(nonempty, seq, torch.zeros((), dtype=seq.dtype, device=seq.device)).sum()
    return total, reduction_count("seq-mean", mask)


@torch.no_grad()
def _ratio_metrics(l: torch.Tensor, valid: torch.Tensor, seq_ratio: torch.Tensor,
                   clip_low: torch.Tensor, clip_high: torch.Tensor) -> dict[str, torch.Tensor]:
    """Clip fractions over real tokens, token-ratio extremes over real tokens, sequence-ratio extremes
    over non-empty sequences (1.0 when there is nothing to measure)."""
    n_tok = valid.sum()
    one = torch.ones((), dtype=torch.float32, device=l.device)
    rho = torch.exp(l.detach().float())  # (B, T)
    inf = torch.full((), float("inf"), device=l.device)
    has_tok = n_tok > 0
    nonempty = valid.any(-1)  # (B,)
    has_seq = nonempty.any()
    s = seq_ratio.detach().float()
    return {
        "clip/frac_low": _safe_div((clip_low & valid).sum().float(), n_tok.float()),
        "clip/frac_high": _safe_div((clip_high & valid).sum().float(), n_tok.float()),
        "ratio/token_min": torch.where(has_tok, torch.where(valid, rho, inf).min(), one),
        "ratio/token_max": torch.where(has_tok, torch.where(valid, rho, -inf).max(), one),
        "ratio/seq_min": torch.where(has_seq, torch.where(nonempty, s, inf).min(), one),
        "ratio/seq_max": torch.where(has_seq, torch.where(nonempty, s, -inf).max(), one),
    }


def _finish(total, count, metrics, kl_tok=None, valid=None) -> LossOutput:
    if kl_tok is not None:
        with torch.no_grad():
            metrics["policy/kl"] = _safe_div(masked_sum(kl_tok.detach().float(), valid), valid.sum().float())
    return LossOutput(loss=_safe_div(total, count.to(total.dtype)), count=count, metrics=metrics)


# ----------------------------------------------------------------------------------------------
# objectives

def gmpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              eps_low: float = _EPS["gmpo"][0], eps_high: float = _EPS["gmpo"][1], ref_logp: torch.Tensor | None = None,
              beta: float = 0.0, kl_estimator: str = "k3") -> LossOutput:
    """Geometric-Mean Policy Optimization (arXiv 2507.20673, Eq. 3-4); reduction: mean over sequences.

    Per-token clipping in log space, one-sided by the sign of A_i (PPO's trust region):
    A_i > 0: l~_t = min(l_t, eps_high); A_i < 0: l~_t = max(l_t, -eps_low). R_i = exp(mean_t l~_t) is the
    geometric mean of the clipped token ratios; loss_i = -A_i R_i. Clipped tokens keep their place in
    the mean as constants; the gradient flows only through unclipped tokens. With beta > 0 the unit is
    loss_i + beta * mean_t KL_t (the sequence's token-mean KL, matching the sequence-level objective).
    A_i = 0 contributes 0 (its log-ratios are clamped to [-eps_low, eps_high] only to keep R_i finite).
    """
    _check(logp, old_logp, advantages, mask, ref_logp, beta, kl_estimator)
    valid = _valid(mask)  # (B, T)
    l = _log_ratio(logp, old_logp, valid)  # (B, T)
    A = advantages.detach().to(l.dtype)[:, None]  # (B, 1)
    clip_high = (A >= 0) & (l > eps_high)  # Eq. 3: A>0 -> min(rho, e^eps_high) (A=0: keep R finite)
    clip_low = (A <= 0) & (l < -eps_low)  # Eq. 3: A<0 -> max(rho, e^-eps_low)
    l_clip = torch.where(clip_high, eps_high, torch.where(clip_low, -eps_low, l))  # (B, T) Eq. 4, in log space
    mean_l = _safe_div(masked_sum(l_clip, mask, -1), _seq_lengths(mask).to(l.dtype))  # (B,) Eq. 4: 1/|o_i| sum_t
    R = torch.exp(mean_l)  # (B,) Eq. 4: geometric mean of clipped token ratios
    seq = -A[:, 0] * R  # (B,) Eq. 3: -(A_i * prod_t rho~_t^(1/|o_i|))
    kl_tok = None
    if beta != 0.0:
        kl_tok = _token_kl(logp, ref_logp, valid, kl_estimator)  # (B, T)
        seq = seq + beta * _safe_div(masked_sum(kl_tok, mask, -1), _seq_lengths(mask).to(l.dtype))
    total, count = _reduce_seqs(seq, mask)  # Eq. 3: 1/G sum_i (mean over sequences)
    metrics = _ratio_metrics(l, valid, R, clip_low & (A < 0), clip_high & (A > 0))
    return _finish(total, count, metrics, kl_tok, valid)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              eps_low: float = _EPS["grpo"][0], eps_high: float = _EPS["grpo"][1], reduction: str = "seq-mean-token-mean",
              norm_len: int | float | None = None, ref_logp: torch.Tensor | None = None,
              beta: float = 0.0, kl_estimator: str = "k3") -> LossOutput:
    """GRPO-family token-level PPO-clip objective (GRPO: arXiv 2402.03300 Eq. 3; DAPO: 2503.14476
    Sec. 3.1-3.3; Dr. GRPO: 2503.20783 Sec. 3).

    loss_t = -min(rho_t A_i, clip(rho_t, 1 - eps_low, 1 + eps_high) A_i) + beta * KL_t, reduced by
    `reduction`: seq-mean-token-mean (GRPO: mean over sequences of each sequence's token mean),
    token-mean (DAPO: over all tokens of the batch), seq-mean-token-sum-norm (Dr. GRPO: token sum /
    (sequences * norm_len)). Gradients are zero exactly at tokens where the clip is active.
    The reported sequence ratio is the arithmetic token mean of rho_t, what multiplies A_i here.
    """
    _check(logp, old_logp, advantages, mask, ref_logp, beta, kl_estimator)
    if reduction not in TOKEN_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(TOKEN_REDUCTIONS)}")
    valid = _valid(mask)  # (B, T)
    l = _log_ratio(logp, old_logp, valid)  # (B, T)
    rho = torch.exp(l)  # (B, T)
    A = advantages.detach().to(l.dtype)[:, None]  # (B, 1)
    # PPO min(): A>0 -> A * min(rho, 1+eps_high); A<0 -> A * max(rho, 1-eps_low); clipped = constant
    clip_high = (A > 0) & (rho > 1.0 + eps_high)
    clip_low = (A < 0) & (rho < 1.0 - eps_low)
    rho_clip = torch.where(clip_high, 1.0 + eps_high, torch.where(clip_low, 1.0 - eps_low, rho))  # (B, T)
    tok = -A * rho_clip  # (B, T) GRPO Eq. 3: -min(rho A, clip(rho, 1-eps, 1+eps) A)
    kl_tok = None
    if beta != 0.0:
        kl_tok = _token_kl(logp, ref_logp, valid, kl_estimator)  # (B, T)
        tok = tok + beta * kl_tok  # GRPO Eq. 3: - beta * D_KL, per token
    total, count = _reduce_tokens(tok, mask, reduction, norm_len)
    seq_ratio = _safe_div(masked_sum(rho, mask, -1), _seq_lengths(mask).to(l.dtype))  # (B,) arithmetic mean
    metrics = _ratio_metrics(l, valid, seq_ratio, clip_low, clip_high)
    return _finish(total, count, metrics, kl_tok, valid)


def gspo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              eps_low: float = _EPS["gspo"][0], eps_high: float = _EPS["gspo"][1], ref_logp: torch.Tensor | None = None,
              beta: float = 0.0, kl_estimator: str = "k3") -> LossOutput:
    """Group Sequence Policy Optimization (arXiv 2507.18071, Sec. 4.1); reduction: mean over sequences.

    s_i = exp(mean_t l_t) (no per-token clip), loss_i = -min(s_i A_i, clip(s_i, 1 - eps_low,
    1 + eps_high) A_i): the clip acts after averaging, on the whole sequence, with a tiny eps.
    With beta > 0 the unit adds beta * mean_t KL_t. Clip fractions count the tokens of clipped sequences.
    """
    _check(logp, old_logp, advantages, mask, ref_logp, beta, kl_estimator)
    valid = _valid(mask)  # (B, T)
    l = _log_ratio(logp, old_logp, valid)  # (B, T)
    A = advantages.detach().to(l.dtype)  # (B,)
    s = torch.exp(_safe_div(masked_sum(l, mask, -1), _seq_lengths(mask).to(l.dtype)))  # (B,) GSPO s_i = (pi/pi_old)^(1/|o_i|)
    clip_high = (A > 0) & (s > 1.0 + eps_high)  # (B,)
    clip_low = (A < 0) & (s < 1.0 - eps_low)  # (B,)
    s_clip = torch.where(clip_high, 1.0 + eps_high, torch.where(clip_low, 1.0 - eps_low, s))  # (B,)
    seq = -A * s_clip  # (B,) GSPO J: -min(s_i A_i, clip(s_i, 1-eps, 1+eps) A_i)
    kl_tok = None
    if beta != 0.0:
        kl_tok = _token_kl(logp, ref_logp, valid, kl_estimator)  # (B, T)
        seq = seq + beta * _safe_div(masked_sum(kl_tok, mask, -1), _seq_lengths(mask).to(l.dtype))
    total, count = _reduce_seqs(seq, mask)  # GSPO J: 1/G sum_i
    B, T = l.shape
    metrics = _ratio_metrics(l, valid, s, clip_low[:, None].expand(B, T), clip_high[:, None].expand(B, T))
    return _finish(total, count, metrics, kl_tok, valid)


LossFn = Callable[..., LossOutput]


def get_loss(name: str) -> LossFn:
    """The objective registered as `name` in :data:`gmpo.algo.registry.LOSSES` (ValueError listing them otherwise).

    dr_grpo and dapo are presets over grpo_loss: resolve them with :func:`gmpo.algo.presets.resolve`.
    """
    return LOSSES.get(name)
