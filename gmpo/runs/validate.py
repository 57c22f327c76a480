"""Validation of an incoming data batch for continual learning: schema, empty and duplicate rows, answers of
the declared type, optional arithmetic consistency, and overlap with the gate's evaluation sets.

Every bad row is reported with its file, row (the line number for JSON lines, else the 1-based record
number) and field, and written to a quarantine file; nothing is silently dropped. Clean rows keep every
column, with the question in ``prompt`` and the gold in ``answer``.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gmpo.runs.gate import normalize

SUFFIXES = (".jsonl", ".json", ".csv")
ANSWER_TYPES = ("integer", "number", "text")
_INT = re.compile(r"^[+-]?\d+$")
_ARITH = re.compile(r"what is\s+([-+*0-9\s]+?)\s*\?", re.IGNORECASE)


@dataclass
class ValidateConfig:
    """How a batch is checked (the ``validate`` section of a continual recipe)."""

    prompt_field: str = "prompt"
    answer_field: str = "answer"
    answer_type: str = "text"  # integer | number | text
    max_prompt_chars: int = 4000
    check_arithmetic: bool = False  # recompute "What is <expr>?" and flag a gold that differs
    max_bad_fraction: float = 0.5  # more bad rows than this fraction: the whole batch is rejected
    min_rows: int = 1  # fewer clean rows than this: rejected


@dataclass
class Validation:
    """The outcome: clean rows, bad rows (file, row, field, reason, record) and the batch verdict."""

    clean: list[dict] = field(default_factory=list)
    bad: list[dict] = field(default_factory=list)
    n_rows: int = 0
    rejected: str = ""  # why the batch as a whole is rejected ('' = accepted)

    def summary(self) -> dict:
        """Counts per reason kind, for the cycle record."""
        kinds: dict[str, int] = {}
        for b in self.bad:
            kinds[b["kind"]] = kinds.get(b["kind"], 0) + 1
        return {"rows": self.n_rows, "clean": len(self.clean), "bad": len(self.bad), "bad_by_kind": kinds,
                "rejected": self.rejected}


def read_rows(path: Path) -> tuple[list[tuple[int, Any]], list[dict]]:
    """([(row number, record)], [unparseable rows as bad-row dicts]) of a .jsonl, .json or .csv file."""
    text = path.read_text(encoding="utf-8", errors="replace")
    rows, bad = [], []
    if path.suffix == ".jsonl":
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                bad.append(_bad(path, i, "(line)", "schema", f"invalid JSON: {e.msg}", line))
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            return [], [_bad(path, e.lineno, "(file)", "schema", f"invalid JSON: {e.msg}", text[:200])]
        data = next(iter(data.values())) if isinstance(data, dict) and len(data) == 1 else data
        if not isinstance(data, list):
            return [], [_bad(path, 1, "(file)", "schema", "expected a list of records", text[:200])]
        rows = list(enumerate(data, 1))
    elif path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            rows = list(enumerate(csv.DictReader(f), 1))
    else:
        raise ValueError(f"{path}: unsupported batch file type (use {', '.join(SUFFIXES)})")
    return rows, bad


def _bad(path: Path, row: int, fld: str, kind: str, reason: str, record: Any) -> dict:
    return {"file": str(path), "row": row, "field": fld, "kind": kind, "reason": reason, "record": record}


def arithmetic_value(prompt: str) -> int | None:
    """The value of the expression in "What is <a op b ...>?" (+, -, * with * first); None when absent."""
    m = _ARITH.search(prompt)
    if not m:
        return None
    toks = re.findall(r"\d+|[-+*]", m.group(1))
    if not toks or len(toks) % 2 == 0 or not all(t.isdigit() for t in toks[::2]):
        return None
    terms, signs = [int(toks[0])], []
    for op, x in zip(toks[1::2], toks[2::2]):
        if op == "*":
            terms[-1] *= int(x)
        else:
            terms.append(int(x))
            signs.append(1 if op == "+" else -1)
    return terms[0] + sum(s * t for s, t in zip(signs, terms[1:]))


def _check_row(rec: Any, cfg: ValidateConfig) -> tuple[str, str, str] | None:
    """(field, kind, reason) of the first problem of one record, or None."""
    pf, af = cfg.prompt_field, cfg.answer_field
    if not isinstance(rec, dict):
        return "(row)", "schema", f"expected an object with '{pf}' and '{af}', got {type(rec).__name__}"
    for fld in (pf, af):
        if fld not in rec:
            return fld, "schema", f"missing field '{fld}' (fields: {', '.join(map(str, rec)) or 'none'})"
    prompt, answer = rec[pf], rec[af]
    if not isinstance(prompt, str):
        return pf, "schema", f"expected a string, got {type(prompt).__name__}"
    if not prompt.strip():
        return pf, "empty", "empty prompt"
    if len(prompt) > cfg.max_prompt_chars:
        return pf, "schema", f"prompt has {len(prompt)} characters > max_prompt_chars {cfg.max_prompt_chars}"
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return af, "empty", "empty answer"
    if isinstance(answer, (dict, list)):
        return af, "schema", f"expected a scalar answer, got {type(answer).__name__}"
    a = str(answer).strip()
    if cfg.answer_type == "integer" and not _INT.match(a):
        return af, "schema", f"answer {a[:40]!r} is not an integer"
    if cfg.answer_type == "number":
        try:
            float(a.replace(",", ""))
        except ValueError:
            return af, "schema", f"answer {a[:40]!r} is not a number"
    if cfg.check_arithmetic:
        want = arithmetic_value(prompt)
        if want is not None and _INT.match(a) and int(a) != want:
            return af, "wrong_answer", f"answer {a} but the expression in the prompt equals {want}"
    return None


def validate_batch(path: str | Path, cfg: ValidateConfig, gate_sets: dict[str, set[str]] | None = None) -> Validation:
    """Check every row of a batch file; see the module docstring. ``gate_sets``: {set: normalised prompts}
    of the gate (:func:`gmpo.runs.gate.gate_prompts`); a row whose prompt is in one is contamination."""
    if cfg.answer_type not in ANSWER_TYPES:
        raise ValueError(f"validate.answer_type must be one of {', '.join(ANSWER_TYPES)}, got {cfg.answer_type!r}")
    path = Path(path)
    rows, bad = read_rows(path)
    out = Validation(bad=bad, n_rows=len(rows) + len(bad))
    seen: dict[str, int] = {}
    for row, rec in rows:
        prompt = rec.get(cfg.prompt_field) if isinstance(rec, dict) else None
        key = normalize(prompt) if isinstance(prompt, str) else None
        hits = [name for name, prompts in (gate_sets or {}).items() if key in prompts]
        if hits:  # reported first: whatever else is wrong with it, this row leaks the gate's answers
            problem = (cfg.prompt_field, "contamination",
                       f"prompt is in the gate's evaluation set {', '.join(hits)} (training on it would contaminate the gate)")
        else:
            problem = _check_row(rec, cfg)
        if problem is None:
            if key in seen:
                problem = (cfg.prompt_field, "duplicate", f"duplicate of row {seen[key]}")
            else:
                seen[key] = row
        if problem:
            out.bad.append(_bad(path, row, *problem, rec))
            continue
        clean = {k: v for k, v in rec.items() if k not in (cfg.prompt_field, cfg.answer_field)}
        clean.update(prompt=rec[cfg.prompt_field], answer=str(rec[cfg.answer_field]).strip())
        out.clean.append(clean)
    out.bad.sort(key=lambda b: b["row"])
    if out.n_rows and len(out.bad) / out.n_rows > cfg.max_bad_fraction:
        out.rejected = (f"{len(out.bad)} of {out.n_rows} rows are bad (> max_bad_fraction {cfg.max_bad_fraction}): "
                        "the batch is rejected whole")
    elif len(out.clean) < cfg.min_rows:
        out.rejected = f"{len(out.clean)} clean rows < min_rows {cfg.min_rows}"
    return out
