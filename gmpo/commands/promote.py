"""Promote a registered candidate to production through an evaluation gate.

Candidate and production are decoded greedily on the gate's held-out sets with the same prompts and seeds;
the candidate must reach every absolute floor and be non-inferior to production (paired bootstrap lower
bound of the accuracy difference > -delta, or a McNemar-type test). Pass: production -> candidate and
previous -> old production, in one transaction. Fail: nothing moves. Either way a markdown + JSON report
is written into the registry (<db>.d/reports/NAME/) and recorded. Exit status: 0 pass, 3 fail, 1 error.

examples:
  gmpo promote arith --candidate 4 --gate configs/gate_arithmetic.yaml
  gmpo promote arith --candidate 4 --gate configs/gate_arithmetic.yaml --dry-run
"""
from __future__ import annotations

import argparse
import sys

from gmpo.commands.registry import add_registry_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `gmpo promote`."""
    p.add_argument("name", help="registered model name")
    p.add_argument("--candidate", required=True, help="candidate version number (or an alias, e.g. candidate)")
    p.add_argument("--gate", required=True, help="gate YAML: sets, decoding, floors, non_inferiority "
                                                 "(see configs/gate_arithmetic.yaml)")
    p.add_argument("--dry-run", action="store_true", help="evaluate and write the report, move nothing")
    p.add_argument("--device", default="cpu", help="device the two models are evaluated on (cpu, cuda, ...)")
    add_registry_option(p)


def run(args) -> int:
    """Run `gmpo promote`."""
    from gmpo.runs.gate import GateError
    from gmpo.runs.model_registry import ModelRegistry, RegistryError
    from gmpo.runs.promotion import promote

    reg = ModelRegistry(args.registry)
    try:
        cand = args.candidate
        version = int(cand.lstrip("v")) if cand.lstrip("v").isdigit() else reg.resolve(f"{args.name}@{cand}").version
        report = promote(reg, args.name, version, args.gate, dry_run=args.dry_run, device=args.device)
    except (RegistryError, GateError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        reg.close()
    print(open(report["md_path"], encoding="utf-8").read())
    print(f"report: {report['md_path']}")
    return 0 if report["passed"] else 3
