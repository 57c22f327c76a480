"""Algorithms x seeds on one recipe, sequentially and resumably, then the stability report.

Every run uses the same resolved config except ``algorithm.loss`` (the algorithm) and ``train.seed``; the
seed fixes the data order and sampling, so the algorithms see identical prompts for a given seed. Runs go to
``<out>/runs/<algo>-s<seed>/``; a finished run holds ``compare_done.json`` and is skipped next time, an
interrupted one resumes from its newest checkpoint (``train.resume=auto``; set ``train.save_every`` so there
is one). The report goes to ``<out>/report/`` (see :func:`gmpo.report.write_report`).
"""
from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gmpo.algo.registry import PRESETS
from gmpo.config import Config, ConfigError, load_config, to_dict

DONE_FILE = "compare_done.json"
ALGOS = PRESETS.names()


@dataclass
class CompareResult:
    """What :func:`run_compare` did: run directories (in plan order), which ran/were skipped, the report."""

    run_dirs: list[Path]
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    report: object = None  # gmpo.report.ReportPaths


def parse_algos(spec: str | list[str]) -> list[str]:
    """'gmpo,grpo' -> ['gmpo', 'grpo'] (validated, duplicates removed, order kept)."""
    items = spec if isinstance(spec, list) else [s.strip() for s in str(spec).split(",")]
    out: list[str] = []
    for a in items:
        if not a:
            continue
        if a not in ALGOS:
            raise ConfigError(f"--algos: unknown algorithm {a!r}; choose from {', '.join(ALGOS)}")
        if a not in out:
            out.append(a)
    if not out:
        raise ConfigError("--algos: give at least one algorithm, e.g. gmpo,grpo")
    return out


def parse_seeds(spec: str | int, base: int = 0) -> list[int]:
    """'3' -> [base, base+1, base+2] (a count); '0,5,7' -> [0, 5, 7] (explicit seeds)."""
    s = str(spec).strip()
    try:
        nums = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: expected a count (3) or a list (0,1,2), got {spec!r}") from None
    if "," in s:
        seeds = nums
    else:
        if not nums or nums[0] < 1:
            raise ConfigError(f"--seeds: a count must be >= 1, got {spec!r}")
        seeds = list(range(base, base + nums[0]))
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: duplicate seeds in {spec!r}")
    return seeds


def run_name(algo: str, seed: int) -> str:
    """The run directory name of one algorithm x seed."""
    return f"{algo}-s{seed}"


def run_config(config_path: str | Path | None, overrides: list[str], algo: str, seed: int, run_dir: Path) -> Config:
    """The resolved config of one run: the recipe + overrides, then algorithm, seed, output dir, resume=auto."""
    return load_config(config_path, [*overrides, f"algorithm.loss={algo}", f"train.seed={seed}",
                                     f"train.output_dir={run_dir}", "train.resume=auto"])


def on_policy_note(cfg: Config) -> str | None:
    """A warning when every rollout batch gets a single optimizer step (all token ratios are exactly 1)."""
    n = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    updates = cfg.train.ppo_epochs * -(-n // (cfg.train.mini_batch_size or n))
    if updates > 1:
        return None
    return (f"one optimizer step per rollout batch (train.mini_batch_size={cfg.train.mini_batch_size or n} of {n} "
            f"completions, ppo_epochs={cfg.train.ppo_epochs}): every token ratio is 1, so GMPO and GRPO "
            f"(seq-mean-token-mean) have the same gradient and the comparison cannot separate them; set "
            f"train.mini_batch_size below {n} or train.ppo_epochs > 1 (the paper: 8 updates per rollout batch)")


def _fingerprint(cfg: Config) -> dict:
    """The config minus the keys that legitimately differ between invocations of the same run."""
    d = to_dict(cfg)
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("output_dir", "resume")}
    return d


