"""A/B experiments served by `gmpo serve`: statistics from its request log (opened read-only).

`gmpo ab report` prints a markdown report per arm (requests, success rate with a Wilson interval, errors,
fallbacks), each arm against the control (difference with a Newcombe interval, a score test; McNemar on
the prompts both arms answered; latency medians/p95 with Mann-Whitney), a sample-ratio-mismatch check,
the sample size the observed effect needs, and a one-line recommendation; with --out it also writes
report.md, report.json and report.png there.

examples:
  gmpo ab report --db gmpo_requests.db                       # the newest experiment
  gmpo ab report --db gmpo_requests.db --experiment policy --metric feedback --out ab_report/
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `gmpo ab`."""
    sub = p.add_subparsers(dest="ab_command", metavar="SUBCOMMAND")
    r = sub.add_parser("report", help="statistics of one experiment", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--db", default="gmpo_requests.db", help="the request log of gmpo serve (default %(default)s)")
    r.add_argument("--experiment", default=None,
                   help="experiment id (name-hash) or name (its newest design); default: the newest experiment")
    r.add_argument("--metric", default="quality", choices=["quality", "feedback", "ok"],
                   help="success per request: quality >= --threshold (default), thumbs/correct feedback, or HTTP "
                        "200 and not truncated")
    r.add_argument("--threshold", type=float, default=0.5, help="quality counted as a success (default %(default)s)")
    r.add_argument("--alpha", type=float, default=0.05, help="significance level (default %(default)s)")
    r.add_argument("--power", type=float, default=0.8, help="power for the sample-size estimate (default %(default)s)")
    r.add_argument("--out", default="", help="directory for report.md, report.json and report.png")
    r.add_argument("--json", action="store_true", help="print the JSON report instead of markdown")


def run(args) -> int:
    """Run `gmpo ab <subcommand>`."""
    if args.ab_command != "report":
        print("usage: gmpo ab report --db gmpo_requests.db [--experiment ID] (see gmpo ab report --help)",
              file=sys.stderr)
        return 2
    if not 0 < args.alpha < 1 or not 0 < args.power < 1 or not 0 <= args.threshold <= 1:
        print("gmpo ab report: --alpha and --power must be in (0, 1), --threshold in [0, 1]", file=sys.stderr)
        return 2
    from gmpo.serve.abreport import analyse, figure, load, markdown

    try:
        exp_id, config, rows = load(args.db, args.experiment)
        rep = analyse(exp_id, config, rows, args.metric, args.threshold, args.alpha, args.power)
    except ValueError as e:
        print(f"gmpo ab report: {e}", file=sys.stderr)
        return 2
    text = markdown(rep)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(text)
        (out / "report.json").write_text(json.dumps(rep, indent=2))
        figure(rep, out / "report.png")
    print(json.dumps(rep, indent=2) if args.json else text)
    return 0
