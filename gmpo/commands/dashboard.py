"""A live web dashboard of training runs (and of a `gmpo serve` fleet), in the browser, offline.

    gmpo dashboard RUN_DIR [RUN_DIR ...] [--serve-db PATH] [--port 8265] [--host 127.0.0.1] [--token T]

Open the printed URL. The page follows the runs while they train (their metrics.jsonl, alerts.jsonl and
samples.jsonl are tailed; updates are pushed with Server-Sent Events): reward and held-out accuracy with
Wilson intervals, the per-step token log-ratio heat-map with the clip range, sequence and token ratios,
clip fractions, entropy, KL, gradient norm, loss, the windowed stability metrics, the step-time split, guard
events on every chart, a sample browser, and (several runs) the stability table of `gmpo compare`. With
--serve-db, the serving panel reads `gmpo serve`'s request log: requests/s, latency and time-to-first-token
distributions, per-arm quality with circuit-breaker events, fallback rate and alerts.

Several runs are overlaid, e.g. every run of a compare directory: `gmpo dashboard runs/compare` (a directory
that holds runs, directly or in its runs/ folder, stands for them).
Nothing is written to the run directories; the request log is opened read-only; every script and style is
served by the package (no CDN). The server binds 127.0.0.1; binding any other address needs --token (or
GMPO_DASHBOARD_TOKEN), which the browser presents once as ?token=... (the printed URL carries it).
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time
from pathlib import Path

from gmpo.runs.files import CONFIG, METRICS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `gmpo dashboard`."""
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                        help="run directories (holding metrics.jsonl, or about to: a run that has not started yet "
                             "is shown as soon as it writes)")
    parser.add_argument("--serve-db", default=None, metavar="PATH",
                        help="the request log of `gmpo serve` (SQLite; its --log-db) for the serving panel")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: 127.0.0.1; any non-loopback address needs --token)")
    parser.add_argument("--port", type=int, default=8265, help="port to listen on (default: 8265)")
    parser.add_argument("--token", default=os.environ.get("GMPO_DASHBOARD_TOKEN"),
                        help="secret every request must carry (default: $GMPO_DASHBOARD_TOKEN); required when "
                             "--host is not a loopback address")
    parser.add_argument("--poll", type=float, default=1.0,
                        help="seconds between reads of the run files and the request log (default: 1.0)")
    parser.add_argument("--target-reward", type=float, default=0.5,
                        help="the comparison table's 'steps to target reward' column (default: 0.5)")
    parser.add_argument("--smooth", type=int, default=1,
                        help="trailing window (steps) of reward/mean for --target-reward (default: 1)")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def expand_run_dirs(dirs: list[str]) -> list[str]:
    """Run directories from the command line; a directory holding runs rather than being one (a `gmpo compare`
    output, or its runs/ folder) stands for the runs under it, in name order."""
    out = []
    for d in dirs:
        p = Path(d)
        if (p / METRICS).exists() or (p / CONFIG).exists() or not p.is_dir():
            out.append(d)
            continue
        base = p / "runs" if (p / "runs").is_dir() else p
        found = sorted(str(c) for c in base.iterdir() if c.is_dir() and (c / METRICS).exists())
        out.extend(found or [d])  # an empty directory: a run that has not started yet
    return out


def check_args(args: argparse.Namespace) -> str | None:
    """The error message for unusable arguments (None when they are fine)."""
    if not args.run_dirs and not args.serve_db:
        return "give at least one RUN_DIR or --serve-db PATH"
    for d in args.run_dirs:
        if not os.path.isdir(d):
            return f"{d}: not a directory (a gmpo run directory holds metrics.jsonl)"
    if args.serve_db and not os.path.isfile(args.serve_db):
        return f"--serve-db {args.serve_db}: no such file"
    if not is_loopback(args.host) and not args.token:
        return (f"--host {args.host} is not a loopback address: anyone who can reach it could read your runs. "
                "Pass --token SECRET (or set GMPO_DASHBOARD_TOKEN), e.g. --token "
                "$(python -c 'import secrets; print(secrets.token_urlsafe(24))')")
    if not 0 < args.port < 65536:
        return f"--port {args.port}: must be 1..65535"
    if args.poll <= 0:
        return f"--poll {args.poll}: must be > 0"
    return None


def run(args: argparse.Namespace) -> int:
    """Load the runs, then serve the dashboard until interrupted."""
    args.run_dirs = expand_run_dirs(args.run_dirs)
    err = check_args(args)
    if err:
        print(f"gmpo dashboard: {err}", file=sys.stderr)
        return 2
    try:
        import uvicorn

        from gmpo.dashboard.app import DashboardState, create_app
        from gmpo.dashboard.serving import ServeLogError
    except ModuleNotFoundError as e:
        print(f"gmpo dashboard: needs the web stack ({e.name} is missing): pip install 'gmpo[serve]'", file=sys.stderr)
        return 2
    try:
        state = DashboardState(args.run_dirs, args.serve_db, target_reward=args.target_reward,
                               smooth=max(1, args.smooth), poll_s=args.poll)
    except (FileNotFoundError, ServeLogError) as e:
        print(f"gmpo dashboard: {e}", file=sys.stderr)
        return 2
    t = time.perf_counter()
    state.refresh()
    state.load_s = time.perf_counter() - t
    allowed = None
    if is_loopback(args.host):
        names = ("127.0.0.1", "localhost", "[::1]", args.host if ":" not in args.host else f"[{args.host.strip('[]')}]")
        allowed = {f"{h}:{args.port}" for h in names} | ({h for h in names} if args.port == 80 else set())
    app = create_app(state, token=args.token, allowed_hosts=allowed)
    shown = args.host if ":" not in args.host else f"[{args.host}]"
    url = f"http://{shown}:{args.port}/" + (f"?token={args.token}" if args.token else "")
    rows = sum(st.table.n for st in state.stores)
    print(f"gmpo dashboard: {len(state.stores)} run(s), {rows} steps loaded in {state.load_s:.2f} s"
          + (f", request log {args.serve_db}" if args.serve_db else "") + f"\n  open {url}", flush=True)
    config = uvicorn.Config(app, host=args.host.strip("[]"), port=args.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=1, lifespan="on")
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
