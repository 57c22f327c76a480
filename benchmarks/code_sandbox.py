"""Sandbox throughput: every MBPP reference solution (974) against its own tests, pooled vs one at a time.

One command:  .venv/bin/python benchmarks/code_sandbox.py
Runs the check-grader path of ``gmpo eval --check-grader --benchmarks mbpp`` (harness + tests in the
sandbox, one program per task) with a pool of ``--workers`` slots (default: the CPU count) and with one
slot, in each isolation mode asked for (default: the one detected), and reports pass counts, wall time
and programs/s. Appends a dated section (figures, command, machine, load average) to
benchmarks/RESULTS.md unless ``--no-append``. ``--limit N`` runs the first N tasks only (a quick check).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else "n/a"


def measure(mode: str, workers: int, data_dir: str, limit: int) -> dict:
    """One check-grader pass over MBPP (all splits) with ``workers`` slots in isolation ``mode``."""
    from gmpo.eval.code_eval import check_code_grader
    from gmpo.sandbox import SandboxPool

    with SandboxPool(workers=workers, isolation=mode) as pool:
        pool.run("pass")  # warm: detection probe and first interpreter start are not measured
        r = check_code_grader(["mbpp"], data_dir, limit, pool=pool)["mbpp"]
    return {"mode": mode, "workers": workers, "n": r["n"], "passed": r["passed"], "wall_s": r["wall_s"],
            "programs_per_s": r["programs_per_s"], "isolation": r["isolation"], "failures": r["failures"]}


def section(rows: list[dict], argv: list[str], load_start: str, load_end: str) -> str:
    """The RESULTS.md section for ``rows``."""
    from gmpo.perf import cpu_name

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## Code sandbox: MBPP reference solutions through the sandbox ({now})", "",
             f"- command: `{' '.join(shlex.quote(a) for a in ['.venv/bin/python', 'benchmarks/code_sandbox.py', *argv])}`",
             f"- machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}; load average "
             f"(1/5/15 min) {load_start} at start, {load_end} at end (a shared machine: other jobs ran alongside, "
             "so these are lower bounds on a quiet machine's rates)",
             *[f"- isolation ({m}): {iso}" for m, iso in dict((r["mode"], r["isolation"]) for r in rows).items()], "",
             "| isolation | workers | programs | passed | wall s | programs/s |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['workers']} | {r['n']} | {r['passed']} | {r['wall_s']:.1f} | "
                     f"{r['programs_per_s']:.1f} |")
    by_mode: dict[str, dict[int, float]] = {}
    for r in rows:
        by_mode.setdefault(r["mode"], {})[r["workers"]] = r["programs_per_s"]
    notes = [f"{m}: pool {max(v)} workers {v[max(v)] / v[1]:.2f}x one at a time" for m, v in by_mode.items()
             if 1 in v and len(v) > 1]
    if notes:
        lines += ["", "Speed-up: " + "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure and (unless --no-append) append to RESULTS.md."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--modes", default="auto", help="comma-separated: auto, bubblewrap, fallback (default auto)")
    p.add_argument("--workers", type=int, default=0, help="pool size (0 = the CPU count)")
    p.add_argument("--limit", type=int, default=0, help="first N tasks only (0 = all 974)")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    p.add_argument("--no-append", action="store_true", help="print only")
    args = p.parse_args(argv)
    from gmpo.sandbox import detect

    workers = args.workers or os.cpu_count() or 1
    load_start = _load()
    rows = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        mode = detect(mode).mode
        for w in ([workers, 1] if workers > 1 else [1]):
            r = measure(mode, w, args.data_dir, args.limit)
            print(f"{mode} x{w}: {r['passed']}/{r['n']} passed, {r['wall_s']:.1f} s, {r['programs_per_s']:.1f} "
                  f"programs/s; load {_load()}", flush=True)
            for f in r["failures"][:5]:
                print(f"  task {f['task_id']}: {f['outcome']}: {f['error'][:120]}")
            rows.append(r)
    text = section(rows, argv, load_start, _load())
    print("\n" + text)
    if not args.no_append:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write("\n" + text)
        print(f"appended to {args.results}")
    return 0 if all(r["passed"] == r["n"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
