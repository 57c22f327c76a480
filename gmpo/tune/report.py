"""The study's outputs: the best config as a ready-to-run YAML and a report.

``<out>/best_config.yaml``  the recipe + the best trial's parameters (``gmpo train <out>/best_config.yaml``)
``<out>/pareto/trial_N.yaml`` (multi-objective) one such config per Pareto-optimal trial
``<out>/summary.json``      best trial (number, value, parameters, run directory), Pareto front, counts
``<out>/report/trials.md``  the trial table (state, value, accuracy, stability, parameters, reason)
``<out>/report/*.png``      optimisation history (or the Pareto front), held-out accuracy per trial as the
                            pruner saw it, parameter importances, a slice plot per parameter
``<out>/report/index.html`` all of it on one page that works offline (inline CSS, images as base64,
                            no scripts)

The "best" trial of a multi-objective study is the Pareto-optimal one with the highest
0.7 x accuracy + 0.3 x stability (or the study's weights).
"""
from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gmpo.tune.objective import combine
from gmpo.tune.space import trial_dict


@dataclass
class TuneResult:
    """What a study produced: counts by state, the best trial and where its outputs are."""

    study_name: str
    counts: dict
    best_number: int | None = None
    best_value: float | None = None
    best_params: dict = field(default_factory=dict)
    best_run_dir: str | None = None
    best_config: Path | None = None
    report_dir: Path | None = None
    html: Path | None = None
    pareto: list[int] = field(default_factory=list)


