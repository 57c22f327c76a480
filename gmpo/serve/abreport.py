"""``gmpo ab report``: read an experiment from the request log (read-only) and write markdown, JSON and a figure.

Success per request, by ``metric``:

- ``quality`` (default): the response's quality score >= ``threshold`` (requests without a score are left out);
- ``feedback``: the mean of its thumbs/correct feedback >= 0.5 (requests without feedback are left out);
- ``ok``: answered with HTTP 200 and not truncated.

Arms are compared by the arm that *answered* (``arm``); the sample-ratio check uses the arm the user was
*assigned* (``assigned_arm``), which differs only while a circuit breaker sent an arm's users to control.
Each non-control arm is compared with the control (Holm-adjusted when there are several). When the arms
answered the same prompts (at least 30 prompts seen by both), McNemar's test on those pairs is reported
too and decides the recommendation (pairing removes prompt difficulty from the comparison).
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from gmpo.serve import abstats

METRICS = ("quality", "feedback", "ok")
MIN_PAIRS = 30


def _connect(db: str | Path) -> sqlite3.Connection:
    p = Path(db)
    if not p.is_file():
        raise ValueError(f"request log {p} does not exist (gmpo serve writes it; see --log-db)")
    con = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    return con


def load(db: str | Path, experiment: str | None = None) -> tuple[str, dict, list[dict]]:
    """(experiment id, its design config, its request rows); the newest experiment when none is named."""
    con = _connect(db)
    try:
        exps = con.execute("SELECT id, started, config FROM experiments ORDER BY started").fetchall()
        if not exps:
            raise ValueError(f"{db} records no experiment (start gmpo serve with --experiment FILE)")
        ids = [e["id"] for e in exps]
        if experiment is None:
            row = exps[-1]
        else:
            match = [e for e in exps if e["id"] == experiment or e["id"].rsplit("-", 1)[0] == experiment]
            if not match:
                raise ValueError(f"no experiment {experiment!r} in {db}; recorded: {', '.join(ids)}")
            row = match[-1]
        q = ("SELECT r.*, (SELECT AVG(value) FROM feedback f WHERE f.request_id = r.id AND f.kind IN "
             "('thumbs', 'correct')) AS feedback_mean FROM requests r WHERE r.experiment = ?")
        rows = [dict(r) for r in con.execute(q, (row["id"],))]
        return row["id"], json.loads(row["config"]), rows
    finally:
        con.close()


def success(row: dict, metric: str, threshold: float) -> int | None:
    """1/0 for a request under ``metric`` (None: no measurement for this request)."""
    if metric == "quality":
        return None if row.get("quality") is None or row.get("status") != 200 else int(row["quality"] >= threshold)
    if metric == "feedback":
        return None if row.get("feedback_mean") is None else int(row["feedback_mean"] >= 0.5)
    return int(row.get("status") == 200 and row.get("finish_reason") not in ("length", "error"))


def analyse(exp_id: str, config: dict, rows: list[dict], metric: str = "quality", threshold: float = 0.5,
            alpha: float = 0.05, power: float = 0.8) -> dict:
    """The report as a JSON-serialisable dict."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    arms = [a["name"] for a in config["arms"]]
    control = config["control"]
    per: dict[str, dict] = {}
    for arm in arms:
        mine = [r for r in rows if r.get("arm") == arm]
        ok = [s for s in (success(r, metric, threshold) for r in mine) if s is not None]
        lat = [r["latency_s"] for r in mine if r.get("status") == 200 and r.get("latency_s") is not None]
        lo, hi = abstats.wilson(sum(ok), len(ok), alpha)
        per[arm] = {"requests": len(mine), "measured": len(ok), "successes": sum(ok),
                    "rate": sum(ok) / len(ok) if ok else None, "ci": [lo, hi], "latencies": lat,
                    "errors": sum(1 for r in mine if r.get("status") != 200),
                    "fallbacks": sum(1 for r in mine if r.get("fallback"))}
    assigned = {a: sum(1 for r in rows if (r.get("assigned_arm") or r.get("arm")) == a) for a in arms}
    srm = abstats.srm(assigned, config.get("weights") or {a["name"]: a["weight"] for a in config["arms"]})
    comparisons = []
    for arm in arms:
        if arm == control or not per[arm]["measured"] or not per[control]["measured"]:
            continue
        a, b = per[control], per[arm]
        cmp = abstats.compare_rates(a["successes"], a["measured"], b["successes"], b["measured"], alpha, power)
        paired = _paired(rows, control, arm, metric, threshold, alpha)
        comparisons.append({"arm": arm, "control": control, **cmp.__dict__, "paired": paired,
                            "latency": abstats.latency(a["latencies"], b["latencies"])})
    decisive = [c["paired"]["p_value"] if c["paired"] else c["p_value"] for c in comparisons]
    for c, adj in zip(comparisons, abstats.holm(decisive)):
        c["p_decisive"] = adj
        cmp = abstats.Comparison(**{k: c[k] for k in ("p_a", "p_b", "diff", "ci_low", "ci_high", "p_value", "test",
                                                      "required_n")})
        c["recommendation"] = abstats.recommendation(control, c["arm"], cmp, adj, alpha, per[c["arm"]]["measured"],
                                                     srm["mismatch"])
    for arm in per.values():
        arm.pop("latencies")
    return {"experiment": exp_id, "design": config, "metric": metric, "threshold": threshold, "alpha": alpha,
            "power": power, "arms": per, "srm": srm, "comparisons": comparisons,
            "recommendation": comparisons[0]["recommendation"] if len(comparisons) == 1 else
            "; ".join(f"{c['arm']}: {c['recommendation']}" for c in comparisons) or "no comparison possible yet",
            "note": "fixed-horizon tests: valid for one look at the data; stopping at the first p < alpha inflates "
                    "false positives"}


