"""Tune the arithmetic recipe with `gmpo tune`, then compare the best config with the default on fresh seeds.

One command (the real measurement, hours of CPU on a 2-core machine):

    .venv/bin/python benchmarks/tune_arithmetic.py

1. the study: configs/arithmetic_gmpo.yaml (SmolLM2-135M-Instruct) over configs/tune_space_arithmetic.yaml
   (lr, eps_low, eps_high, mini-batch size, temperature), --trials 12 of --steps 10 steps each, held-out
   accuracy every 5 steps to the median pruner, 2 workers x 1 thread (subprocess trials);
2. the best config and the default recipe, each trained --final-steps steps (default: the recipe's 20) on
   --seeds 1,2,3 (not the study's seed 0, on which the best config was selected), held-out accuracy after
   training, mean +- std over seeds;
3. a dated section appended to benchmarks/RESULTS.md: machine and load, the commands, the trial table,
   the best parameters, the comparison table and a verdict, whichever config wins.

A rerun resumes the study (finished trials are kept) and skips finished comparison runs.
``--tiny`` checks the whole pipeline in about a minute on the random-init tiny model (a matching tiny
space; results go to runs/tune_arithmetic_tiny/RESULTS.md, never to benchmarks/RESULTS.md).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY_OVERRIDES = ["rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=8",
                  "train.mini_batch_size=4", "train.micro_batch_size=4", "data.eval_size=8", "train.bf16=false"]
TINY_SPACE = {"optim.lr": {"log_uniform": [1e-4, 1e-2]}, "algorithm.eps_low": {"uniform": [0.2, 0.6]},
              "algorithm.eps_high": {"uniform": [0.2, 0.6]}, "train.mini_batch_size": {"categorical": [4, 8]},
              "rollout.temperature": {"uniform": [0.7, 1.2]}}


def machine() -> str:
    """CPU, cores, torch version and the load average now."""
    import torch

    from gmpo.perf import cpu_name

    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}; load average {load}"


def train_runs(jobs: list[tuple[str, Path, list[str]]], workers: int, threads: int) -> None:
    """Run `gmpo train CONFIG OVERRIDES` for each (label, run_dir, args) not finished yet, `workers` at once."""
    todo = [j for j in jobs if not (j[1] / "tune_bench_done").exists()]
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                label, run_dir, args = todo.pop(0)
            run_dir.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-c", "import sys; from gmpo.cli import main; sys.exit(main())", "train", *args,
                   f"train.output_dir={run_dir}", f"train.threads={threads}", "log.progress=false"]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            t0 = time.perf_counter()
            with open(run_dir / "train.log", "w") as log:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
            print(f"[bench] {label}: exit {rc} in {time.perf_counter() - t0:.0f} s -> {run_dir}", flush=True)
            if rc == 0:
                (run_dir / "tune_bench_done").write_text("ok\n")

    threads_ = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads_:
        t.start()
    for t in threads_:
        t.join()


def final_accuracy(run_dir: Path) -> tuple[float | None, float | None]:
    """(held-out accuracy before, after) from a run directory's metrics."""
    from gmpo.runs.files import METRICS, read_metrics

    recs = [r for r in read_metrics(run_dir / METRICS) if "eval/accuracy" in r]
    before = next((r["eval/accuracy"] for r in recs if r["step"] == 0), None)
    after = recs[-1]["eval/accuracy"] if recs and recs[-1]["step"] > 0 else None
    return before, after


def mean_std(xs: list[float]) -> str:
    """'0.523 +- 0.041 (n=3)' (sample std)."""
    if not xs:
        return "n/a"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3f} +- {sd:.3f} (n={len(xs)})"


def compare_section(best_cfg: Path, recipe: str, overrides: list[str], seeds: list[int], out: Path,
                    final_steps: int, workers: int, threads: int) -> tuple[list[str], dict]:
    """Train best and default on every seed; the markdown lines and {label: [accuracies]}."""
    common = [f"train.steps={final_steps}", "eval.every=0", "eval.at_start=true", "eval.at_end=true"]
    jobs = []
    for seed in seeds:
        jobs.append((f"default s{seed}", out / "compare" / f"default-s{seed}", [recipe, *overrides, *common, f"train.seed={seed}"]))
        jobs.append((f"best s{seed}", out / "compare" / f"best-s{seed}", [str(best_cfg), *overrides, *common, f"train.seed={seed}"]))
    train_runs(jobs, workers, threads)
    accs: dict[str, list[float]] = {"default": [], "best": []}
    lines = ["| config | " + " | ".join(f"seed {s}" for s in seeds) + " | mean +- std |", "|---|" + "---|" * (len(seeds) + 1)]
    before = None
    for label in ("default", "best"):
        cells = []
        for seed in seeds:
            b, a = final_accuracy(out / "compare" / f"{label}-s{seed}")
            before = before if before is not None else b
            cells.append("failed" if a is None else f"{a:.3f}")
            if a is not None:
                accs[label].append(a)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean_std(accs[label])} |")
    lines.append("")
    lines.append(f"Held-out accuracy before training: {before if before is None else f'{before:.3f}'}.")
    return lines, accs


