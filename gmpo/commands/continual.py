"""Safe continual learning: one cycle per new data batch in --incoming, from validation to promotion.

Each batch file (.jsonl, .json, .csv; sorted by name) goes through: validation (schema, empty and
duplicate rows, answers of the declared type, overlap with the gate's evaluation sets; bad rows are
reported with file, row and field and quarantined into <work_dir>/quarantine/), a safety probe (a few
guarded training steps: any guard skip/rollback/stop fails it), incremental training from production,
registration as a candidate, and the gate (`gmpo promote`): promoted or rejected. Every cycle is recorded
in the registry; re-running resumes where a cycle stopped, and a finished batch is never processed again.
A batch is identified by its content (sha256): write batch files elsewhere and move them into --incoming
when complete (a rename), so a half-written file is never picked up.

examples:
  gmpo continual configs/continual_arithmetic.yaml --incoming data/incoming
  gmpo continual configs/continual_arithmetic.yaml --incoming data/incoming --registry /tmp/reg.db --max-cycles 1
  gmpo continual configs/continual_arithmetic.yaml --incoming data/incoming --watch 300   # poll every 5 min
"""
from __future__ import annotations

import argparse
import sys
import time

from gmpo.commands.registry import add_registry_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `gmpo continual`."""
    p.add_argument("config", help="continual recipe YAML: name, gate, work_dir, base_model, validate, probe, train "
                                  "(see configs/continual_arithmetic.yaml)")
    p.add_argument("--incoming", required=True, help="directory of data batches, one cycle per file")
    p.add_argument("--max-cycles", type=int, default=0, help="stop after this many cycles (0 = every new batch)")
    p.add_argument("--watch", type=float, default=0.0,
                   help="after the new batches are done, poll --incoming every this many seconds for more "
                        "(0 = exit; stop a watcher with Ctrl-C or SIGTERM: an interrupted cycle resumes next time)")
    add_registry_option(p)


def run(args) -> int:
    """Run `gmpo continual`."""
    from pathlib import Path

    from gmpo.runs.continual import ContinualLoop, load_continual
    from gmpo.runs.gate import GateError
    from gmpo.runs.model_registry import ModelRegistry, RegistryError

    if not Path(args.incoming).is_dir():
        print(f"error: --incoming {args.incoming} is not a directory", file=sys.stderr)
        return 1
    reg = ModelRegistry(args.registry)
    try:
        loop = ContinualLoop(load_continual(args.config), reg)
        cycles = loop.run(args.incoming, args.max_cycles)
        while args.watch > 0:
            before = [(c["sha256"], c["state"]) for c in cycles]
            time.sleep(args.watch)
            cycles = loop.run(args.incoming, args.max_cycles)
            if [(c["sha256"], c["state"]) for c in cycles] != before:
                _print_table(cycles)
    except (RegistryError, GateError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        reg.close()
    _print_table(cycles)
    return 0


def _print_table(cycles: list[dict]) -> None:
    """The cycle records as a markdown table, then the gate report paths."""
    print("\n| batch | state | candidate | base | decision | validate s | probe s | train s | gate s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in cycles:
        d = c["details"]
        t = lambda k: f"{d[k]:.1f}" if k in d else "-"  # noqa: E731
        print(f"| {c['batch']} | {c['state']} | {c['candidate'] or '-'} | {c['base_version'] or '-'} | "
              f"{(c['decision'] or '')[:120]} | {t('validate_s')} | {t('probe_s')} | {t('train_s')} | {t('gate_s')} |")
    for c in cycles:
        if c["details"].get("report_md"):
            print(f"gate report ({c['batch']}): {c['details']['report_md']}")
