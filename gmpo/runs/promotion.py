"""Eval-gated promotion and rollback of registered models (``gmpo promote``, ``gmpo rollback``).

:func:`promote` decodes the candidate and production greedily on the gate's sets (same prompts, same seeds),
applies the gate (:mod:`gmpo.runs.gate`), writes a markdown + JSON report into the registry's report
directory, and on a pass moves ``production -> candidate`` and ``previous -> old production`` in one
transaction that also records the report (and whatever the caller's ``also`` writes, e.g. a continual-cycle
state). The move is a compare-and-swap on production: if production moved while the models were being
evaluated, nothing moves (:class:`AliasConflict`). A failed gate moves nothing.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Callable

from gmpo.runs.gate import Gate, decide, load_gate, set_rows
from gmpo.runs.model_registry import PREVIOUS, PRODUCTION, AliasConflict, ModelRegistry, RegistryError, crashpoint
from gmpo.runs.store import atomic_write

N_EXAMPLES = 3  # completions per set quoted in the report


def evaluate_model(path: str, gate: Gate, device: str = "cpu") -> tuple[dict[str, list[bool]], dict]:
    """Greedy verdicts of the model at `path` on every set of `gate`: ({set: [correct per item]}, extras)
    where extras holds per-set example completions and the wall time."""
    import torch

    from gmpo.models import load_model
    from gmpo.rollout import make_engine

    t0 = time.perf_counter()
    model, tok = load_model(path, device=device)
    model.eval()
    dec = gate.decoding
    engine = make_engine("engine", model, tok, bf16=dec.bf16)
    verdicts, examples = {}, {}
    with torch.no_grad():
        for s in gate.sets:
            if s.benchmark:
                verdicts[s.name], examples[s.name] = _benchmark_verdicts(model, tok, engine, s, dec)
            else:
                verdicts[s.name], examples[s.name] = _source_verdicts(tok, engine, s, dec)
    del engine, model
    return verdicts, {"examples": examples, "wall_s": time.perf_counter() - t0}


def _source_verdicts(tok, engine, s, dec) -> tuple[list[bool], list[dict]]:
    """Verdicts on an arithmetic/file set: the set's reward > 0.5, seeds fixed per batch position."""
    from gmpo.batch import reward_inputs
    from gmpo.data.prompts import PromptEncoder
    from gmpo.eval.runner import generate
    from gmpo.rewards import RewardRunner
    from gmpo.rollout import SamplingParams

    rows = set_rows(s)
    runner = RewardRunner([s.reward], errors="zero")
    encoder = PromptEncoder(tok, dec.template, dec.system_prompt)
    out, examples = [], []
    for start in range(0, len(rows), dec.batch_size):
        chunk = rows[start:start + dec.batch_size]
        params = SamplingParams(n=1, max_new_tokens=dec.max_new_tokens, temperature=0.0, seed=dec.seed + start)
        _, rollout = generate(engine, encoder, [r["prompt"] for r in chunk], params)
        prompts, columns = reward_inputs(chunk, 1)
        first = next(iter(runner(prompts, list(rollout.texts), columns).per_fn.values()))
        ok = [bool(v > 0.5) for v in first.tolist()]
        out += ok
        for r, text, c in zip(chunk, rollout.texts, ok):
            if len(examples) < N_EXAMPLES:
                examples.append({"prompt": r["prompt"], "answer": r.get("answer"), "completion": text, "correct": c})
    return out, examples


def _benchmark_verdicts(model, tok, engine, s, dec) -> tuple[list[bool], list[dict]]:
    """Verdicts on a `gmpo eval` benchmark (its own grader), via :func:`gmpo.eval.run_eval` records."""
    from gmpo.eval import run_eval

    with tempfile.TemporaryDirectory() as tmp:
        rec_path = Path(tmp) / "records.jsonl"
        run_eval(model, tok, [s.benchmark], data_dir=s.data_dir, limit=s.size, max_new_tokens=dec.max_new_tokens,
                 template=dec.template, system_prompt=dec.system_prompt, seed=dec.seed, batch_size=dec.batch_size,
                 engine=engine, records_path=rec_path)
        recs = sorted((json.loads(line) for line in rec_path.read_text().splitlines() if line.strip()),
                      key=lambda r: r["index"])
    examples = [{"prompt": r["prompt"], "answer": r["gold"], "completion": r["completions"][0],
                 "correct": r["correct"][0]} for r in recs[:N_EXAMPLES]]
    return [bool(r["correct"][0]) for r in recs], examples


def render_markdown(report: dict) -> str:
    """The report as markdown: verdict, reasons, a per-set table, example completions."""
    ni = report["gate"]["non_inferiority"]
    verdict = "PASS" if report["passed"] else "FAIL"
    moved = "production moved" if report["applied"] else "nothing moved"
    lines = [f"# Gate report: {report['name']} candidate v{report['candidate']} vs production "
             f"{'v' + str(report['production']) if report['production'] is not None else '(none)'}", "",
             f"**{verdict}** ({moved}). Gate `{report['gate']['path'] or 'inline'}`; {ni['test']} non-inferiority, "
             f"delta {ni['delta']}, alpha {ni['alpha']}; greedy, max_new_tokens "
             f"{report['gate']['decoding']['max_new_tokens']}; {report['when']}.", ""]
    lines += [f"- {r}" for r in report["reasons"]] or ["- every set passed its floor and non-inferiority"]
    lines += ["", "| set | n | production | candidate | diff | lower bound | McNemar p (equal) | floor | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, fmt="{:.3f}": "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)  # noqa: E731
    for r in report["sets"]:
        lines.append(f"| {r['set']} | {r['n']} | {f(r['production'])} | {f(r['candidate'])} | {f(r['diff'], '{:+.3f}')} "
                     f"| {f(r['lower'], '{:+.3f}')} | {f(r['p_equal'], '{:.3g}')} | {f(r['floor'])} | "
                     f"{'pass' if r['passed'] else 'FAIL'} |")
    lines += ["", f"Evaluation time: candidate {report['timing']['candidate_s']:.1f} s, production "
                  f"{report['timing'].get('production_s', 0.0):.1f} s.", ""]
    for who in ("candidate", "production"):
        for name, exs in (report.get("examples", {}).get(who) or {}).items():
            lines.append(f"Examples ({who}, {name}):")
            lines += [f"- {json.dumps(e['prompt'][:70])} -> {json.dumps(str(e['completion'])[:60])} (gold {e['answer']}, "
                      f"{'right' if e['correct'] else 'wrong'})" for e in exs]
            lines.append("")
    return "\n".join(lines) + "\n"


