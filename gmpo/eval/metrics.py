"""Evaluation metrics: Pass@1, mean@K, the unbiased pass@k estimator, and the markdown table."""
from __future__ import annotations

import math
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021, Codex paper):

    pass@k = 1 - C(n - c, k) / C(n, k), computed as a stable product 1 - prod_{i=n-c+1}^{n} (1 - k / i).
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def ks_for(samples: int) -> list[int]:
    """The k reported for ``samples`` per problem: powers of two up to ``samples`` (1, 2, 4, ...)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    return [2 ** i for i in range(int(math.log2(samples)) + 1)]


def summarize(verdicts: Sequence[Sequence[bool]], samples: int) -> dict[str, float]:
    """Metrics of one benchmark from per-problem verdict lists (each of length ``samples``).

    ``samples == 1`` (greedy): {"pass@1": accuracy}. ``samples = K > 1``: {"mean@K": mean accuracy over
    all samples, "pass@k": unbiased pass@k for k = 1, 2, 4, ... <= K}. Empty input gives NaNs.
    """
    ks = ks_for(samples)
    for v in verdicts:
        if len(v) != samples:
            raise ValueError(f"expected {samples} verdicts per problem, got {len(v)}")
    out: dict[str, float] = {}
    if samples > 1:
        out[f"mean@{samples}"] = (sum(sum(v) for v in verdicts) / (len(verdicts) * samples)
                                  if verdicts else float("nan"))
    for k in ks:
        out[f"pass@{k}"] = (sum(pass_at_k(samples, sum(v), k) for v in verdicts) / len(verdicts)
                            if verdicts else float("nan"))
    return out


def primary_metric(samples: int) -> str:
    """The headline accuracy: ``pass@1`` (greedy, the paper's setting) or ``mean@K`` when sampling."""
    return "pass@1" if samples == 1 else f"mean@{samples}"


def average(per_benchmark: dict[str, dict[str, float]]) -> dict[str, float]:
    """Unweighted mean over benchmarks of each metric (the papers' "Avg." column)."""
    keys = [k for k in next(iter(per_benchmark.values()), {}) if k != "n"]
    return {k: sum(m[k] for m in per_benchmark.values()) / len(per_benchmark) for k in keys}


def markdown_table(per_benchmark: dict[str, dict[str, float]], counts: dict[str, int] | None = None) -> str:
    """A markdown table: one row per benchmark plus the average, metrics in percent."""
    if not per_benchmark:
        return "(no benchmarks)"
    keys = [k for k in next(iter(per_benchmark.values())) if k != "n"]
    head = "| benchmark | n | " + " | ".join(keys) + " |"
    sep = "|---|---:|" + "---:|" * len(keys)
    rows = [head, sep]
    for name, m in per_benchmark.items():
        n = (counts or {}).get(name, "")
        rows.append(f"| {name} | {n} | " + " | ".join(f"{100 * m[k]:.1f}" for k in keys) + " |")
    if len(per_benchmark) > 1:
        avg = average(per_benchmark)
        total = sum((counts or {}).values()) if counts else ""
        rows.append(f"| **average** | {total} | " + " | ".join(f"{100 * avg[k]:.1f}" for k in keys) + " |")
    return "\n".join(rows)
