"""Scalar per-completion advantages from group rewards (DESIGN.md section 3).

Rewards arrive flat, (N,) with N = P prompts * G completions, the G completions of a prompt adjacent.
A group whose rewards are all equal carries no learning signal: its advantages are exactly 0 in every
mode and it is counted in ``zero_std`` / ``frac_zero_std``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gmpo.algo.registry import ADVANTAGE_MODES



@dataclass
class AdvantageOutput:
    """advantages (N,) float32; zero_std (P,) bool: groups whose rewards are all equal;
    frac_zero_std: 0-d float32 tensor, the fraction of such groups."""

    advantages: torch.Tensor
    zero_std: torch.Tensor
    frac_zero_std: torch.Tensor


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    n = rewards.shape[0]
    if n % group_size:
        raise ValueError(f"number of rewards ({n}) is not a multiple of group_size ({group_size})")
    return rewards.to(torch.float32).view(n // group_size, group_size)  # (P, G)


def compute_advantages(rewards: torch.Tensor, group_size: int, mode: str = "group",
                       eps: float = 1e-4) -> AdvantageOutput:
    """Advantages for `rewards` (N,) laid out as groups of `group_size` consecutive completions.

    group:         A_i = (r_i - mean_g r) / (std_g r + eps), std with Bessel's correction (GRPO).
    none:          A_i = r_i - mean_g r (Dr. GRPO: no std division).
    leave_one_out: A_i = r_i - mean_{j != i} r_j (RLOO; needs group_size >= 2).
    batch:         A_i = (r_i - mean_g r) / (std_batch r + eps), std of all N rewards (Bessel).
    All-equal groups get exactly 0 in every mode and are counted.
    """
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"unknown advantage mode {mode!r}; valid: {', '.join(ADVANTAGE_MODES)}")
    r = _groups(rewards, group_size)  # (P, G)
    P, G = r.shape
    zero_std = r.amax(-1) == r.amin(-1)  # (P,) all rewards equal
    mean = r.mean(-1, keepdim=True)  # (P, 1)
    if mode == "group":
        std = r.std(-1, keepdim=True) if G > 1 else torch.zeros_like(mean)  # (P, 1) Bessel
        adv = (r - mean) / (std + eps)
    elif mode == "none":
        adv = r - mean
    elif mode == "leave_one_out":
        if G < 2:
            raise ValueError("advantage mode 'leave_one_out' needs group_size >= 2")
        adv = r - (r.sum(-1, keepdim=True) - r) / (G - 1)  # = G/(G-1) * (r - mean)
    else:  # batch
        flat = r.reshape(-1)
        std = flat.std() if flat.numel() > 1 else torch.zeros((), device=r.device)  # Bessel over N
        adv = (r - mean) / (std + eps)
    adv = torch.where(zero_std[:, None], torch.zeros((), device=r.device), adv)  # exact 0, no float residue
    frac = zero_std.to(torch.float32).mean() if P else torch.zeros((), device=r.device)
    return AdvantageOutput(advantages=adv.reshape(-1), zero_std=zero_std, frac_zero_std=frac)