def verdict(accs: dict) -> str:
    """Which config won on the mean, and whether the gap is larger than the seed-to-seed spread."""
    d, b = accs["default"], accs["best"]
    if not d or not b:
        return "Verdict: incomplete (a comparison run failed; see its train.log)."
    gap = statistics.mean(b) - statistics.mean(d)
    spread = max(statistics.stdev(d) if len(d) > 1 else 0.0, statistics.stdev(b) if len(b) > 1 else 0.0)
    who = "the tuned config" if gap > 0 else "the default recipe" if gap < 0 else "neither"
    size = "within" if abs(gap) <= spread else "larger than"
    return (f"Verdict: {who} has the higher mean held-out accuracy (difference {gap:+.3f}, {size} the larger "
            f"seed-to-seed std {spread:.3f}).")


def main(argv: list[str] | None = None) -> int:
    """Run the study and the comparison; append the section to the results file."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="configs/arithmetic_gmpo.yaml")
    p.add_argument("--space", default="configs/tune_space_arithmetic.yaml")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--steps", type=int, default=10, help="training steps per trial")
    p.add_argument("--eval-every", type=int, default=5, help="intermediate held-out accuracy (pruning) every N steps")
    p.add_argument("--final-steps", type=int, default=None, help="steps of the comparison runs (default: the recipe's)")
    p.add_argument("--seeds", default="1,2,3", help="comparison seeds (default 1,2,3; the study uses the recipe's seed)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="total threads, split between the workers")
    p.add_argument("--out", default=None, help="default runs/tune_arithmetic (runs/tune_arithmetic_tiny with --tiny)")
    p.add_argument("--results", default=None, help="default benchmarks/RESULTS.md (the out dir's RESULTS.md with --tiny)")
    p.add_argument("--tiny", action="store_true", help="pipeline check on the random-init tiny model")
    args = p.parse_args(argv)
    os.chdir(ROOT)
    out = Path(args.out or ("runs/tune_arithmetic_tiny" if args.tiny else "runs/tune_arithmetic"))
    results = Path(args.results or (out / "RESULTS.md" if args.tiny else "benchmarks/RESULTS.md"))
    overrides, space = [], args.space
    if args.tiny:
        from gmpo.testing import save_tiny

        out.mkdir(parents=True, exist_ok=True)
        model = out / "tiny_model"
        if not (model / "config.json").exists():
            save_tiny(model)
        overrides = [f"model.name_or_path={model}", *TINY_OVERRIDES]
        space = str(out / "tiny_space.yaml")
        Path(space).write_text(yaml.safe_dump(TINY_SPACE))
    from gmpo.config import load_config
    from gmpo.tune import TuneSettings, run_study

    final_steps = args.final_steps or load_config(args.recipe, overrides).train.steps
    seeds = [int(s) for s in args.seeds.split(",")]
    started, t0 = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    where = machine()
    # no evaluation at step 0 in the trials: it is the same for every trial (the comparison runs measure it)
    tune_overrides = [*overrides, f"train.steps={args.steps}", f"eval.every={args.eval_every}", "eval.at_start=false"]
    tune_cmd = (f"gmpo tune {args.recipe} --space {space} --trials {args.trials} --workers {args.workers} "
                f"--threads {args.threads} --out {out / 'study'} " + " ".join(shlex.quote(o) for o in tune_overrides))
    print(f"[bench] {tune_cmd}", flush=True)
    res = run_study(TuneSettings(config=args.recipe, space=space, trials=args.trials, overrides=tune_overrides,
                                 workers=args.workers, threads=args.threads, out=str(out / "study")))
    tune_s = time.perf_counter() - t0
    if res.best_config is None:
        print("[bench] no trial completed: nothing to compare", file=sys.stderr)
        return 1
    lines, accs = compare_section(res.best_config, args.recipe, overrides, seeds, out, final_steps,
                                  args.workers, max(1, args.threads // args.workers))
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.best_params.items())
    counts = ", ".join(f"{n} {k}" for k, n in sorted(res.counts.items()))
    section = [
        f"\n## gmpo tune: arithmetic recipe, SmolLM2-135M-Instruct ({started:%Y-%m-%d %H:%M} UTC)"
        + (" [tiny-model pipeline check]" if args.tiny else ""), "",
        f"Machine: {where}. Command: `.venv/bin/python benchmarks/tune_arithmetic.py "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])) + "`.",
        f"Study ({tune_s / 60:.0f} min): `{tune_cmd}`: {counts}. Objective 0.7 x held-out accuracy + 0.3 x "
        "stability (1 / (1 + CV of the per-step gradient norm)); median pruner on held-out accuracy.", "",
        (out / "study" / "report" / "trials.md").read_text().rstrip(), "",
        f"Best trial {res.best_number} (value {res.best_value:.4f}): {params}.", "",
        f"Best config vs the default recipe, {final_steps} steps, fresh seeds {args.seeds} "
        f"(total {(time.perf_counter() - t0) / 60:.0f} min), held-out accuracy after training:", "",
        *lines, "", verdict(accs), "",
    ]
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, "a") as f:
        f.write("\n".join(section))
    print("\n".join(section))
    print(f"[bench] appended to {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