def promote(reg: ModelRegistry, name: str, candidate: int, gate: Gate | str | Path, *, context: str | None = None,
            also: Callable | None = None, dry_run: bool = False, device: str = "cpu",
            log: Callable[[str], None] = print) -> dict:
    """Gate `candidate` against production and promote it on a pass; returns the report dict.

    ``context``: a label stored with the report row (the continual loop's cycle key); ``also(con, report)``
    runs inside the transaction that records the report (and moves the aliases); the report then has its
    ``report_id``, ``json_path`` and ``md_path``.
    ``dry_run``: evaluate and report, move nothing. Without a production yet, only the floors apply.
    """
    gate = gate if isinstance(gate, Gate) else load_gate(gate)
    cand = reg.get(name, candidate)
    prod_v = reg.alias_version(name, PRODUCTION)
    if prod_v == candidate:
        raise RegistryError(f"{name}@{candidate} is already production")
    damaged = reg.verify(cand, deep=True)
    if damaged:
        raise RegistryError(f"candidate files damaged, not promoting: {'; '.join(damaged)}")
    log(f"[gmpo] gate: evaluating candidate {cand.ref} on {', '.join(s.name for s in gate.sets)}")
    c_verdicts, c_extra = evaluate_model(cand.path, gate, device)
    p_verdicts, p_extra = None, {"examples": {}, "wall_s": 0.0}
    if prod_v is not None:
        log(f"[gmpo] gate: evaluating production {name}@{prod_v}")
        p_verdicts, p_extra = evaluate_model(reg.get(name, prod_v).path, gate, device)
    crashpoint("promote:evaluated")
    verdict = decide(gate, c_verdicts, p_verdicts)
    if prod_v is None:
        verdict["notes"] = ["no production yet: floors only (first promotion)"]
    applied = verdict["passed"] and not dry_run
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report = {"name": name, "candidate": candidate, "production": prod_v, "passed": verdict["passed"],
              "applied": applied, "dry_run": dry_run, "reasons": verdict["reasons"], "sets": verdict["sets"],
              "notes": verdict.get("notes", []), "gate": gate.to_dict(), "when": when, "context": context,
              "candidate_path": cand.path, "candidate_sha256": cand.sha256,
              "timing": {"candidate_s": c_extra["wall_s"], "production_s": p_extra["wall_s"]},
              "examples": {"candidate": c_extra["examples"], "production": p_extra["examples"]}}
    stem = reg.report_dir(name) / f"{when.replace(':', '')}-v{candidate}-{'pass' if verdict['passed'] else 'fail'}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    report["json_path"], report["md_path"] = str(json_path), str(md_path)
    atomic_write(json_path, json.dumps(report, indent=2, default=str))
    atomic_write(md_path, render_markdown(report))
    crashpoint("promote:report_written")
    moves = {PRODUCTION: candidate, PREVIOUS: prod_v} if applied else {}
    if applied and prod_v is None:
        moves.pop(PREVIOUS)
    summary = "; ".join(verdict["reasons"]) or "passed"

    def record(con):
        rid = reg.record_report(con, name, candidate, prod_v, verdict["passed"], applied, context,
                                str(json_path), str(md_path), summary)
        report["report_id"] = rid
        if also is not None:
            also(con, report)

    try:
        reg.move_aliases(name, moves, f"promote {name}@{candidate}: gate {'passed' if applied else 'failed'}",
                         expect={PRODUCTION: prod_v}, also=record)
    except AliasConflict as e:
        report.update(applied=False, conflict=str(e))
        atomic_write(json_path, json.dumps(report, indent=2, default=str))
        raise
    crashpoint("promote:committed")
    return report


def rollback(reg: ModelRegistry, name: str, to: int | None = None) -> tuple[int | None, int]:
    """Production <- previous (or version `to`); returns (old production, new production). ``previous`` is
    cleared (a second rollback needs ``to``), so rolling back never re-promotes the version just removed."""
    old = reg.alias_version(name, PRODUCTION)
    target = to if to is not None else reg.alias_version(name, PREVIOUS)
    if target is None:
        raise RegistryError(f"{name} has no 'previous' version to roll back to; name one with --to VERSION "
                            f"(versions: {', '.join(str(v.version) for v in reg.versions(name)) or 'none'})")
    if target == old:
        raise RegistryError(f"{name}@{target} is already production")
    damaged = reg.verify(reg.get(name, target), deep=True)
    if damaged:
        raise RegistryError(f"cannot roll back to damaged files: {'; '.join(damaged)}")
    reg.move_aliases(name, {PRODUCTION: target, PREVIOUS: None}, f"rollback {name}: {old} -> {target}",
                     expect={PRODUCTION: old})
    return old, target