def trial_rows(study) -> list[dict]:
    """One dict per trial (number order): state, value(s), accuracy, stability, params, reason, paths."""
    notes = study.user_attrs.get("interrupted", {})
    rows = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        reason = notes.get(str(t.number)) or ua.get("fail_reason") or ""
        if ua.get("retry_of") is not None:
            reason = (reason + "; " if reason else "") + f"retry of trial {ua['retry_of']}"
        values = t.values if t.state.name == "COMPLETE" else None  # a pruned trial's stored value is not a score
        rows.append({"number": t.number, "state": t.state.name, "values": values, "params": dict(t.params),
                     "accuracy": ua.get("accuracy"), "stability": ua.get("stability"), "steps": ua.get("steps"),
                     "pruned_step": ua.get("pruned_step"), "reason": reason, "wall_s": ua.get("wall_s"),
                     "run_dir": ua.get("run_dir"), "intermediate": dict(sorted(t.intermediate_values.items()))})
    return rows


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown_table(rows: list[dict], keys: list[str], multi: bool) -> str:
    """The trial table as GitHub markdown."""
    vcols = ["accuracy", "stability"] if multi else ["value", "accuracy", "stability"]
    head = ["trial", "state", *vcols, *keys, "steps", "wall s", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [] if multi else [_fmt(r["values"][0]) if r["values"] else ""]
        cells = [str(r["number"]), r["state"].lower(), *vals, _fmt(r["accuracy"]), _fmt(r["stability"]),
                 *(_fmt(r["params"].get(k)) for k in keys), _fmt(r["steps"]), _fmt(r["wall_s"]),
                 r["reason"].replace("|", "/")[:160]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def best_trial(study, weights):
    """The best complete trial (single objective), or the Pareto trial with the best weighted score."""
    import optuna

    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return None
    if len(study.directions) == 1:
        return study.best_trial
    return max(study.best_trials, key=lambda t: combine(t.values[0], t.values[1], weights))


def write_config(ctx, trial, path: Path, note: str) -> Path:
    """The recipe + ``trial``'s parameters as a complete YAML config, ready for ``gmpo train``."""
    from gmpo.config import from_dict, to_dict

    data = trial_dict(ctx.base, dict(trial.params))
    data["train"]["output_dir"] = str(ctx.out / "best_run")
    data["train"]["resume"] = ""
    text = yaml.safe_dump(to_dict(from_dict(data)), sort_keys=False)
    params = "\n".join(f"#   {k}: {v!r}" for k, v in trial.params.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {note}\n# searched parameters:\n{params}\n# run it: gmpo train {path}\n{text}")
    return path


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


CSS = ("body{font-family:Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}"
       "main{max-width:1200px;margin:0 auto;padding:20px 26px 40px}h2{border-bottom:1px solid #d9dde5}"
       "table{border-collapse:collapse;background:#fff;font-size:13px;width:100%}"
       "th,td{border:1px solid #d9dde5;padding:5px 7px;text-align:right}th{background:#eef1f6}"
       "td:last-child{text-align:left}.figs{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:12px}"
       "figure{margin:0;background:#fff;padding:6px}figure img{width:100%;height:auto}"
       "p.note{font-size:13px;color:#5a6272}code{background:#eef1f6;padding:1px 4px}")


def render_html(title: str, summary_lines: list[str], table_md: str, figures: list[tuple[str, Path]],
                notes: list[str]) -> str:
    """The offline report page: inline CSS, the table, base64 images; no scripts, nothing fetched."""
    esc = html.escape
    lines = [ln for ln in table_md.strip().splitlines() if not ln.startswith("|---")]
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    head = "".join(f"<th>{esc(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
    figs = "".join(_img(p, t) for t, p in figures)
    summ = "".join(f"<p>{esc(s)}</p>" for s in summary_lines)
    note = "".join(f"<p class='note'>{esc(n)}</p>" for n in notes)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><main><h1>{esc(title)}</h1>{summ}<h2>Trials</h2>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"
            f"<h2>Figures</h2><div class='figs'>{figs}</div></main></body></html>\n")


def _importances(study, multi: bool) -> tuple[dict, str]:
    """({param: importance}, '' or why there are none)."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 2 or not done[0].params:
        return {}, "parameter importances need at least 2 complete trials"
    import warnings

    try:
        target = (lambda t: -t.values[0]) if multi else None  # PED-ANOVA ranks low targets as good
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. 'importances will be equal' when every value is the same
            return optuna.importance.get_param_importances(study, target=target), ""
    except (RuntimeError, ValueError, ZeroDivisionError) as e:
        return {}, f"parameter importances unavailable: {e}"


def write_outputs(ctx) -> TuneResult:
    """Write best config(s), summary.json and the report for the study in ``ctx``; the result."""
    from gmpo.tune import plots

    s, study, out = ctx.settings, ctx.study, ctx.out
    rows = trial_rows(study)
    keys = [p.key for p in ctx.params]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"].lower()] = counts.get(r["state"].lower(), 0) + 1
    res = TuneResult(study.study_name, counts, report_dir=out / "report")
    best = best_trial(study, s.weights)
    if best is not None:
        res.best_number, res.best_params = best.number, dict(best.params)
        res.best_value = best.value if not s.multi_objective else combine(*best.values, s.weights)
        res.best_run_dir = best.user_attrs.get("run_dir")
        res.best_config = write_config(ctx, best, out / "best_config.yaml",
                                       f"gmpo tune study {study.study_name!r}: best trial {best.number}")
    if s.multi_objective and best is not None:
        res.pareto = sorted(t.number for t in study.best_trials)
        for t in study.best_trials:
            write_config(ctx, t, out / "pareto" / f"trial_{t.number}.yaml",
                         f"Pareto-optimal trial {t.number}: accuracy {t.values[0]:.4f}, stability {t.values[1]:.4f}")
    imps, imp_note = _importances(study, s.multi_objective)
    rep = res.report_dir
    rep.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, keys, s.multi_objective)
    (rep / "trials.md").write_text(table)
    figures = plots.write_figures(rows, keys, imps, rep, s.multi_objective, {p.key: p for p in ctx.params})
    summary = _summary_lines(res, s)
    notes = [n for n in (imp_note,) if n] + [
        "Objective: " + ("two objectives (held-out accuracy, stability), Pareto front" if s.multi_objective
                         else f"{s.weights[0]} x held-out accuracy + {s.weights[1]} x stability")
        + "; stability = 1 / (1 + coefficient of variation of the per-step gradient norm) (README: Hyperparameter search)."]
    res.html = rep / "index.html"
    res.html.write_text(render_html(f"gmpo tune: {study.study_name}", summary, table, figures, notes))
    (out / "summary.json").write_text(json.dumps(
        {"study": study.study_name, "counts": counts, "best_trial": res.best_number, "best_value": res.best_value,
         "best_params": res.best_params, "best_run_dir": res.best_run_dir,
         "best_config": str(res.best_config) if res.best_config else None, "pareto": res.pareto,
         "importances": imps, "trials": [{k: v for k, v in r.items() if k != "intermediate"} for r in rows]},
        indent=1, default=str))
    return res


def _summary_lines(res: TuneResult, s) -> list[str]:
    counts = ", ".join(f"{n} {k}" for k, n in sorted(res.counts.items()))
    lines = [f"{sum(res.counts.values())} trials: {counts}."]
    if res.best_number is None:
        lines.append("No trial completed, so there is no best configuration.")
    else:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.best_params.items())
        lines.append(f"Best trial {res.best_number} (value {res.best_value:.4f}): {params}.")
        lines.append(f"Best config: {res.best_config}; its run directory: {res.best_run_dir}.")
    return lines
