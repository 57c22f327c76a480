"""`gmpo dashboard` as a real server process on 127.0.0.1: the JSON API, static files, the SSE stream,
path safety, the Host and token checks, and that nothing is written to a run directory."""
import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gmpo.dashboard.synthetic import write_run

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DashboardServer:
    """`python -m gmpo.dashboard ARGS` on a free loopback port; stopped (SIGTERM, then kill) on close."""

    def __init__(self, *args, token=None, poll=0.2, timeout=90.0):
        self.port = free_port()
        cmd = [sys.executable, "-m", "gmpo.dashboard", *map(str, args), "--port", str(self.port), "--poll", str(poll)]
        if token:
            cmd += ["--token", token]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.base = f"http://127.0.0.1:{self.port}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dashboard exited with {self.proc.returncode}: {self.proc.stdout.read()}")
            try:
                if self.request("/api/health", headers=headers)[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                self.close()
                raise TimeoutError("dashboard did not answer /api/health")
            time.sleep(0.2)

    def request(self, path, headers=None, method="GET"):
        """(status, headers, body bytes) of a raw request (the path is sent exactly as given)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            h = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
            for k, v in h.items():
                conn.putheader(k, v)
            conn.endheaders()
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def json(self, path, **kw):
        status, _, body = self.request(path, **kw)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def rss_kb(self) -> int:
        """Resident memory of the server process (kB)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.rglob("*"))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash_runs")
    a = write_run(root / "gmpo-s0", 60, alerts={25: "warn", 40: "rollback"})
    b = write_run(root / "grpo-s0", 45, algo="grpo", seed=3, hist=False)
    return a, b


@pytest.fixture(scope="module")
def server(runs):
    before = [snapshot(d) for d in runs]
    srv = DashboardServer(*runs)
    yield srv
    srv.close()
    assert [snapshot(d) for d in runs] == before, "the dashboard wrote to a run directory"


def test_api_serves_the_runs(server):
    meta = server.json("/api/meta")
    assert [r["name"] for r in meta["runs"]] == ["gmpo-s0", "grpo-s0"] and meta["serve"] is None
    assert meta["runs"][1]["clip"]["space"] == "ratio" and meta["runs"][1]["seed"] == 3
    charts = server.json("/api/charts?runs=0,1&points=600")
    assert len(charts["charts"]["reward"]["x"]) == 60 and len(charts["charts"]["accuracy"]["x"]) == 7
    assert [(a["step"], a["action"]) for a in charts["alerts"]] == [(25, "warn"), (40, "rollback")]
    heat = server.json("/api/heatmap?runs=0,1&cols=30")
    assert [h["has_hist"] for h in heat["runs"]] == [True, False] and len(heat["runs"][0]["z"]) == 30
    assert server.json("/api/samples?run=1&step_min=45")["total"] == 2
    assert len(server.json("/api/compare")["rows"]) == 2
    assert server.request("/api/serve")[0] == 404
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "libtorch" not in maps  # the server process never loaded torch


