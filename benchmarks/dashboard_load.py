"""`gmpo dashboard` on a long run: first paint, live-update latency and server memory.

    .venv/bin/python benchmarks/dashboard_load.py [--steps 30000] [--loads 3] [--appends 10] [--workdir DIR]
        [--append-results]

Generates a synthetic run directory (gmpo.dashboard.synthetic: every DESIGN section 4 metric, ratio/log_hist,
an eval every 100 steps, 2 samples a step, guard events; ~80 MB of jsonl for 30,000 steps; kept in --workdir
and reused), starts `python -m gmpo.dashboard RUN` on a free loopback port, and measures:

- ingest: seconds the server spends reading the run before it answers (printed by the server);
- first paint: a fresh Chromium page (Debian's chromium via Playwright) from navigation to the 15 training
  charts, the heat-map and the headline drawn (``window.__dash.firstPaintMs``, on the page's clock), and
  the browser's first-contentful-paint; median over --loads fresh pages;
- payload: bytes and server time of the page's one /api/charts request (all 15 charts, downsampled);
- live updates: --appends times (RSS sampled every 10), one new step is appended to metrics.jsonl while the page is open and the
  time until the reward chart shows it is taken (poll interval 1 s, so ~0.5-1.5 s is expected);
- server memory: VmRSS after the ingest, after the page loads and after the appends, and the peak (VmHWM).

The machine's load average is printed (and written with --append-results to benchmarks/RESULTS.md):
timings on a shared machine are upper bounds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gmpo.dashboard.synthetic import metrics_record, write_run  # noqa: E402


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def proc_kb(pid: int, key: str) -> int:
    """A VmRSS / VmHWM figure (kB) of process `pid`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_run(workdir: Path, steps: int) -> Path:
    """The synthetic run of `steps` steps (generated once, then reused)."""
    run = workdir / f"gmpo-long-{steps}"
    done = run / ".complete"
    if not done.exists():
        shutil.rmtree(run, ignore_errors=True)
        t = time.perf_counter()
        alerts = {s: ("warn" if s % 3 else "skip") for s in range(1000, steps, 1000)}
        write_run(run, steps, eval_every=100, samples_per_step=2, alerts=alerts, tokens=256)
        done.write_text("")
        print(f"generated {steps} steps in {time.perf_counter() - t:.1f} s: {run}", flush=True)
    return run


def start_server(run: Path, port: int) -> tuple[subprocess.Popen, float, str]:
    """Start the dashboard; (process, seconds until it answered, its first output line)."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "gmpo.dashboard", str(run), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    first = proc.stdout.readline().strip()
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5).read()
            return proc, time.perf_counter() - t, first
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {first} {proc.stdout.read()}")
            time.sleep(0.1)


def page_load(browser, base: str) -> dict:
    """One fresh page: navigation to ready, the page's own first-paint mark, FCP, chart points."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    external = []
    ctx.route("**/*", lambda r: r.continue_() if r.request.url.startswith(base) else (external.append(r.request.url), r.abort()))
    page = ctx.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    t = time.perf_counter()
    page.goto(base + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=120_000)
    wall = time.perf_counter() - t
    out = page.evaluate("""() => ({ready: window.__dash.firstPaintMs,
        fcp: (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null,
        points: Math.max(...Object.values(window.__dash.charts).map(c => c.points())),
        heatCols: Number(document.querySelector('.heat').dataset.cols || 0)})""")
    out.update(wall_s=wall, errors=errors, external=external, page=page, ctx=ctx)
    return out


