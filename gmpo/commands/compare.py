"""Run several algorithms x seeds on one recipe and write a stability report.

    gmpo compare CONFIG.yaml --algos gmpo,grpo --seeds 3 [--out DIR] [key.path=value ...]

Each run is the recipe with its overrides, plus algorithm.loss=<algo>, train.seed=<seed>,
train.output_dir=<out>/runs/<algo>-s<seed> and train.resume=auto. Runs go one after another in seed-major
order (gmpo-s0, grpo-s0, gmpo-s1, ...); for a given seed every algorithm sees the same prompts.

Resumable: a finished run (its directory holds compare_done.json) is skipped; an interrupted run resumes
from its newest checkpoint, so set train.save_every=N for long runs. Asking for a finished run with a
different config is an error, not a silent mix. Settings under algorithm.* in the recipe (eps_low, eps_high,
reduction, ...) apply to every algorithm; leave them unset to get each algorithm's own preset.

The report (<out>/report/): report.md (the table), figures/*.png (reward and held-out accuracy, per-step
min/max token ratio on a log scale, entropy, KL, gradient norm, loss; mean over seeds with a min-max band)
and index.html (self-contained, works offline). --screenshot renders it with headless Chromium into
screenshot.png (skipped with a message when Chromium is not installed).
"""
from __future__ import annotations

import argparse
import sys

from gmpo.config import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `gmpo compare`."""
    parser.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value",
                        help="a YAML recipe (optional; defaults otherwise) followed by key.path=value overrides "
                             "applied to every run (see `gmpo train --help` for the keys)")
    parser.add_argument("--algos", default="gmpo,grpo",
                        help="comma-separated algorithms: gmpo, grpo, gspo, dr_grpo, dapo (default: gmpo,grpo)")
    parser.add_argument("--seeds", default="3",
                        help="a number N (seeds train.seed .. train.seed+N-1) or a comma-separated list (default: 3)")
    parser.add_argument("--out", default="runs/compare",
                        help="output directory: runs/<algo>-s<seed>/ and report/ go here (default: runs/compare)")
    parser.add_argument("--target-reward", type=float, default=0.5,
                        help="the 'steps to target reward' column: first step whose smoothed reward/mean reaches "
                             "this (default: 0.5)")
    parser.add_argument("--smooth", type=int, default=5,
                        help="trailing window (steps) of the reward mean used for --target-reward (default: 5)")
    parser.add_argument("--title", default=None, help="report title (default: '<ALGO> vs <ALGO>: stability comparison')")
    parser.add_argument("--screenshot", action="store_true",
                        help="also save <out>/report/screenshot.png rendered by headless Chromium")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: rebuild the report from the finished runs under --out")


def run(args: argparse.Namespace) -> int:
    """Entry point of `gmpo compare`."""
    from gmpo.commands.train import split_items
    from gmpo.compare import parse_algos, parse_seeds, run_compare
    from gmpo.config import load_config

    try:
        path, overrides = split_items(args.items)
        base = load_config(path, overrides)  # validates the recipe and overrides before anything runs
        algos = parse_algos(args.algos)
        seeds = parse_seeds(args.seeds, base.train.seed)
        if args.smooth < 1:
            raise ConfigError(f"--smooth must be >= 1, got {args.smooth}")
        res = run_compare(path, algos, seeds, args.out, overrides, target_reward=args.target_reward,
                          smooth=args.smooth, screenshot=args.screenshot, report_only=args.report_only,
                          title=args.title)
    except (ConfigError, FileNotFoundError) as e:
        print(f"gmpo compare: error: {e}", file=sys.stderr)
        return 2
    print(res.report.markdown.read_text().split("\n## ")[0].strip())
    print(f"\nreport: {res.report.html}")
    if res.report.screenshot:
        print(f"screenshot: {res.report.screenshot}")
    return 0
