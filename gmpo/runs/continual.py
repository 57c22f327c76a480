"""Safe continual learning (``gmpo continual``): one cycle per new data batch, every step recorded.

A cycle (states in the registry's ``cycles`` table, keyed by model name and the batch file's sha256):

1. ``new -> validated``: :func:`gmpo.runs.validate.validate_batch` (bad rows quarantined with file, row and
   field into ``<work_dir>/quarantine/``); a batch with too many bad rows is ``rejected``.
2. ``validated -> probed``: a safety probe, a few training steps from production on a sample with the guard
   on; any guard event whose action is in ``probe.fail_on`` (read with :func:`gmpo.runs.files.read_alerts`),
   an exception or a stop fails it (``rejected``).
3. ``probed -> trained``: incremental training from the production version pinned at the probe (resumable
   from its checkpoints), then the final checkpoint is registered (alias ``candidate``); a run the guard
   stopped is ``rejected`` instead.
4. ``trained -> done``: the gate (:func:`gmpo.runs.promotion.promote`); the cycle's final state commits in
   the same transaction as the report and the alias moves, so a kill can never promote twice.

Re-running the command resumes: finished cycles are skipped, an interrupted one continues from its state
(a registered candidate is found again by its run directory and data fingerprint, never added twice).
"""
from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from gmpo.runs.model_registry import CANDIDATE, PRODUCTION, ModelRegistry, RegistryError
from gmpo.runs.store import atomic_write, sha256_file
from gmpo.runs.validate import SUFFIXES, ValidateConfig, validate_batch

FINAL = ("promoted", "rejected")


@dataclass
class ProbeConfig:
    """The safety probe: a few guarded training steps on a sample of the batch."""

    steps: int = 2
    rows: int = 16
    fail_on: list[str] = field(default_factory=lambda: ["skip", "rollback", "stop"])
    overrides: dict[str, Any] = field(default_factory=dict)  # extra dotted overrides for the probe only


@dataclass
class TrainSection:
    """Incremental training: a gmpo train recipe plus overrides (the loop sets model, data and output_dir)."""

    recipe: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class ContinualConfig:
    """A continual recipe (see configs/continual_arithmetic.yaml)."""

    name: str
    gate: str
    work_dir: str = "runs/continual"
    base_model: str = ""  # registered as the first production when the name has no version yet
    seed: int = 0
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    train: TrainSection = field(default_factory=TrainSection)


