"""The algorithm name tables (torch-free, so config validation and ``--help`` read them without importing
torch): objectives with what the config needs to know about each, algorithm presets over them, advantage
modes, reductions and KL estimators.

Clip defaults live here and only here: a loss's ``eps_low``/``eps_high`` metadata are its defaults (the loss
functions' keyword defaults read them), and a preset states eps only where it departs from its loss (DAPO's
clip-higher).
"""
from __future__ import annotations

from gmpo.registry import Registry

REDUCTIONS = ("seq-mean", "seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
ADVANTAGE_MODES = ("group", "none", "leave_one_out", "batch")
KL_ESTIMATORS = ("k1", "k2", "k3")
KL_PLACEMENTS = ("loss", "reward")
FILTER_METRICS = ("accuracy", "reward")  # what DAPO dynamic sampling compares inside a group

LOSSES = Registry("loss")
LOSSES.add("gmpo", "gmpo.algo.losses:gmpo_loss", help="geometric mean of token ratios, per-token log-space clip",
           eps_low=0.4, eps_high=0.4, reductions=("seq-mean",), kwargs=("eps_low", "eps_high", "beta", "kl_estimator"))
LOSSES.add("grpo", "gmpo.algo.losses:grpo_loss", help="token-level PPO clip (GRPO, Dr. GRPO, DAPO)",
           eps_low=0.2, eps_high=0.2, reductions=REDUCTIONS[1:],
           kwargs=("eps_low", "eps_high", "reduction", "norm_len", "beta", "kl_estimator"))
LOSSES.add("gspo", "gmpo.algo.losses:gspo_loss", help="sequence ratio exp(mean log-ratio), clipped after averaging",
           eps_low=3e-4, eps_high=4e-4, reductions=("seq-mean",), kwargs=("eps_low", "eps_high", "beta", "kl_estimator"))

PRESETS = Registry("algorithm")
PRESETS.add("gmpo", dict(loss="gmpo", advantage="group", reduction="seq-mean"), help="GMPO (arXiv 2507.20673)")
PRESETS.add("grpo", dict(loss="grpo", advantage="group", reduction="seq-mean-token-mean"), help="GRPO (arXiv 2402.03300)")
PRESETS.add("dr_grpo", dict(loss="grpo", advantage="none", reduction="seq-mean-token-sum-norm"),
            help="Dr. GRPO (arXiv 2503.20783): no std normalisation, constant-length sum")
PRESETS.add("dapo", dict(loss="grpo", advantage="group", reduction="token-mean", eps_high=0.28, dynamic_sampling=True,
                         overlong=True), help="DAPO (arXiv 2503.14476): clip-higher, token-mean, dynamic sampling, overlong penalty")
PRESETS.add("gspo", dict(loss="gspo", advantage="group", reduction="seq-mean"), help="GSPO (arXiv 2507.18071)")

PRESET_DEFAULTS = dict(dynamic_sampling=False, overlong=False, filter_metric="accuracy")


def preset(name: str) -> dict:
    """The full settings of preset `name`: loss, eps_low/eps_high (the loss's unless the preset states them),
    advantage, reduction, dynamic_sampling, overlong, filter_metric."""
    p = {**PRESET_DEFAULTS, **PRESETS.get(name)}
    loss = LOSSES.meta(p["loss"])
    p.setdefault("eps_low", loss["eps_low"])
    p.setdefault("eps_high", loss["eps_high"])
    return p


def eps_text() -> str:
    """``gmpo 0.4/0.4, grpo 0.2/0.2, ...`` (eps_low/eps_high per preset) for help texts."""
    return ", ".join(f"{n} {preset(n)['eps_low']:g}/{preset(n)['eps_high']:g}" for n in PRESETS)