def _train(cfg: Config) -> dict:
    from gmpo.train import GMPOTrainer

    trainer = GMPOTrainer(config=cfg)
    try:
        return trainer.train()
    finally:
        del trainer
        gc.collect()


def run_compare(config_path: str | Path | None, algos: list[str], seeds: list[int], out: str | Path,
                overrides: list[str] | None = None, *, target_reward: float = 0.5, smooth: int = 5,
                screenshot: bool = False, report_only: bool = False, title: str | None = None,
                train_fn: Callable[[Config], dict] | None = None, log: Callable[[str], None] = print) -> CompareResult:
    """Train every algorithm x seed not finished yet (seed-major order), then write ``<out>/report``.

    `train_fn(cfg) -> summary` defaults to building a :class:`gmpo.train.GMPOTrainer` and calling ``train()``.
    A finished run whose recorded config differs from the one asked for is an error (never silently mixed).
    """
    out = Path(out)
    overrides = list(overrides or [])
    train_fn = train_fn or _train
    plan = [(a, s) for s in seeds for a in algos]  # seed-major: an interrupted comparison stays balanced
    res = CompareResult([out / "runs" / run_name(a, s) for a, s in plan])
    cfgs = {}
    for (algo, seed), rd in zip(plan, res.run_dirs):  # resolve every config first: a bad key fails before any training
        cfgs[rd] = run_config(config_path, overrides, algo, seed, rd)
    on_policy = on_policy_note(cfgs[res.run_dirs[0]]) if len(algos) > 1 else None
    if on_policy:
        log(f"[compare] warning: {on_policy}")
    for i, ((algo, seed), rd) in enumerate(zip(plan, res.run_dirs), start=1):
        cfg, name = cfgs[rd], run_name(algo, seed)
        done = rd / DONE_FILE
        if done.is_file():
            rec = json.loads(done.read_text())
            if rec.get("config") != _fingerprint(cfg):
                raise ConfigError(f"{rd} finished with a different config than this comparison asks for; "
                                  f"use another --out or delete that run directory")
            log(f"[compare {i}/{len(plan)}] {name}: finished earlier ({rec.get('steps')} steps), skipped")
            res.skipped.append(name)
            continue
        if report_only:
            log(f"[compare {i}/{len(plan)}] {name}: not finished, left out of the report")
            continue
        log(f"[compare {i}/{len(plan)}] {name}: training {cfg.train.steps} steps -> {rd}")
        t0 = time.perf_counter()
        summary = train_fn(cfg)
        rec = {"algo": algo, "seed": seed, "steps": summary.get("steps"), "stop_reason": summary.get("stop_reason"),
               "eval_before": summary.get("eval_before"), "eval_after": summary.get("eval_after"),
               "wall_s": time.perf_counter() - t0, "config": _fingerprint(cfg)}
        done.write_text(json.dumps(rec, indent=1))
        res.trained.append(name)
    finished = [rd for rd in res.run_dirs if (rd / DONE_FILE).is_file()]
    if not finished:
        raise ConfigError(f"no finished runs under {out / 'runs'}: nothing to report")
    from gmpo.report import write_report

    label = " vs ".join(a.upper() for a in algos)
    notes = [f"Recipe: {config_path or '(defaults)'}" + (f" with overrides {' '.join(overrides)}" if overrides else "")
             + f"; seeds {', '.join(map(str, seeds))}; every algorithm saw the same prompts for a given seed."]
    if on_policy:
        notes.append("Warning: " + on_policy)
    stopped = [rd.name for rd in finished if json.loads((rd / DONE_FILE).read_text()).get("stop_reason")]
    if stopped:
        notes.append(f"Stopped early by the guard: {', '.join(stopped)}.")
    res.report = write_report(finished, out / "report", target_reward=target_reward, smooth=smooth,
                              title=title or f"{label}: stability comparison", screenshot=screenshot, notes=notes)
    log(f"[compare] report: {res.report.html}")
    return res
