"""What each part of the page shows, computed from the run stores: chart series (downsampled), heat-maps,
guard events, the headline numbers, the comparison table and the sample browser's filtered page.

Every function takes the stores it reads and holds each store's lock while it copies from it; the results
are plain JSON-ready dicts.
"""
from __future__ import annotations

import math

import numpy as np

from gmpo.dashboard.series import HIST_HI, HIST_LO, HIST_BINS, Chart, align, heatmap, minmax_downsample, to_json_list, wilson
from gmpo.dashboard.store import RunStore

STABILITY_WINDOW = 100  # steps behind the stability score
THROUGHPUT_WINDOW = 20  # steps behind the throughput figure


def chart_payload(stores: list[RunStore], ch: Chart, x0: float | None, x1: float | None, points: int) -> dict:
    """One chart's data: shared x (steps), one series per (run, metric), min/max downsampled to `points`.

    The accuracy chart adds, per run with a known eval size n, the Wilson 95% band as two series
    ("eval/accuracy:lo", ":hi"), and any other eval/<benchmark> metric the run logged.
    """
    sets, vals, meta = [], [], []
    for st in stores:
        with st.lock:
            metrics = list(ch.metrics)
            if ch.id == "accuracy":  # benchmark evaluations (eval.benchmarks) log eval/<name> beside it
                metrics += sorted(k for k in st.table.cols if k.startswith("eval/") and k not in metrics)
            for m in metrics:
                s, v = st.series(m, x0, x1)
                if not len(s):
                    continue
                sets.append(s), vals.append(v), meta.append({"run": st.id, "metric": m, "role": "line"})
                n = st.eval_n() if m == "eval/accuracy" else None
                if n:
                    lo, hi = wilson(np.clip(v, 0.0, 1.0), n)
                    for role, band in (("lo", lo), ("hi", hi)):
                        sets.append(s), vals.append(band)
                        meta.append({"run": st.id, "metric": f"{m}:{role}", "role": role, "n": n})
    x, ys = align(sets, vals)
    x, ys, width = minmax_downsample(x, ys, points)
    return {"id": ch.id, "x": to_json_list(x, 12), "bucket": width,
            "series": [{**m, "data": to_json_list(y)} for m, y in zip(meta, ys)]}


def heatmap_payload(st: RunStore, x0: float | None, x1: float | None, cols: int) -> dict:
    """The log-ratio heat-map of one run, or ``has_hist: False`` when its metrics carry no ratio/log_hist."""
    info = st.info()
    with st.lock:
        steps, h = st.hist_rows(x0, x1)
        has = st.has_hist()
    out = {"run": st.id, "name": st.name, "has_hist": has, "clip": info["clip"],
           "edges": {"lo": HIST_LO, "hi": HIST_HI, "bins": HIST_BINS}}
    if has:
        out.update(heatmap(steps, h, cols))
    return out


def alerts_payload(stores: list[RunStore], x0: float | None, x1: float | None, limit: int = 2000) -> list[dict]:
    """Guard events of the runs within [x0, x1], newest `limit` per run, tagged with the run id."""
    out = []
    for st in stores:
        with st.lock:
            evs = [a for a in st.alerts if isinstance(a.get("step"), (int, float))
                   and (x0 is None or a["step"] >= x0) and (x1 is None or a["step"] <= x1)]
        for a in evs[-limit:]:
            out.append({"run": st.id, "step": a["step"], "detector": a.get("detector"), "action": a.get("action"),
                        "value": _num(a.get("value")), "threshold": _num(a.get("threshold")),
                        "message": a.get("message"), "time": _finite(a.get("time"))})
    return out


def _num(v):
    if isinstance(v, (int, float)) and math.isfinite(v):
        return v
    return None if v is None else str(v)


