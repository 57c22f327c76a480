"""Run loading and the comparison table: one row per algorithm, each cell mean ± std over seeds.

A run directory holds ``metrics.jsonl`` (one JSON object per logged step), optionally ``config.yaml`` (the
resolved config, giving algorithm and seed) and ``alerts.jsonl`` (guard events). After an in-memory rollback
a step number can appear twice in ``metrics.jsonl``; the later record is the one on the final trajectory, so
:func:`gmpo.runs.files.read_metrics` keeps the last record per step.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gmpo.runs.files import CONFIG, read_alerts, read_metrics, run_identity



@dataclass
class Run:
    """One training run: its label and its per-step metric records (sorted by step, one per step)."""

    path: Path
    algo: str
    seed: int
    records: list[dict[str, Any]]
    n_alerts: int = 0
    alerts_by_action: dict[str, int] = field(default_factory=dict)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of the records holding a finite `key`."""
        xs, ys = [], []
        for r in self.records:
            v = r.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                xs.append(int(r["step"]))
                ys.append(float(v))
        return xs, ys


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory; algorithm and seed come from config.yaml, else from a '<algo>-s<seed>' name."""
    d = Path(run_dir)
    mfile = d / "metrics.jsonl"
    if not mfile.is_file():
        raise FileNotFoundError(f"{d}: no metrics.jsonl (is this a gmpo run directory?)")
    cfg_file = d / CONFIG
    algo, seed = run_identity(d, yaml.safe_load(cfg_file.read_text()) if cfg_file.is_file() else None)
    algo, seed = algo or d.name, seed if seed is not None else 0
    alerts = read_alerts(d)
    by_action: dict[str, int] = {}
    for a in alerts:
        by_action[a.get("action", "?")] = by_action.get(a.get("action", "?"), 0) + 1
    return Run(d, str(algo), int(seed), read_metrics(mfile), len(alerts), by_action)


# ----------------------------------------------------------------------------------------------
# per-run statistics


def _pvar(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return sum((x - m) ** 2 for x in xs) / len(xs)


def moving_average(ys: list[float], k: int) -> list[float]:
    """Trailing mean over the last `k` values (fewer at the start)."""
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= k:
            acc -= ys[i - k]
        out.append(acc / min(i + 1, k))
    return out


def steps_to_target(run: Run, target: float, smooth: int = 1, key: str = "reward/mean") -> int | None:
    """First step at which the trailing `smooth`-step mean of `key` reaches `target` (None: never)."""
    xs, ys = run.series(key)
    for x, y in zip(xs, moving_average(ys, max(1, smooth))):
        if y >= target:
            return x
    return None


def run_stats(run: Run, target: float, smooth: int = 1) -> dict[str, float | None]:
    """The table's per-run numbers (None where the run lacks the metric).

    loss_var: population variance of ``loss/value`` over the run's steps; grad_norm_std: population std of
    ``grad/norm``; ratio_range: max ``ratio/token_max`` / min ``ratio/token_min`` over the run; steps_to_target:
    see :func:`steps_to_target`; guard_events: lines in alerts.jsonl (else the last ``guard/events``);
    interventions: events whose action was skip, rollback or stop; final_accuracy: the last ``eval/accuracy``.
    """
    out: dict[str, float | None] = {}
    _, loss = run.series("loss/value")
    out["loss_var"] = _pvar(loss) if loss else None
    _, gn = run.series("grad/norm")
    out["grad_norm_std"] = math.sqrt(_pvar(gn)) if gn else None
    _, hi = run.series("ratio/token_max")
    _, lo = run.series("ratio/token_min")
    out["ratio_range"] = max(hi) / max(min(lo), 1e-30) if hi and lo else None
    out["steps_to_target"] = steps_to_target(run, target, smooth)
    _, ev = run.series("guard/events")
    out["guard_events"] = float(run.n_alerts) if run.n_alerts or not ev else ev[-1]
    out["interventions"] = float(sum(n for a, n in run.alerts_by_action.items() if a in ("skip", "rollback", "stop")))
    _, acc = run.series("eval/accuracy")
    out["final_accuracy"] = acc[-1] if acc else None
    out["steps"] = float(run.records[-1]["step"]) if run.records else 0.0
    return out


# ----------------------------------------------------------------------------------------------
# aggregation over seeds

COLUMNS = [  # (stat key, header, number format)
    ("loss_var", "loss variance", "{:.3g}"),
    ("grad_norm_std", "grad-norm std", "{:.3g}"),
    ("ratio_range", "token-ratio range (max/min)", "{:.3g}"),
    ("steps_to_target", "steps to target reward", "{:.1f}"),
    ("guard_events", "guard events", "{:.1f}"),
    ("interventions", "skips/rollbacks/stops", "{:.1f}"),
    ("final_accuracy", "final held-out accuracy", "{:.3f}"),
]


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0.0 for a single value)."""
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def format_cell(values: list[float | None], fmt: str, n_runs: int, is_target: bool = False) -> str:
    """'mean ± std' over the seeds that have a value; honest about missing ones."""
    have = [v for v in values if v is not None]
    if not have:
        return f"not reached (0/{n_runs})" if is_target else "n/a"
    m, s = mean_std(have)
    text = fmt.format(m) if len(have) == 1 else f"{fmt.format(m)} ± {fmt.format(s)}"
    if len(have) < n_runs:
        text += f" ({len(have)}/{n_runs} {'reached' if is_target else 'runs'})"
    return text


@dataclass
class Table:
    """Per-algorithm rows: ``cells[algo][stat]`` is the formatted text, ``stats[algo][stat]`` the per-seed values."""

    algos: list[str]
    seeds: dict[str, list[int]]
    stats: dict[str, dict[str, list[float | None]]]
    cells: dict[str, dict[str, str]]
    target: float
    smooth: int


def build_table(runs: list[Run], target: float, smooth: int = 1) -> Table:
    """Aggregate runs by algorithm (in first-seen order) into mean ± std cells."""
    algos: list[str] = []
    for r in runs:
        if r.algo not in algos:
            algos.append(r.algo)
    seeds = {a: sorted(r.seed for r in runs if r.algo == a) for a in algos}
    stats: dict[str, dict[str, list]] = {a: {k: [] for k, _, _ in COLUMNS} for a in algos}
    for r in sorted(runs, key=lambda r: (r.algo, r.seed)):
        s = run_stats(r, target, smooth)
        for k, _, _ in COLUMNS:
            stats[r.algo][k].append(s[k])
    cells = {a: {k: format_cell(stats[a][k], fmt, len(seeds[a]), k == "steps_to_target") for k, _, fmt in COLUMNS}
             for a in algos}
    return Table(algos, seeds, stats, cells, target, smooth)


def to_markdown(table: Table) -> str:
    """The table as GitHub markdown, with a line on what each column means."""
    head = "| algorithm | seeds | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    sep = "|" + "---|" * (len(COLUMNS) + 2)
    rows = [f"| {a} | {len(table.seeds[a])} | " + " | ".join(table.cells[a][k] for k, _, _ in COLUMNS) + " |"
            for a in table.algos]
    smooth = f" ({table.smooth}-step trailing mean)" if table.smooth > 1 else ""
    notes = (f"\nCells: mean ± sample std over seeds. Loss variance, grad-norm std and ratio range are over all steps "
             f"of a run; steps to target = first step whose reward/mean{smooth} reaches {table.target:g}; guard events "
             f"= alerts.jsonl lines (warnings included); final accuracy = last held-out eval/accuracy.\n")
    return "\n".join([head, sep, *rows]) + "\n" + notes
