"""Synthetic run directories in the trainer's format, for the dashboard's tests, benchmark and demos.

:func:`write_run` writes config.yaml, metrics.jsonl (every metric of DESIGN section 4 plus ``ratio/log_hist``
and ``eval/accuracy`` every ``eval_every`` steps), alerts.jsonl (guard events at given steps) and
samples.jsonl, deterministically from a seed. The numbers are shaped like a real run (a rising reward, a
log-ratio spread that widens, GRPO noisier than GMPO) but are not from training.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import yaml

from gmpo.dashboard.series import HIST_BINS, HIST_HI, HIST_LO

EDGES = np.array([round(HIST_LO + (HIST_HI - HIST_LO) / HIST_BINS * i, 10) for i in range(HIST_BINS + 1)])


def log_hist(values: np.ndarray) -> list[float]:
    """Counts of `values` as ratio/log_hist: [l <= -1, 40 bins (e_i, e_i+1] over (-1, 1], l > 1] (right-closed,
    as gmpo.telemetry.collector.log_ratio_histogram bins them)."""
    idx = np.searchsorted(EDGES, np.asarray(values, dtype=float).reshape(-1), side="left")
    return np.bincount(idx, minlength=HIST_BINS + 2).astype(float).tolist()


def metrics_record(step: int, rng: np.random.Generator, *, steps: int, algo: str = "gmpo", tokens: int = 512,
                   hist: bool = True) -> dict:
    """One step's metrics.jsonl record."""
    frac = step / max(1, steps)
    noisy = 2.0 if algo != "gmpo" else 1.0
    reward = 1 / (1 + math.exp(-8 * (frac - 0.4))) * 0.8 + 0.1 + rng.normal(0, 0.04)
    spread = (0.05 + 0.25 * frac) * noisy
    l = rng.normal(0, spread, tokens)  # (tokens,) token log-ratios
    rho = np.exp(l)
    loss = float(rng.normal(0, 0.02 * noisy))
    gn = float(abs(rng.normal(0.8, 0.2 * noisy)))
    rollout_s, reward_s, train_s = 0.5 + rng.random() * 0.1, 0.02 + rng.random() * 0.01, 0.3 + rng.random() * 0.05
    rec = {
        "step": step, "reward/mean": reward, "reward/std": 0.3 + rng.random() * 0.05, "reward/frac_zero_std": 0.1,
        "reward/math/mean": reward, "rollout/len_mean": 120 + 40 * frac, "rollout/len_min": 20.0,
        "rollout/len_max": 256.0, "rollout/truncated_frac": 0.02, "policy/entropy": 1.2 - 0.6 * frac + rng.normal(0, 0.02),
        "policy/kl": 0.001 + 0.02 * frac, "ratio/token_min": float(rho.min()), "ratio/token_max": float(rho.max()),
        "ratio/token_p01": float(np.quantile(rho, 0.01)), "ratio/token_p99": float(np.quantile(rho, 0.99)),
        "ratio/seq_min": float(math.exp(-spread / 3)), "ratio/seq_max": float(math.exp(spread / 3)),
        "clip/frac_low": float((l < -0.4).mean()), "clip/frac_high": float((l > 0.4).mean()),
        "loss/value": loss, "grad/norm": gn, "stability/loss_var": (0.02 * noisy) ** 2,
        "stability/grad_norm_std": 0.2 * noisy, "stability/ratio_range": float(rho.max() / rho.min()),
        "guard/events": 0.0, "perf/step_s": rollout_s + reward_s + train_s, "perf/rollout_s": rollout_s,
        "perf/reward_s": reward_s, "perf/train_s": train_s, "perf/tokens_per_s": tokens / (rollout_s + reward_s + train_s),
        "perf/mfu": 0.02, "optim/lr": 1e-6,
    }
    if hist:
        rec["ratio/log_hist"] = log_hist(l)
    return rec


def write_run(run_dir: str | Path, steps: int, *, algo: str = "gmpo", seed: int = 0, eval_every: int = 10,
              eval_size: int = 100, hist: bool = True, alerts: dict[int, str] | None = None,
              samples_per_step: int = 2, tokens: int = 512) -> Path:
    """Write a synthetic run of `steps` steps; `alerts` maps step -> guard action (warn|skip|rollback|stop)."""
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"algorithm": {"loss": algo, "eps_low": None, "eps_high": None}, "train": {"seed": seed, "steps": steps},
           "data": {"dataset": "arithmetic", "eval_size": eval_size}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    rng = np.random.default_rng(seed)
    with open(d / "metrics.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps({"step": 0, "eval/accuracy": 0.3}) + "\n")
        for s in range(1, steps + 1):
            rec = metrics_record(s, rng, steps=steps, algo=algo, tokens=tokens, hist=hist)
            if eval_every and s % eval_every == 0:
                rec["eval/accuracy"] = min(1.0, 0.3 + 0.5 * s / steps + float(rng.normal(0, 0.02)))
            if alerts and s in alerts:
                rec["guard/events"] = float(sum(1 for a in alerts if a <= s))
            f.write(json.dumps(rec) + "\n")
    with open(d / "alerts.jsonl", "w", encoding="utf-8") as f:
        for s, action in sorted((alerts or {}).items()):
            f.write(json.dumps(alert_record(s, action)) + "\n")
    with open(d / "samples.jsonl", "w", encoding="utf-8") as f:
        for s in range(1, steps + 1):
            for k in range(samples_per_step):
                f.write(json.dumps(sample_record(s, k, rng)) + "\n")
    return d


def alert_record(step: int, action: str, detector: str = "grad_spike") -> dict:
    """A guard event as gmpo.guard writes it to alerts.jsonl."""
    return {"step": step, "detector": detector, "value": 9.5, "threshold": 6.0, "action": action,
            "time": 1.7e9 + step, "message": f"grad/norm z-score 9.5 > 6 at step {step}"}


def sample_record(step: int, k: int, rng: np.random.Generator) -> dict:
    """A samples.jsonl record: a prompt, its completion and their reward and advantage."""
    a, b = int(rng.integers(0, 20)), int(rng.integers(0, 20))
    right = bool(rng.random() < 0.5)
    answer = str(a + b)
    completion = f"{a} + {b} = {answer if right else a + b + 1}. The answer is {answer if right else a + b + 1}."
    reward = 1.0 if right else 0.0
    return {"step": step, "prompt": f"What is {a} + {b}? (#{step}.{k})", "answer": answer, "completion": completion,
            "rewards": {"math": reward}, "reward": reward, "advantage": reward - 0.5, "length": len(completion) // 3,
            "truncated": False, "seed": step * 1000 + k}