def _section(cls, data: Any, where: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {data!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(data) - names)
    if bad:
        raise ValueError(f"{where}: unknown key(s) {', '.join(bad)}; valid: {', '.join(sorted(names))}")
    return cls(**data)


def load_continual(path: str | Path) -> ContinualConfig:
    """Read and validate a continual recipe YAML."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"continual config not found: {p}")
    data = yaml.safe_load(p.read_text()) or {}
    subs = {"validate": ValidateConfig, "probe": ProbeConfig, "train": TrainSection}
    parts = {k: _section(c, data.pop(k, None), k) for k, c in subs.items()}
    cfg = _section(ContinualConfig, {**data, "name": data.get("name"), "gate": data.get("gate")}, str(p))
    if not cfg.name or not cfg.gate:
        raise ValueError(f"{p}: 'name' (the registered model) and 'gate' (a gate YAML) are required")
    return dataclasses.replace(cfg, **parts)


class ContinualLoop:
    """Runs the cycles of one continual recipe against one registry (see the module docstring)."""

    def __init__(self, cfg: ContinualConfig, registry: ModelRegistry, log: Callable[[str], None] = print):
        from gmpo.runs.gate import gate_prompts, load_gate

        self.cfg, self.reg, self.log = cfg, registry, log
        self.gate = load_gate(cfg.gate)
        self.gate_sets = gate_prompts(self.gate)
        self.work = Path(cfg.work_dir)

    # -- records ---------------------------------------------------------------------------------------

    def cycle(self, sha: str) -> dict | None:
        """The cycle record of a batch (None if never seen)."""
        rows = self.reg.query("SELECT * FROM cycles WHERE name=? AND sha256=?", (self.cfg.name, sha))
        return {**dict(rows[0]), "details": json.loads(rows[0]["details"] or "{}")} if rows else None

    def cycles(self) -> list[dict]:
        """Every cycle of this model, oldest first."""
        rows = self.reg.query("SELECT sha256 FROM cycles WHERE name=? ORDER BY started", (self.cfg.name,))
        return [self.cycle(r[0]) for r in rows]

    def _update(self, con, sha: str, details: dict, **cols) -> None:
        sets = ", ".join(f"{k}=?" for k in cols)
        con.execute(f"UPDATE cycles SET {sets}{', ' if sets else ''}details=?, updated=? WHERE name=? AND sha256=?",
                    (*cols.values(), json.dumps(details), time.time(), self.cfg.name, sha))

    def _set(self, sha: str, details: dict, **cols) -> None:
        with self.reg.transaction() as con:
            self._update(con, sha, details, **cols)

    # -- the loop --------------------------------------------------------------------------------------

    def run(self, incoming: str | Path, max_cycles: int = 0) -> list[dict]:
        """One cycle per batch file in `incoming` (sorted by name) not finished yet; returns every cycle record."""
        files = sorted(p for p in Path(incoming).iterdir() if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            self.log(f"[continual] no batch files ({', '.join(SUFFIXES)}) in {incoming}")
        self._ensure_production()
        done = 0
        for f in files:
            sha = sha256_file(f)
            rec = self.cycle(sha)
            if rec is None:
                with self.reg.transaction() as con:
                    con.execute("INSERT OR IGNORE INTO cycles (name, batch, sha256, state, details, started, updated) "
                                "VALUES (?,?,?,?,?,?,?)", (self.cfg.name, f.name, sha, "new", "{}", time.time(), time.time()))
                rec = self.cycle(sha)
            if rec["state"] in FINAL:
                self.log(f"[continual] {f.name}: already done ({rec['decision']})")
                continue
            if max_cycles and done >= max_cycles:
                break
            self.run_cycle(f, sha)
            done += 1
        return self.cycles()

    def _ensure_production(self) -> None:
        if self.reg.alias_version(self.cfg.name, PRODUCTION) is not None:
            return
        if self.reg.versions(self.cfg.name) or not self.cfg.base_model:
            raise RegistryError(f"{self.cfg.name} has no production version: set one (gmpo registry alias set "
                                f"{self.cfg.name}@production VERSION) or give base_model in the recipe")
        from gmpo.models import resolve_model_path

        mv = self.reg.add(resolve_model_path(self.cfg.base_model), self.cfg.name, alias=PRODUCTION)
        self.log(f"[continual] registered base model {self.cfg.base_model} as {mv.ref} (production)")

    def run_cycle(self, path: Path, sha: str) -> dict:
        """Advance one batch's cycle from its recorded state to a final one; returns its record."""
        steps = {"new": self._validate, "validated": self._probe, "probed": self._train, "trained": self._gate}
        while (rec := self.cycle(sha))["state"] not in FINAL:
            self.log(f"[continual] {path.name}: {rec['state']} -> next")
            steps[rec["state"]](path, rec)
        self.log(f"[continual] {path.name}: {rec['decision']}")
        return rec

    def _dir(self, rec: dict) -> Path:
        return self.work / "cycles" / f"{Path(rec['batch']).stem}-{rec['sha256'][:10]}"

    def _validate(self, path: Path, rec: dict) -> None:
        t0 = time.perf_counter()
        v = validate_batch(path, self.cfg.validate, self.gate_sets)
        d = self._dir(rec)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write(d / "clean.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in v.clean))
        qpath = self.work / "quarantine" / f"{path.stem}-{rec['sha256'][:10]}.jsonl"
        atomic_write(qpath, "".join(json.dumps(b, ensure_ascii=False, default=str) + "\n" for b in v.bad))
        for b in v.bad[:10]:
            self.log(f"[continual]   bad row {b['file']}:{b['row']} field {b['field']}: {b['reason']}")
        if len(v.bad) > 10:
            self.log(f"[continual]   ... {len(v.bad) - 10} more in {qpath}")
        details = {"validation": v.summary(), "quarantine": str(qpath), "validate_s": time.perf_counter() - t0}
        if v.rejected:
            self._set(rec["sha256"], details, state="rejected", decision=f"rejected: validation: {v.rejected}")
        else:
            self._set(rec["sha256"], details, state="validated")

    def _train_config(self, rec: dict, out: Path, base_path: str, data: Path, extra: dict):
        from gmpo.config import make_config

        tr = self.cfg.train
        overrides = {**tr.overrides, **extra, "model.name_or_path": base_path, "data.dataset": str(data),
                     "data.eval_dataset": str(data), "data.prompt_field": "prompt", "data.answer_field": "answer",
                     "eval.at_start": False, "eval.at_end": False, "train.output_dir": str(out), "log.progress": False}
        return make_config(tr.recipe or None, overrides=overrides)

    def _probe(self, path: Path, rec: dict) -> None:
        from gmpo.runs.files import read_alerts
        from gmpo.train import GMPOTrainer

        t0, d, pc = time.perf_counter(), self._dir(rec), self.cfg.probe
        base = self.reg.resolve(f"{self.cfg.name}@{PRODUCTION}")
        rows = [json.loads(line) for line in (d / "clean.jsonl").read_text().splitlines() if line.strip()]
        random.Random(self.cfg.seed).shuffle(rows)
        sample = d / "probe.jsonl"
        atomic_write(sample, "".join(json.dumps(r) + "\n" for r in rows[: max(pc.rows, 1)]))
        out = d / "probe"
        shutil.rmtree(out, ignore_errors=True)  # a retried probe starts clean (its alerts are the verdict)
        cfg = self._train_config(rec, out, base.path, sample, {"train.steps": pc.steps, "train.resume": "",
                                                               "guard.enabled": True, "train.save_every": 0, **pc.overrides})
        failure = ""
        try:
            summary = GMPOTrainer(config=cfg).train()
            if summary.get("stop_reason"):
                failure = f"the run stopped: {summary['stop_reason']}"
        except Exception as e:  # a reward error, bad data the schema let through, a NaN: the probe's job
            failure = f"{type(e).__name__}: {e}"
        events = [a for a in read_alerts(out) if a.get("action") in pc.fail_on]
        if events:
            e = events[0]
            failure = (f"guard {e.get('detector')} -> {e.get('action')} at step {e.get('step')}: "
                       f"{e.get('message', '')}" + (f" ({failure})" if failure else ""))
        details = {**rec["details"], "probe": {"steps": pc.steps, "rows": min(pc.rows, len(rows)), "events": len(events),
                                               "failure": failure}, "probe_s": time.perf_counter() - t0}
        if failure:
            self._set(rec["sha256"], details, state="rejected", base_version=base.version,
                      decision=f"rejected: safety probe: {failure}")
        else:
            self._set(rec["sha256"], details, state="probed", base_version=base.version)

    def _train(self, path: Path, rec: dict) -> None:
        from gmpo.runs.checkpoint import checkpoint_dirs
        from gmpo.train import GMPOTrainer

        t0, d = time.perf_counter(), self._dir(rec)
        out = d / "train"
        mv = self._find_candidate(out, rec["sha256"])
        if mv is None:
            base = self.reg.get(self.cfg.name, rec["base_version"])
            cfg = self._train_config(rec, out, base.path, d / "clean.jsonl", {"train.resume": "auto"})
            summary = GMPOTrainer(config=cfg).train()
            if summary.get("stop_reason"):  # the guard stopped training: an unhealthy run is not a candidate
                details = {**rec["details"], "train_s": time.perf_counter() - t0, "train_summary": summary}
                self._set(rec["sha256"], details, state="rejected",
                          decision=f"rejected: training stopped: {summary['stop_reason']}")
                return
            ckpt = checkpoint_dirs(out / "checkpoints")[-1]
            mv = self.reg.add(ckpt, self.cfg.name, parent=base.version, run_dir=str(out),
                              config=json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
                              data_fingerprint=rec["sha256"], alias=CANDIDATE,
                              eval_results={"train_summary": {k: v for k, v in summary.items() if k != "run_dir"}})
        details = {**rec["details"], "train_s": rec["details"].get("train_s", 0.0) + time.perf_counter() - t0}
        self._set(rec["sha256"], details, state="trained", candidate=mv.version)

    def _find_candidate(self, run_dir: Path, sha: str):
        for mv in self.reg.versions(self.cfg.name):
            if mv.run_dir == str(run_dir) and mv.data_fingerprint == sha:
                return mv
        return None

    def _gate(self, path: Path, rec: dict) -> None:
        from gmpo.runs.promotion import promote

        t0, sha = time.perf_counter(), rec["sha256"]

        def finish(con, report: dict) -> None:  # runs inside the transaction that records the report
            details = {**rec["details"], "gate_s": time.perf_counter() - t0, "report_md": report["md_path"],
                       "report_json": report["json_path"]}
            decision = "promoted" if report["applied"] else "rejected"
            why = "" if report["applied"] else ": gate: " + "; ".join(report["reasons"])
            self._update(con, sha, details, state=decision, report_id=report["report_id"], decision=decision + why)

        promote(self.reg, self.cfg.name, rec["candidate"], self.gate, context=f"continual:{sha}", also=finish,
                log=self.log)
