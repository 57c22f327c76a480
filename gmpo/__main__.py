"""``python -m gmpo ...`` (what ``torchrun -m gmpo train ...`` runs): the `gmpo` command line."""
import sys

from gmpo.cli import main

if __name__ == "__main__":
    sys.exit(main())
