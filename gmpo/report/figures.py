"""PNG figures of a comparison (matplotlib, Agg backend): one mean line per algorithm with a band over seeds."""
from __future__ import annotations

from pathlib import Path

from gmpo.report.table import Run

# (file stem, metric key, title, y label, log scale)
FIGURES = [
    ("reward", "reward/mean", "Training reward", "reward/mean", False),
    ("accuracy", "eval/accuracy", "Held-out accuracy", "accuracy", False),
    ("entropy", "policy/entropy", "Policy entropy", "nats / token", False),
    ("kl", "policy/kl", "KL to the initial policy", "KL", False),
    ("grad_norm", "grad/norm", "Gradient norm (before clipping)", "L2 norm", True),
    ("loss", "loss/value", "Loss", "loss", False),
]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def aggregate(runs: list[Run], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """(steps, mean, min, max) over the runs at every step where at least one run logged `key`."""
    at: dict[int, list[float]] = {}
    for r in runs:
        for x, y in zip(*r.series(key)):
            at.setdefault(x, []).append(y)
    steps = sorted(at)
    return (steps, [sum(at[s]) / len(at[s]) for s in steps], [min(at[s]) for s in steps], [max(at[s]) for s in steps])


def _by_algo(runs: list[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for r in runs:
        out.setdefault(r.algo, []).append(r)
    return out


def _colors(algos: list[str]) -> dict[str, str]:
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
    return {a: palette[i % len(palette)] for i, a in enumerate(algos)}


def _plain_log_labels(ax) -> None:
    """Log-axis tick labels as plain numbers (0.5, 1, 20); minor ticks labelled only where they fit:
    all of them below ~0.7 decades, the 2x and 5x ones up to ~2.5 decades, none beyond."""
    import math

    from matplotlib.ticker import FuncFormatter

    lo, hi = ax.get_ylim()
    span = math.log10(hi / lo) if lo > 0 and hi > lo else 99.0

    def minor(v, _):
        mant = round(v / 10 ** math.floor(math.log10(v) + 1e-9), 6) if v > 0 else 0
        keep = span < 0.7 or (span < 2.5 and mant in (2.0, 5.0))
        return f"{v:g}" if keep else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def plot_metric(runs: list[Run], key: str, path: str | Path, title: str, ylabel: str, logy: bool = False) -> bool:
    """Mean of `key` per step for each algorithm, shaded from the min to the max over seeds. False: no data."""
    groups = _by_algo(runs)
    colors = _colors(list(groups))
    data = {a: aggregate(rs, key) for a, rs in groups.items()}
    if not any(d[0] for d in data.values()):
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for a, (xs, mean, lo, hi) in data.items():
        if not xs:
            continue
        n = len(groups[a])
        marker = "o" if len(xs) <= 12 else None
        ax.plot(xs, mean, color=colors[a], marker=marker, ms=3, lw=1.6, label=f"{a} (mean of {n} seed{'s' * (n > 1)})")
        if n > 1:
            ax.fill_between(xs, lo, hi, color=colors[a], alpha=0.18, lw=0)
    if logy and all(v > 0 for d in data.values() for v in d[2]):
        ax.set_yscale("log")
        _plain_log_labels(ax)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_ratio(runs: list[Run], path: str | Path) -> bool:
    """Per-step min and max token ratio on a log scale (the paper's Figure 1 view). False: no data."""
    groups = _by_algo(runs)
    colors = _colors(list(groups))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    any_data = False
    for a, rs in groups.items():
        xs_hi, hi, _, hi_max = aggregate(rs, "ratio/token_max")
        xs_lo, lo, lo_min, _ = aggregate(rs, "ratio/token_min")
        if not xs_hi or not xs_lo:
            continue
        any_data = True
        ax.plot(xs_hi, hi, color=colors[a], lw=1.6, label=f"{a} max")
        ax.plot(xs_lo, lo, color=colors[a], lw=1.6, ls="--", label=f"{a} min")
        if xs_hi == xs_lo:
            ax.fill_between(xs_hi, lo, hi, color=colors[a], alpha=0.12, lw=0)
        if len(rs) > 1:  # the most extreme seed, dotted
            ax.plot(xs_hi, hi_max, color=colors[a], lw=0.8, ls=":")
            ax.plot(xs_lo, lo_min, color=colors[a], lw=0.8, ls=":")
    if not any_data:
        plt.close(fig)
        return False
    ax.axhline(1.0, color="black", lw=0.8, alpha=0.5)
    ax.set_yscale("log")
    _plain_log_labels(ax)
    ax.set_title("Token importance ratio per step: min and max (log scale)")
    ax.set_xlabel("step")
    ax.set_ylabel("pi_theta / pi_old")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_figures(runs: list[Run], out_dir: str | Path) -> list[tuple[str, Path]]:
    """Write every figure with data into `out_dir`; return [(title, path)] in display order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    made: list[tuple[str, Path]] = []
    for stem, key, title, ylabel, logy in FIGURES[:2]:
        if plot_metric(runs, key, out / f"{stem}.png", title, ylabel, logy):
            made.append((title, out / f"{stem}.png"))
    if plot_ratio(runs, out / "ratio.png"):
        made.append(("Token ratio range (paper Figure 1 view)", out / "ratio.png"))
    for stem, key, title, ylabel, logy in FIGURES[2:]:
        if plot_metric(runs, key, out / f"{stem}.png", title, ylabel, logy):
            made.append((title, out / f"{stem}.png"))
    return made
