"""Statistics of ``gmpo ab report``: intervals and tests from statsmodels and scipy, nothing hand-rolled.

- a rate's interval: Wilson score interval (``proportion_confint(method="wilson")``; Wilson 1927);
- the difference of two independent rates: Newcombe's hybrid score interval (method 10 of Newcombe 1998,
  ``confint_proportions_2indep(method="newcomb")``) and the score test of equal rates
  (``test_proportions_2indep(method="score")``, Miettinen & Nurminen 1985);
- when the arms answered the same prompts: McNemar's test on the discordant pairs (exact binomial when
  fewer than 25 discordant pairs), which uses the pairing instead of treating the arms as independent;
- latency: medians and p95 per arm and the Mann-Whitney U test (two-sided);
- sample-ratio mismatch (SRM): a chi-square goodness-of-fit test of the assigned counts against the design
  weights (flagged below p = 0.001: a broken split invalidates every other number);
- sample size: the per-arm n needed to detect the observed difference at the given power
  (``NormalIndPower`` on Cohen's h), for the "sample too small for the effect seen" warning.

The tests are fixed-horizon: their error rates hold for one look at the data. Looking repeatedly and
stopping at the first p < alpha inflates false positives; the report says so next to the p-value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Comparison:
    """Arm B against arm A (B - A)."""

    p_a: float
    p_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str
    required_n: float | None  # per arm, to detect |diff| at the power asked (None when diff == 0)

    def significant(self, alpha: float) -> bool:
        """Whether the test rejects equal rates at level ``alpha``."""
        return self.p_value < alpha


def wilson(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a rate (``(nan, nan)`` when n == 0)."""
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return float("nan"), float("nan")
    lo, hi = proportion_confint(successes, n, alpha=alpha, method="wilson")
    return float(lo), float(hi)


