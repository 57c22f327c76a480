"""The promotion gate: a YAML file naming held-out sets, decoding and the rules a candidate must pass.

::

    sets:                                # each set: the built-in arithmetic held-out split, a local file,
      arithmetic_heldout:                # or a `gmpo eval` benchmark
        source: arithmetic               #   keys of data.arithmetic (same defaults => training's held-out split)
        arithmetic: {seed: 1234}
        size: 100
        reward: arithmetic               #   a reward name, 'module:function', or {name, kwargs}; > 0.5 = correct
      my_file: {source: data/heldout.jsonl, prompt_field: prompt, answer_field: answer, reward: numeric_answer}
      gsm8k: {benchmark: gsm8k, data_dir: ../shared/data, size: 50}   # graded by gmpo.eval.run_eval
    decoding: {max_new_tokens: 16, template: chat, system_prompt: "", batch_size: 64, seed: 0}
    floors: {arithmetic_heldout: 0.3}    # absolute: candidate accuracy >= floor
    non_inferiority: {delta: 0.05, test: bootstrap, alpha: 0.05, n_boot: 10000}

Candidate and production are decoded greedily on the same prompts with the same seeds, so their verdicts
pair item by item; each set must pass its floor and the non-inferiority test against production.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TESTS = ("bootstrap", "mcnemar")


class GateError(ValueError):
    """The gate file is invalid; the message names the key."""


@dataclass
class EvalSet:
    """One held-out set of the gate."""

    name: str
    source: str = ""  # 'arithmetic' | a local file ('' with benchmark)
    benchmark: str = ""  # a gmpo eval benchmark name (graded by its grader)
    size: int = 100  # first N items (0 = all)
    reward: Any = "arithmetic"  # reward spec deciding correctness (> 0.5) for source sets
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    data_dir: str = ""  # benchmark files directory
    arithmetic: dict = field(default_factory=dict)  # data.arithmetic keys for source: arithmetic


@dataclass
class Decoding:
    """Greedy decoding settings shared by both models."""

    max_new_tokens: int = 32
    template: str = "chat"
    system_prompt: str = ""
    batch_size: int = 64
    seed: int = 0
    bf16: bool = False


@dataclass
class NonInferiority:
    """Paired non-inferiority: pass when the candidate is not worse than production by more than delta."""

    delta: float = 0.05
    test: str = "bootstrap"  # bootstrap (lower bound of the paired difference > -delta) | mcnemar
    alpha: float = 0.05  # one-sided level
    n_boot: int = 10000
    seed: int = 0


@dataclass
class Gate:
    """A parsed gate file."""

    sets: list[EvalSet]
    decoding: Decoding = field(default_factory=Decoding)
    floors: dict[str, float] = field(default_factory=dict)
    non_inferiority: NonInferiority = field(default_factory=NonInferiority)
    path: str = ""

    def to_dict(self) -> dict:
        """Plain dict (goes into the report)."""
        return dataclasses.asdict(self)


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise GateError(f"{where}: expected a mapping, got {data!r}")
    names = {f.name for f in dataclasses.fields(cls)} - {"name"}
    bad = sorted(set(data) - names)
    if bad:
        raise GateError(f"{where}: unknown key(s) {', '.join(bad)}; valid: {', '.join(sorted(names))}")
    try:
        return cls(**data) if cls is not EvalSet else cls(name=where.split(".")[-1], **data)
    except TypeError as e:
        raise GateError(f"{where}: {e}") from None


def parse_gate(data: dict, path: str = "") -> Gate:
    """Validate a gate mapping (see the module docstring) into a :class:`Gate`."""
    if not isinstance(data, dict):
        raise GateError(f"{path or 'gate'}: the top level must be a mapping")
    bad = sorted(set(data) - {"sets", "decoding", "floors", "non_inferiority"})
    if bad:
        raise GateError(f"{path or 'gate'}: unknown key(s) {', '.join(bad)}; valid: sets, decoding, floors, non_inferiority")
    raw_sets = data.get("sets") or {}
    if not isinstance(raw_sets, dict) or not raw_sets:
        raise GateError(f"{path or 'gate'}: 'sets' must map at least one set name to its settings")
    sets = [_build(EvalSet, v or {}, f"sets.{k}") for k, v in raw_sets.items()]
    for s in sets:
        if bool(s.source) == bool(s.benchmark):
            raise GateError(f"sets.{s.name}: give exactly one of source (arithmetic or a file) or benchmark")
        if s.size < 0:
            raise GateError(f"sets.{s.name}.size must be >= 0, got {s.size}")
    gate = Gate(sets=sets, decoding=_build(Decoding, data.get("decoding") or {}, "decoding"),
                floors={str(k): float(v) for k, v in (data.get("floors") or {}).items()},
                non_inferiority=_build(NonInferiority, data.get("non_inferiority") or {}, "non_inferiority"),
                path=path)
    unknown = sorted(set(gate.floors) - {s.name for s in sets})
    if unknown:
        raise GateError(f"floors: {', '.join(unknown)} not among the sets ({', '.join(s.name for s in sets)})")
    ni = gate.non_inferiority
    if ni.test not in TESTS:
        raise GateError(f"non_inferiority.test must be one of {', '.join(TESTS)}, got {ni.test!r}")
    if not (0 < ni.alpha < 0.5) or ni.delta < 0:
        raise GateError(f"non_inferiority: need 0 < alpha < 0.5 and delta >= 0, got alpha={ni.alpha} delta={ni.delta}")
    return gate


def load_gate(path: str | Path) -> Gate:
    """Read and validate a gate YAML file."""
    p = Path(path)
    if not p.is_file():
        raise GateError(f"gate file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise GateError(f"{p}: not valid YAML: {e}") from None
    return parse_gate(data, str(p))


# ----------------------------------------------------------------------------------------------
# the items of a set

def set_rows(s: EvalSet) -> list[dict]:
    """The items of a source set as dicts with ``prompt``, ``answer`` (+ other columns), cut to ``size``."""
    if s.source == "arithmetic":
        from gmpo.config import from_dict
        from gmpo.data.arithmetic import arithmetic_splits

        cfg = from_dict({"data": {"arithmetic": dict(s.arithmetic)}}).data.arithmetic
        rows = arithmetic_splits(cfg)[1].to_list()
    else:
        from gmpo.data.sources import load_prompts

        rows = load_prompts(s.source, "train", "", s.prompt_field, s.answer_field).to_list()
    return rows[: s.size] if s.size else rows


def gate_prompts(gate: Gate) -> dict[str, set[str]]:
    """``{set: normalised prompts}`` of every set (benchmark sets load their problems): for contamination checks."""
    out = {}
    for s in gate.sets:
        if s.benchmark:
            from gmpo.eval import load_benchmark

            out[s.name] = {normalize(p.question) for p in load_benchmark(s.benchmark, s.data_dir, s.size)}
        else:
            out[s.name] = {normalize(r["prompt"]) for r in set_rows(s)}
    return out


def normalize(text: Any) -> str:
    """Case- and whitespace-insensitive form of a prompt (what overlap and duplicate checks compare)."""
    return " ".join(str(text).lower().split())


# ----------------------------------------------------------------------------------------------
# paired statistics

def paired_counts(cand: list[bool], prod: list[bool]) -> dict[str, int]:
    """The 2x2 table of paired verdicts: both right, only production (b), only candidate (c), both wrong."""
    if len(cand) != len(prod):
        raise ValueError(f"unpaired verdicts: {len(cand)} candidate vs {len(prod)} production")
    both = sum(1 for c, p in zip(cand, prod) if c and p)
    b = sum(1 for c, p in zip(cand, prod) if p and not c)
    c_only = sum(1 for c, p in zip(cand, prod) if c and not p)
    return {"n": len(cand), "both": both, "prod_only": b, "cand_only": c_only, "neither": len(cand) - both - b - c_only}


def bootstrap_lower(t: dict[str, int], alpha: float, n_boot: int, seed: int) -> float:
    """One-sided (1 - alpha) lower bound of the paired accuracy difference, candidate - production.

    Item differences d_i = c_i - p_i take the values -1, 0, +1, so resampling n items with replacement is a
    multinomial draw of their counts; the bound is the alpha quantile of the resampled means (percentile
    bootstrap, Efron & Tibshirani 1993 ch. 13).
    """
    import numpy as np

    n = t["n"]
    if n == 0:
        return float("nan")
    probs = np.array([t["prod_only"], n - t["prod_only"] - t["cand_only"], t["cand_only"]], dtype=float) / n
    draws = np.random.default_rng(seed).multinomial(n, probs, size=n_boot)  # (n_boot, 3): counts of -1, 0, +1
    means = (draws[:, 2] - draws[:, 0]) / n  # (n_boot,)
    return float(np.quantile(means, alpha))


def mcnemar_noninferiority(t: dict[str, int], delta: float, alpha: float) -> dict[str, float]:
    """Non-inferiority of paired proportions with margin delta, in its Wald form (Liu et al. 2002, Stat. Med.):
    z = (d + delta) / se, d = (c - b) / n, se^2 = ((b + c) / n - d^2) / n; pass when z > z_(1-alpha).
    Also the exact two-sided McNemar p-value of equality (statsmodels)."""
    from scipy.stats import norm
    from statsmodels.stats.contingency_tables import mcnemar

    n, b, c = t["n"], t["prod_only"], t["cand_only"]
    d = (c - b) / n if n else float("nan")
    var = ((b + c) / n - d * d) / n if n else float("nan")
    se = math.sqrt(max(var, 0.0))
    z = math.inf if se == 0 else (d + delta) / se
    lower = d - norm.ppf(1 - alpha) * se
    p_equal = float(mcnemar([[t["both"], b], [c, t["neither"]]], exact=True).pvalue) if n else float("nan")
    return {"z": z, "lower": lower, "p_equal": p_equal, "passed": bool(z > norm.ppf(1 - alpha))}


def decide_set(name: str, cand: list[bool], prod: list[bool] | None, gate: Gate) -> dict:
    """Floor and non-inferiority verdict of one set; a dict for the report (reasons say why it failed)."""
    ni = gate.non_inferiority
    n = len(cand)
    acc_c = sum(cand) / n if n else float("nan")
    row: dict[str, Any] = {"set": name, "n": n, "candidate": acc_c, "production": None, "diff": None,
                           "lower": None, "p_equal": None, "floor": gate.floors.get(name), "reasons": []}
    if n == 0:
        row["reasons"].append(f"{name}: no items evaluated")
    if row["floor"] is not None and not acc_c >= row["floor"]:
        row["reasons"].append(f"{name}: candidate accuracy {acc_c:.3f} < floor {row['floor']:.3f}")
    if prod is not None and n:
        t = paired_counts(cand, prod)
        row.update(table=t, production=sum(prod) / n, diff=(t["cand_only"] - t["prod_only"]) / n)
        m = mcnemar_noninferiority(t, ni.delta, ni.alpha)
        row["p_equal"] = m["p_equal"]
        if ni.test == "bootstrap":
            row["lower"] = bootstrap_lower(t, ni.alpha, ni.n_boot, ni.seed)
            ok = row["lower"] > -ni.delta
        else:
            row["lower"], row["z"], ok = m["lower"], m["z"], m["passed"]
        if not ok:
            row["reasons"].append(
                f"{name}: not non-inferior: {ni.test} {100 * (1 - ni.alpha):.0f}% lower bound of candidate - production "
                f"= {row['lower']:+.3f} <= -{ni.delta:.3f} (candidate {acc_c:.3f}, production {row['production']:.3f}, "
                f"n={n}, discordant {t['cand_only']} for / {t['prod_only']} against)")
    row["passed"] = not row["reasons"]
    return row


def decide(gate: Gate, cand: dict[str, list[bool]], prod: dict[str, list[bool]] | None) -> dict:
    """The gate's verdict over every set: ``{"passed", "reasons", "sets": [per-set rows]}``."""
    rows = [decide_set(s.name, cand[s.name], None if prod is None else prod[s.name], gate) for s in gate.sets]
    reasons = [r for row in rows for r in row["reasons"]]
    return {"passed": not reasons, "reasons": reasons, "sets": rows}
