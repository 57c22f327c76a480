"""Roll production back: production <- previous (or --to VERSION), recorded in the alias history.

`previous` is cleared afterwards, so a second rollback never re-promotes the version just removed (name a
version with --to to go further back). A running `gmpo serve --model NAME=registry:NAME@production` follows
the move (new requests use the restored model).

examples:
  gmpo rollback arith
  gmpo rollback arith --to 2
"""
from __future__ import annotations

import argparse
import sys

from gmpo.commands.registry import add_registry_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `gmpo rollback`."""
    p.add_argument("name", help="registered model name")
    p.add_argument("--to", type=int, default=None, help="roll back to this version instead of 'previous'")
    add_registry_option(p)


def run(args) -> int:
    """Run `gmpo rollback`."""
    from gmpo.runs.model_registry import ModelRegistry, RegistryError
    from gmpo.runs.promotion import rollback

    reg = ModelRegistry(args.registry)
    try:
        old, new = rollback(reg, args.name, args.to)
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        reg.close()
    print(f"{args.name}@production: {old} -> {new}")
    return 0
