"""Run several algorithms x seeds on one recipe and write a stability report.

    gmpo compare CONFIG.yaml --algos gmpo,grpo --seeds 3 [--out DIR] [key.path=value ...]

Each run is the recipe with its overrides, plus algorithm.loss=<algo>, train.seed=<seed>,
train.output_dir=<out>/runs/<algo>-s<seed> and train.resume=auto. Runs go one after another in seed-major
order (gmpo-s0, grpo-s0, gmpo-s1, ...); for a given seed every algorithm sees the same prompts.

Resumable: a finished run (its directory holds compare_done.json) is skipped; an interrupted run resumes
from its newest checkpoint, so set train.save_every=N for long runs. Asking for a finished run with a
different config is an error, not a silent mix. Settings under algorithm.* in the recipe (eps_low, eps_high,
reduction, ...) apply to every algorithm; leave them unset to get each algorithm's own preset.

With one optimizer step per rollout batch every token ratio is 1 and GMPO and GRPO have the same
gradient: compare off-policy updates (train.mini_batch_size below the rollout batch, or train.ppo_epochs > 1;
a warning says so). Set eval.every=N for a held-out accuracy curve (otherwise: start and end only).

The report (<out>/report/): report.md (the table), figures/*.png (reward and held-out accuracy, per-step
min/max token ratio on a log scale, entropy, KL, gradient norm, loss; mean over seeds with a min-max band)
and index.html (self-contained, works offline). --screenshot renders it with headless Chromium into
screenshot.png (skipped with a message when Chromium is not installed).
"""
from __future__ import annotations

import argparse
import sys

from gmpo.config import ConfigError


def _add_options(parser: argparse.ArgumentParser) -> None:
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `gmpo compare` (options may come before, between or after CONFIG and the overrides)."""
    _add_options(parser)
    # REMAINDER: everything from the first positional on, options included; run() re-parses it intermixed
    parser.add_argument("items", nargs=argparse.REMAINDER, metavar="CONFIG.yaml | key=value",
                        help="a YAML recipe (optional; defaults otherwise) followed by key.path=value overrides "
                             "applied to every run (see `gmpo train --help` for the keys)")
    parser.set_defaults(_compare_parser=parser)


def _reparse(args: argparse.Namespace) -> argparse.Namespace:
    """Options given after CONFIG (swallowed by REMAINDER) parsed together with the positional items."""
    if any(a in ("-h", "--help") for a in args.items):
        args._compare_parser.print_help()
        raise SystemExit(0)
    p = argparse.ArgumentParser(prog="gmpo compare", add_help=False)
    _add_options(p)
    p.add_argument("items", nargs="*")
    p.set_defaults(**{k: v for k, v in vars(args).items() if k != "items"})
    return p.parse_intermixed_args(args.items)


def run(args: argparse.Namespace) -> int:
    """Entry point of `gmpo compare`."""
    from gmpo.commands.train import split_items
    from gmpo.compare import parse_algos, parse_seeds, run_compare
    from gmpo.config import load_config

    args = _reparse(args)
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
