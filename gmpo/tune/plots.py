"""The study's figures (matplotlib, Agg): optimisation history or Pareto front, the held-out accuracy each
trial reported (what the pruner saw), parameter importances, and a slice plot (objective vs each parameter)."""
from __future__ import annotations

import math
from pathlib import Path

COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#ff7f0e", "FAIL": "#d62728", "RUNNING": "#7f7f7f", "WAITING": "#7f7f7f"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(rows: list[dict], path: Path, multi: bool) -> bool:
    """Objective per trial with the running best (single objective); the Pareto front (two objectives)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if multi:
        xs, ys = [r["values"][0] for r in done], [r["values"][1] for r in done]
        ax.scatter(xs, ys, color=COLORS["COMPLETE"], label="complete")
        front = sorted((r["values"][0], r["values"][1]) for r in done
                       if not any(o["values"][0] >= r["values"][0] and o["values"][1] >= r["values"][1]
                                  and o["values"] != r["values"] for o in done))
        if front:
            ax.plot(*zip(*front), "o-", color="#2ca02c", label="Pareto front")
        for r in done:
            ax.annotate(str(r["number"]), (r["values"][0], r["values"][1]), fontsize=8, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel("held-out accuracy")
        ax.set_ylabel("stability")
        ax.set_title("Pareto front")
    else:
        best, bx, by = -math.inf, [], []
        for r in rows:
            if r["state"] == "COMPLETE":
                best = max(best, r["values"][0])
            if best > -math.inf:
                bx.append(r["number"])
                by.append(best)
        ax.scatter([r["number"] for r in done], [r["values"][0] for r in done], color=COLORS["COMPLETE"],
                   label="complete", zorder=3)
        if bx:
            ax.step(bx, by, where="post", color="#2ca02c", label="best so far")
        for state in ("PRUNED", "FAIL"):
            xs = [r["number"] for r in rows if r["state"] == state]
            if xs:
                ax.scatter(xs, [min(by or [0.0])] * len(xs), marker="x", color=COLORS[state],
                           label=f"{state.lower()} (no value)")
        ax.set_xlabel("trial")
        ax.set_ylabel("objective")
        ax.set_title("Optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_intermediate(rows: list[dict], path: Path) -> bool:
    """Held-out accuracy reported at each evaluation, one line per trial (pruned ones dashed)."""
    curves = [r for r in rows if r["intermediate"]]
    if not curves:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for r in curves:
        steps, accs = zip(*sorted(r["intermediate"].items()))
        style = "--" if r["state"] == "PRUNED" else "-"
        ax.plot(steps, accs, style, marker="o", ms=3, color=COLORS.get(r["state"], "#7f7f7f"), alpha=0.8,
                label=f"{r['number']} {r['state'].lower()}")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("Intermediate values (what the pruner saw)")
    ax.grid(alpha=0.3)
    if len(curves) <= 16:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_importances(imps: dict, path: Path) -> bool:
    """Horizontal bars of the normalised parameter importances."""
    if not imps:
        return False
    plt = _plt()
    names = list(imps)[::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.45 * len(names) + 1.0))
    ax.barh(names, [imps[n] for n in names], color="#1f77b4")
    ax.set_xlabel("importance (normalised)")
    ax.set_title("Parameter importances")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_slices(rows: list[dict], keys: list[str], params: dict, path: Path, multi: bool) -> bool:
    """Objective (accuracy for two objectives) against each parameter; log axes for log-scale parameters."""
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if not done or not keys:
        return False
    plt = _plt()
    n = len(keys)
    cols = min(n, 3)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.0 * cols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        p = params[key]
        ys = [r["values"][0] for r in done]  # the value, or the accuracy of a two-objective study
        if p.kind == "categorical":
            labels = [repr(c) for c in p.choices]
            xs = [labels.index(repr(r["params"].get(key))) if repr(r["params"].get(key)) in labels else -1 for r in done]
            ax.set_xticks(range(len(labels)))
            ax.set_xlim(-0.5, len(labels) - 0.5)
            ax.set_xticklabels(labels, fontsize=8, rotation=20)
        else:
            xs = [r["params"].get(key) for r in done]
            if p.kind == "log_uniform" or p.log:
                ax.set_xscale("log")
        ax.scatter(xs, ys, c=[r["number"] for r in done], cmap="viridis")
        ax.set_title(key, fontsize=10)
        ax.set_ylabel("accuracy" if multi else "objective", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Slice plot (colour: trial number)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_figures(rows: list[dict], keys: list[str], imps: dict, out_dir: Path, multi: bool,
                  params: dict) -> list[tuple[str, Path]]:
    """Every figure that has data, as (title, path) in page order."""
    out = []
    plan = [("Pareto front" if multi else "Optimisation history", "history.png",
             lambda p: plot_history(rows, p, multi)),
            ("Held-out accuracy per trial", "intermediate.png", lambda p: plot_intermediate(rows, p)),
            ("Parameter importances", "importances.png", lambda p: plot_importances(imps, p)),
            ("Slice plot", "slice.png", lambda p: plot_slices(rows, keys, params, p, multi))]
    for title, name, fn in plan:
        path = Path(out_dir) / name
        if fn(path):
            out.append((title, path))
        elif path.exists():
            path.unlink()  # a figure from an earlier report that no longer has data
    return out