def training_headline(st: RunStore) -> dict:
    """Accuracy (latest, change, Wilson interval), stability score and throughput of one run.

    Stability score: the share (in %) of the last STABILITY_WINDOW training steps without a guard event of any
    action (warnings included). Throughput: mean perf/tokens_per_s over the last THROUGHPUT_WINDOW steps.
    """
    with st.lock:
        acc_s, acc = st.series("eval/accuracy")
        t = st.table
        steps = t.steps[: t.n]
        last_steps = steps[steps > 0][-STABILITY_WINDOW:].copy()  # step 0: the evaluation before training
        alert_steps = [a["step"] for a in st.alerts if isinstance(a.get("step"), (int, float))]
        _, tps = st.series("perf/tokens_per_s")
    out: dict = {"run": st.id}
    if len(acc):
        n = st.eval_n()
        out["accuracy"] = {"value": float(acc[-1]), "step": int(acc_s[-1]), "n": n,
                           "change": float(acc[-1] - acc[-2]) if len(acc) > 1 else None,
                           "prev_step": int(acc_s[-2]) if len(acc) > 1 else None}
        if n:
            lo, hi = wilson(np.array([acc[-1]]), n)
            out["accuracy"]["ci"] = [float(lo[0]), float(hi[0])]
    else:
        out["accuracy"] = None
    if len(last_steps):
        clean = ~np.isin(last_steps, np.asarray(alert_steps, dtype=float))
        out["stability"] = {"score": 100.0 * float(clean.mean()), "window": int(len(last_steps)),
                            "clean": int(clean.sum())}
    else:
        out["stability"] = None
    out["throughput"] = ({"tokens_per_s": float(tps[-THROUGHPUT_WINDOW:].mean()), "window": int(min(len(tps), THROUGHPUT_WINDOW))}
                         if len(tps) else None)
    return out


def compare_payload(stores: list[RunStore], target: float, smooth: int) -> dict:
    """The stability table of `gmpo compare` (gmpo.report.table) over the dashboard's runs, and per-run figures."""
    from gmpo.report.table import COLUMNS, Run, build_table, run_stats

    keys = ("loss/value", "grad/norm", "ratio/token_max", "ratio/token_min", "reward/mean", "guard/events",
            "eval/accuracy")
    runs = []
    for st in stores:
        info = st.info()
        with st.lock:
            recs = st.records(keys)
            by_action: dict[str, int] = {}
            for a in st.alerts:
                by_action[a.get("action", "?")] = by_action.get(a.get("action", "?"), 0) + 1
            n_alerts = len(st.alerts)
        runs.append(Run(st.path, str(info["algo"] or st.name), int(info["seed"] or 0), recs, n_alerts, by_action))
    table = build_table(runs, target, smooth) if runs else None
    columns = [{"key": k, "header": h} for k, h, _ in COLUMNS]
    per_run = []
    for st, r in zip(stores, runs):
        s = run_stats(r, target, smooth)
        per_run.append({"run": st.id, "name": st.name, "algo": r.algo, "seed": r.seed,
                        "stats": {k: (None if v is None else float(v)) for k, v in s.items()}})
    return {"columns": columns, "target": target, "smooth": smooth,
            "rows": [{"algo": a, "seeds": table.seeds[a], "cells": table.cells[a]} for a in table.algos] if table else [],
            "runs": per_run}


def samples_payload(st: RunStore, *, step_min: float | None = None, step_max: float | None = None,
                    reward_min: float | None = None, reward_max: float | None = None, text: str = "",
                    limit: int = 50, offset: int = 0) -> dict:
    """A page of the run's samples (newest first) matching the filters; `text` matches prompt or completion
    (case-insensitive substring)."""
    needle = text.lower()
    with st.lock:
        pool = list(st.samples)
        seen = st.n_samples_seen
    matched = []
    for s in reversed(pool):
        step, rew = s.get("step"), s.get("reward")
        if step_min is not None and not (isinstance(step, (int, float)) and step >= step_min):
            continue
        if step_max is not None and not (isinstance(step, (int, float)) and step <= step_max):
            continue
        if reward_min is not None and not (isinstance(rew, (int, float)) and rew >= reward_min):
            continue
        if reward_max is not None and not (isinstance(rew, (int, float)) and rew <= reward_max):
            continue
        if needle and needle not in str(s.get("prompt", "")).lower() and needle not in str(s.get("completion", "")).lower():
            continue
        matched.append(s)
    page = matched[offset: offset + limit]
    kept = (pool[0].get("step"), pool[-1].get("step")) if pool else (None, None)
    return {"run": st.id, "total": len(matched), "offset": offset, "limit": limit, "kept": len(pool),
            "seen": seen, "kept_steps": kept, "samples": [_sample_row(s) for s in page]}


def _sample_row(s: dict) -> dict:
    keys = ("step", "prompt", "answer", "completion", "rewards", "reward", "advantage", "length", "truncated")
    return {k: _finite(s.get(k)) for k in keys}


def _finite(v):
    """`v` with NaN/inf floats (JSON has no such numbers) turned into None, inside dicts and lists too."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v
