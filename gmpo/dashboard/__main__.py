"""``python -m gmpo.dashboard RUN_DIR ... [options]``: ``gmpo dashboard`` without loading the other verbs
(the `gmpo` dispatcher imports every verb to build its help)."""
from __future__ import annotations

import argparse
import sys

from gmpo.commands import dashboard


def main(argv: list[str] | None = None) -> int:
    """Parse the options of `gmpo dashboard` and serve."""
    parser = argparse.ArgumentParser(prog="python -m gmpo.dashboard", description=dashboard.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    dashboard.add_arguments(parser)
    return dashboard.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