def _paired(rows, a: str, b: str, metric: str, threshold: float, alpha: float) -> dict | None:
    """McNemar on the first answer of each prompt in both arms (None below MIN_PAIRS shared prompts)."""
    first: dict[str, dict[str, int]] = {a: {}, b: {}}
    for r in sorted(rows, key=lambda r: r.get("ts") or 0):
        s = success(r, metric, threshold)
        if r.get("arm") in first and s is not None and r.get("prompt"):
            first[r["arm"]].setdefault(r["prompt"], s)
    shared = sorted(set(first[a]) & set(first[b]))
    if len(shared) < MIN_PAIRS:
        return None
    return abstats.compare_paired([(first[a][p], first[b][p]) for p in shared], alpha)


def markdown(rep: dict) -> str:
    """The report as markdown."""
    lines = [f"# A/B report: {rep['experiment']}", "",
             f"Metric: **{rep['metric']}**" + (f" (success = quality >= {rep['threshold']:g})" if rep["metric"] ==
                                                "quality" else "") + f"; alpha = {rep['alpha']:g}.", "",
             "| arm | requests | measured | success rate | 95% Wilson CI | errors | fallbacks |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for name, a in rep["arms"].items():
        rate = "-" if a["rate"] is None else f"{a['rate']:.3f}"
        ci = "-" if a["rate"] is None else f"[{a['ci'][0]:.3f}, {a['ci'][1]:.3f}]"
        ctl = " (control)" if name == rep["design"]["control"] else ""
        lines.append(f"| {name}{ctl} | {a['requests']} | {a['measured']} | {rate} | {ci} | {a['errors']} | "
                     f"{a['fallbacks']} |")
    for c in rep["comparisons"]:
        lines += ["", f"## {c['arm']} vs {c['control']}", "",
                  f"- difference {c['diff']:+.4f}, 95% Newcombe CI [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]; "
                  f"{c['test']}: p = {c['p_value']:.3g}"]
        if c["paired"]:
            pr = c["paired"]
            lines.append(f"- paired on {pr['pairs']} shared prompts: McNemar {'exact' if pr['exact'] else 'chi-square'} "
                         f"p = {pr['p_value']:.3g} ({pr['b_only']} prompts only {c['arm']} got right, {pr['a_only']} "
                         f"only {c['control']})")
        if c["required_n"]:
            lines.append(f"- about {c['required_n']:.0f} requests per arm detect a difference of {abs(c['diff']):.3f} "
                         f"with power {rep['power']:g}")
        la = c["latency"]
        lines.append(f"- latency median {la['a']['median']:.3f}s vs {la['b']['median']:.3f}s, p95 {la['a']['p95']:.3f}s "
                     f"vs {la['b']['p95']:.3f}s (Mann-Whitney p = {la['p_value']:.3g})")
    s = rep["srm"]
    lines += ["", f"Sample ratio: observed {s['observed']}, expected {s['expected']}, chi-square p = "
                  f"{s['p_value']:.3g}" + (" **MISMATCH**" if s["mismatch"] else " (ok)"),
              "", f"Note: {rep['note']}.", "", f"**Recommendation:** {rep['recommendation']}", ""]
    return "\n".join(lines)


def figure(rep: dict, path: str | Path) -> Path:
    """A PNG: each arm's success rate with its Wilson interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, a in rep["arms"].items() if a["rate"] is not None]
    rates = [rep["arms"][n]["rate"] for n in names]
    err = [[r - rep["arms"][n]["ci"][0] for n, r in zip(names, rates)],
           [rep["arms"][n]["ci"][1] - r for n, r in zip(names, rates)]]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(names, rates, yerr=err, capsize=6, color=["#888" if n == rep["design"]["control"] else "#3a7" for n in names])
    ax.set_ylabel(f"success rate ({rep['metric']})")
    ax.set_ylim(0, 1)
    ax.set_title(rep["experiment"], fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
