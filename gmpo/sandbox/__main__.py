"""``python -m gmpo.sandbox [auto|bubblewrap|fallback]``: print the isolation detected here and run a probe."""
import sys

from gmpo.sandbox import SandboxPool, detect


def main(argv: list[str]) -> int:
    """Print the detected mode and the result of one probe program; exit 1 if no mode works."""
    prefer = argv[0] if argv else "auto"
    try:
        iso = detect(prefer)
    except Exception as e:  # noqa: BLE001  (report, do not trace)
        print(f"sandbox unavailable: {e}", file=sys.stderr)
        return 1
    print(iso.describe())
    with SandboxPool(workers=1, isolation=iso) as pool:
        r = pool.run("import os, socket\nprint(os.getuid(), os.getcwd())")
    print(f"probe: {r.status} in {r.wall_s * 1000:.0f} ms: {r.stdout.strip()}")
    return 0 if r.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