def live_updates(page, run: Path, n: int, start_step: int, pid: int) -> tuple[list[float], list[float]]:
    """Append `n` steps one at a time; seconds until each shows on the reward chart's last x, and the
    server's RSS (MB) after every 10 appends."""
    import numpy as np

    rng = np.random.default_rng(1)
    lat, rss = [], []
    for i in range(n):
        step = start_step + i + 1
        rec = metrics_record(step, rng, steps=step, tokens=256)
        t = time.perf_counter()
        with open(run / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        js = f"(() => {{ const d = window.__dash.charts.reward.u.data[0]; return d[d.length - 1] === {step}; }})()"
        while not page.evaluate(js):
            if time.perf_counter() - t > 30:
                raise TimeoutError(f"step {step} did not show within 30 s")
            time.sleep(0.02)
        lat.append(time.perf_counter() - t)
        if (i + 1) % 10 == 0:
            rss.append(round(proc_kb(pid, "VmRSS") / 1024, 1))
    return lat, rss


def main(argv=None) -> int:
    """Generate (or reuse) the run, serve it, load it in Chromium, append steps; print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30_000, help="steps of the synthetic run (default 30000)")
    ap.add_argument("--loads", type=int, default=3, help="fresh page loads to time (default 3)")
    ap.add_argument("--appends", type=int, default=40, help="live appends to time (default 40)")
    ap.add_argument("--workdir", default=None, help="where the run is generated and kept (default: a temp dir, deleted)")
    ap.add_argument("--append-results", action="store_true", help="append the figures to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    from gmpo.report.html import find_chromium
    from playwright.sync_api import sync_playwright

    exe = find_chromium()
    if exe is None:
        print("chromium not found: apt-get install chromium (or bash scripts/system-packages.sh)")
        return 2
    tmp = None if args.workdir else tempfile.mkdtemp(prefix="gmpo-dash-bench-")
    workdir = Path(args.workdir or tmp)
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    run = make_run(workdir, args.steps)
    # the appends below grow the file: work on a copy so the cached run stays as generated
    live = workdir / "live-copy"
    shutil.rmtree(live, ignore_errors=True)
    shutil.copytree(run, live)
    size_mb = sum(p.stat().st_size for p in live.iterdir()) / 2**20
    port = free_port()
    proc, up_s, first_line = start_server(live, port)
    base = f"http://127.0.0.1:{port}"
    try:
        health = json.loads(urllib.request.urlopen(base + "/api/health").read())
        rss = {"after ingest": proc_kb(proc.pid, "VmRSS")}
        t = time.perf_counter()
        body = urllib.request.urlopen(base + "/api/charts?runs=0&points=440").read()
        charts_s, charts_kb = time.perf_counter() - t, len(body) / 1024
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
            loads = []
            for _ in range(args.loads):
                r = page_load(browser, base)
                loads.append(r)
                if len(loads) < args.loads:
                    r["ctx"].close()
            rss["after page loads"] = proc_kb(proc.pid, "VmRSS")
            last = loads[-1]
            lat, rss_trend = live_updates(last["page"], live, args.appends, args.steps, proc.pid)
            rss["after live appends"] = proc_kb(proc.pid, "VmRSS")
            browser.close()
        hwm = proc_kb(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    load_after = os.getloadavg()
    ready = statistics.median(r["ready"] for r in loads) / 1000
    wall = statistics.median(r["wall_s"] for r in loads)
    fcp = statistics.median(r["fcp"] or 0 for r in loads) / 1000
    res = {
        "steps": args.steps, "run_mb": round(size_mb, 1), "server_start_s": round(up_s, 2), "ingest_s": round(health["load_s"], 2),
        "first_paint_s": round(ready, 3), "first_paint_all_s": [round(r["ready"] / 1000, 3) for r in loads],
        "goto_to_ready_wall_s": round(wall, 3), "fcp_s": round(fcp, 3), "max_chart_points": loads[-1]["points"],
        "heatmap_columns": loads[-1]["heatCols"], "charts_payload_kb": round(charts_kb, 1), "charts_request_s": round(charts_s, 3),
        "live_update_s_median": round(statistics.median(lat), 3), "live_update_s_max": round(max(lat), 3),
        "rss_mb": {k: round(v / 1024, 1) for k, v in rss.items()}, "peak_rss_mb": round(hwm / 1024, 1),
        "rss_mb_every_10_appends": rss_trend,
        "console_errors": sum(len(r["errors"]) for r in loads), "external_requests": sum(len(r["external"]) for r in loads),
        "load_avg_before": [round(x, 2) for x in load_before], "load_avg_after": [round(x, 2) for x in load_after],
        "cpu": f"{cpu_name()}, {os.cpu_count()} cores",
    }
    print(first_line)
    print(json.dumps(res, indent=1))
    if args.append_results:
        append_results(res, argv)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def append_results(r: dict, argv) -> None:
    """Append a section with the figures to benchmarks/RESULTS.md."""
    cmd = "benchmarks/dashboard_load.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rss = r["rss_mb"]
    text = f"""
## Dashboard on a {r['steps']:,}-step run ({time.strftime('%Y-%m-%d %H:%M')})

Command: `.venv/bin/python {cmd.strip()}`  
Machine: {r['cpu']}; load average {' '.join(map(str, r['load_avg_before']))} before, {' '.join(map(str, r['load_avg_after']))} after
(the machine is shared: times are upper bounds). Synthetic run of {r['run_mb']} MB of jsonl (gmpo.dashboard.synthetic).

| first paint (median) | each load | FCP | server start | of it, ingest | /api/charts (15 charts) | max points a chart | heat-map columns | live update median / max | server RSS after ingest / loads / appends | peak RSS |
|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| {r['first_paint_s']:.2f} s | {', '.join(f'{x:.2f}' for x in r['first_paint_all_s'])} s | {r['fcp_s']:.2f} s | {r['server_start_s']:.1f} s | {r['ingest_s']:.1f} s | {r['charts_payload_kb']:.0f} kB in {r['charts_request_s']:.2f} s | {r['max_chart_points']} | {r['heatmap_columns']} | {r['live_update_s_median']:.2f} / {r['live_update_s_max']:.2f} s | {rss['after ingest']:.0f} / {rss['after page loads']:.0f} / {rss['after live appends']:.0f} MB | {r['peak_rss_mb']:.0f} MB |

First paint: navigation to the 15 training charts, the heat-map and the headline drawn (the page's
`window.__dash.firstPaintMs`; the comparison table, samples and serving panel follow). Server RSS every 10 live
appends: {', '.join(map(str, r['rss_mb_every_10_appends']))} MB. Console errors: {r['console_errors']}; external
requests: {r['external_requests']}.
"""
    with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
        f.write(text)
    print("appended to benchmarks/RESULTS.md")


if __name__ == "__main__":
    sys.exit(main())