def required_n(p_a: float, p_b: float, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Per-arm sample size to detect p_a vs p_b (two-sided, equal arms); None when the rates are equal."""
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    h = abs(float(proportion_effectsize(p_b, p_a)))
    if h < 1e-12:
        return None
    return float(NormalIndPower().solve_power(effect_size=h, alpha=alpha, power=power, ratio=1.0))


def score_test(s_a, n_a, s_b, n_b):
    """Two-sided p-value of the score test of equal rates (scalars or numpy arrays of counts: one call
    for many simulated experiments). All-success or all-failure pairs get p = 1 (no evidence either way)."""
    import numpy as np
    from statsmodels.stats.proportion import test_proportions_2indep

    s_a, n_a, s_b, n_b = (np.asarray(x, dtype=float) for x in (s_a, n_a, s_b, n_b))
    degenerate = (s_a + s_b == 0) | (s_a + s_b == n_a + n_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = test_proportions_2indep(np.where(degenerate, 1, s_b), n_b, np.where(degenerate, 1, s_a), n_a,
                                    method="score", compare="diff").pvalue
    p = np.where(degenerate, 1.0, p)
    return float(p) if p.ndim == 0 else p


def compare_rates(s_a: int, n_a: int, s_b: int, n_b: int, alpha: float = 0.05, power: float = 0.8) -> Comparison:
    """Independent arms: Newcombe interval of p_b - p_a and the two-sided score test."""
    from statsmodels.stats.proportion import confint_proportions_2indep

    if n_a == 0 or n_b == 0:
        raise ValueError(f"both arms need requests to compare (got n={n_a} and n={n_b})")
    p_a, p_b = s_a / n_a, s_b / n_b
    lo, hi = confint_proportions_2indep(s_b, n_b, s_a, n_a, method="newcomb", compare="diff", alpha=alpha)
    return Comparison(p_a, p_b, p_b - p_a, float(lo), float(hi), score_test(s_a, n_a, s_b, n_b),
                      "score test (independent arms)", required_n(p_a, p_b, alpha, power))


def compare_paired(pairs: list[tuple[int, int]], alpha: float = 0.05) -> dict:
    """McNemar's test on (a_success, b_success) pairs of the same prompts; exact below 25 discordant pairs."""
    from statsmodels.stats.contingency_tables import mcnemar

    table = [[0, 0], [0, 0]]
    for a, b in pairs:
        table[int(bool(a))][int(bool(b))] += 1
    discordant = table[0][1] + table[1][0]
    res = mcnemar(table, exact=discordant < 25, correction=True)
    p_value = 1.0 if discordant == 0 else float(res.pvalue)
    return {"pairs": len(pairs), "table": table, "b_only": table[0][1], "a_only": table[1][0],
            "p_value": p_value, "exact": discordant < 25, "significant": p_value < alpha}


def srm(counts: dict[str, int], weights: dict[str, float], threshold: float = 0.001) -> dict:
    """Sample-ratio mismatch: chi-square test of assigned counts against the design weights."""
    from scipy.stats import chisquare

    names = [a for a in weights if a in counts or weights[a] > 0]
    observed = [counts.get(a, 0) for a in names]
    total, wsum = sum(observed), sum(weights[a] for a in names)
    if total == 0:
        return {"p_value": float("nan"), "mismatch": False, "observed": {}, "expected": {}}
    expected = [total * weights[a] / wsum for a in names]
    p_value = float(chisquare(observed, expected).pvalue)
    return {"p_value": p_value, "mismatch": p_value < threshold, "threshold": threshold,
            "observed": dict(zip(names, observed)), "expected": {a: round(e, 1) for a, e in zip(names, expected)}}


def latency(a: list[float], b: list[float]) -> dict:
    """Median and p95 of each arm's latencies and the two-sided Mann-Whitney U p-value."""
    import numpy as np
    from scipy.stats import mannwhitneyu

    def summary(x):
        return {"n": len(x), "median": float(np.median(x)) if x else float("nan"),
                "p95": float(np.percentile(x, 95)) if x else float("nan")}

    p_value = float(mannwhitneyu(a, b, alternative="two-sided").pvalue) if a and b else float("nan")
    return {"a": summary(a), "b": summary(b), "p_value": p_value}


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (several arms against one control)."""
    from statsmodels.stats.multitest import multipletests

    if len(p_values) <= 1:
        return list(p_values)
    return [float(p) for p in multipletests(p_values, method="holm")[1]]


def recommendation(name_a: str, name_b: str, cmp: Comparison, p_value: float, alpha: float, n_b: int,
                   srm_mismatch: bool) -> str:
    """One line: ship / keep / inconclusive (with the sample still needed) / do not trust (SRM)."""
    if srm_mismatch:
        return (f"do not decide: the traffic split does not match the design (sample-ratio mismatch), so the "
                f"comparison of {name_b} with {name_a} is not trustworthy; fix the assignment first")
    if p_value < alpha:
        better = cmp.diff > 0
        return (f"{'ship' if better else 'keep'} {name_b if better else name_a}: {name_b} is "
                f"{'better' if better else 'worse'} than {name_a} by {abs(cmp.diff):.3f} "
                f"(95% CI {cmp.ci_low:+.3f} to {cmp.ci_high:+.3f}, p={p_value:.2g})")
    if cmp.required_n is not None and n_b < cmp.required_n:
        more = math.ceil(cmp.required_n - n_b)
        return (f"inconclusive: no significant difference yet (p={p_value:.2g}); the difference seen "
                f"({cmp.diff:+.3f}) needs about {math.ceil(cmp.required_n)} requests per arm, {more} more")
    if cmp.required_n is None:
        return (f"no difference seen: {name_b} and {name_a} have the same rate ({cmp.p_a:.3f}); keep {name_a} unless "
                f"{name_b} is better on other grounds")
    return (f"no difference detected between {name_b} and {name_a} (p={p_value:.2g}; the sample was large enough "
            f"for the difference seen): keep {name_a} unless {name_b} is better on other grounds")