def test_static_files_and_security_headers(server):
    status, headers, body = server.request("/")
    assert status == 200 and b"/static/uPlot.iife.min.js" in body and b"http" not in body.replace(b"http-equiv", b"")
    assert "default-src 'none'" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
    status, headers, body = server.request("/static/uPlot.iife.min.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and len(body) > 40_000
    assert server.request("/static/uPlot.LICENSE")[2].startswith(b"The MIT License")


@pytest.mark.parametrize("path", [
    "/static/../app.py", "/static/..%2fapp.py", "/static/%2e%2e%2fstore.py", "/static/..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/__init__.py", "/../../etc/passwd", "/static//etc/passwd", "/api/samples?run=-1", "/api/samples?run=2",
    "/api/charts?runs=0,../x", "/api/heatmap?runs=%2Fetc%2Fpasswd", "/docs", "/openapi.json",
])
def test_no_path_reaches_beyond_the_runs(server, path):
    status, _, body = server.request(path)
    assert status in (404, 422) and b"root:" not in body and b"import" not in body


def test_bad_parameters_are_clear_errors(server):
    status, _, body = server.request("/api/charts?x0=50&x1=10")
    assert status == 400 and b"x1 (10.0) < x0 (50.0)" in body
    status, _, body = server.request("/api/charts?ids=nope")
    assert status == 404 and b"unknown chart 'nope'" in body
    assert server.request("/api/charts?points=1")[0] == 422


def test_host_header_must_be_loopback(server):
    status, _, body = server.request("/api/meta", headers={"Host": "evil.example:80"})
    assert status == 403 and b"Host" in body
    assert server.request("/api/meta", headers={"Host": f"localhost:{server.port}"})[0] == 200


def _sse_events(conn, until, timeout):
    """Read SSE events from an open response until `until(data)` is true; returns the matching data."""
    deadline = time.time() + timeout
    buf = b""
    while time.time() < deadline:
        chunk = conn.fp.read1(65536) if hasattr(conn.fp, "read1") else conn.read(1)
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            data = [line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")]
            if data:
                d = json.loads(b"".join(data))
                if until(d):
                    return d
    raise AssertionError("no matching SSE event in time")


def test_sse_pushes_appended_steps_and_alerts(server, runs):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/api/stream", headers={"Host": f"127.0.0.1:{server.port}"})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream")
    first = _sse_events(r, lambda d: True, 10)
    assert first["runs"][0]["last_step"] == 60
    metrics = runs[1] / "metrics.jsonl"
    orig = metrics.stat()
    t = time.time()
    with open(metrics, "a") as f:  # a writer appending to run 1 (its directory snapshot is restored below)
        f.write(json.dumps({"step": 46, "reward/mean": 0.9}) + "\n")
    got = _sse_events(r, lambda d: d["runs"][1]["last_step"] == 46, 10)
    assert got["version"] > first["version"] and time.time() - t < 5
    conn.close()
    assert len(server.json("/api/charts?runs=1&ids=reward")["charts"]["reward"]["x"]) == 46
    _restore(metrics, 45, orig)


def _restore(metrics: Path, last: int, st):
    """Drop the records the test appended and put back the file's times (`st`: its stat before), so the
    module fixture's no-write check stays meaningful."""
    import os

    keep = [line for line in metrics.read_text().splitlines(keepends=True) if json.loads(line)["step"] <= last]
    metrics.write_text("".join(keep))
    os.utime(metrics, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_token_is_required_and_accepted_three_ways(runs):
    srv = DashboardServer(runs[0], token="s3cret-token")
    try:
        assert srv.request("/")[0] == 401 and srv.request("/api/meta")[0] == 401
        assert srv.request("/api/meta", headers={"Authorization": "Bearer wrong"})[0] == 401
        status, headers, _ = srv.request("/?token=s3cret-token")
        assert status == 200 and headers["set-cookie"].startswith("gmpo_dashboard_token=s3cret-token;")
        assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
        assert srv.request("/api/meta", headers={"Cookie": "gmpo_dashboard_token=s3cret-token"})[0] == 200
        assert srv.request("/api/meta", headers={"Authorization": "Bearer s3cret-token"})[0] == 200
    finally:
        srv.close()


def test_refuses_bad_arguments_before_binding(runs, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "gmpo.dashboard", *map(str, args)], capture_output=True,
                              text=True, timeout=60)

    r = run(runs[0], "--host", "0.0.0.0", "--port", str(free_port()))
    assert r.returncode == 2 and "not a loopback address" in r.stderr and "--token" in r.stderr
    r = run(tmp_path / "missing")
    assert r.returncode == 2 and "not a directory" in r.stderr
    r = run(runs[0], "--serve-db", tmp_path / "none.db")
    assert r.returncode == 2 and "no such file" in r.stderr
    r = run()
    assert r.returncode == 2 and "at least one RUN_DIR" in r.stderr


def test_help_explains_every_option(capsys):
    from gmpo.cli import main

    with pytest.raises(SystemExit):
        main(["dashboard", "--help"])
    out = capsys.readouterr().out
    for opt in ("RUN_DIR", "--serve-db", "--host", "--port", "--token", "--poll", "--target-reward", "--smooth"):
        assert opt in out
    assert "127.0.0.1" in out and "no CDN" in out


def test_a_compare_directory_stands_for_its_runs(tmp_path):
    from gmpo.commands.dashboard import expand_run_dirs

    out = tmp_path / "compare"
    for name in ("grpo-s0", "gmpo-s0"):
        write_run(out / "runs" / name, 3)
    (out / "report").mkdir()
    single = write_run(tmp_path / "single", 3)
    fresh = tmp_path / "not-started"
    fresh.mkdir()
    assert expand_run_dirs([str(out), str(single), str(fresh)]) == [
        str(out / "runs" / "gmpo-s0"), str(out / "runs" / "grpo-s0"), str(single), str(fresh)]
    assert expand_run_dirs([str(out / "runs")]) == [str(out / "runs" / "gmpo-s0"), str(out / "runs" / "grpo-s0")]
