"""The serving panel's reader of the request log: a real SQLite file in WAL mode with the schema of
/work/helpers/CONTRACTS.md ("The serving request log"), opened read-only."""
import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from gmpo.dashboard.serving import ServeLog, ServeLogError

# The contract's schema, verbatim (add columns only at the end, never rename).
SCHEMA = """
CREATE TABLE requests (id TEXT PRIMARY KEY, ts REAL, experiment TEXT, arm TEXT,
  model TEXT, user TEXT, endpoint TEXT, n INTEGER, prompt_tokens INTEGER,
  completion_tokens INTEGER, queue_s REAL, ttft_s REAL, latency_s REAL, finish_reason TEXT,
  status INTEGER, quality REAL, scores TEXT, fallback INTEGER, fallback_model TEXT, error TEXT, prompt TEXT,
  completion TEXT, reference TEXT);
CREATE TABLE feedback (request_id TEXT, ts REAL, kind TEXT, value REAL, comment TEXT);
CREATE TABLE events (ts REAL, kind TEXT, experiment TEXT, arm TEXT, model TEXT, message TEXT);
CREATE TABLE experiments (id TEXT PRIMARY KEY, started REAL, config TEXT);
"""
T0 = 1_780_000_000.0


def make_request_log(path: Path, n: int = 400, seed: int = 0, span_s: float = 600.0) -> Path:
    """A request log of `n` requests over `span_s` seconds on two arms (control: 'a', candidate: 'b'):
    arm b is slower (latency ~ 2x), scores lower, falls back on 1 request in 5; its breaker opens at
    T0+300 and closes at T0+420; one alert; every 25th request is an HTTP 500."""
    rng = np.random.default_rng(seed)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    db.execute("INSERT INTO experiments VALUES (?, ?, ?)",
               ("exp1", T0, json.dumps({"arms": {"a": "m-a", "b": "m-b"}, "weights": [0.5, 0.5], "control": "a"})))
    rows = []
    for i in range(n):
        arm = "a" if i % 2 == 0 else "b"
        lat = float(rng.gamma(4.0, 0.05 if arm == "a" else 0.1))
        err = i % 25 == 24
        rows.append((f"req-{i}", T0 + span_s * i / n, "exp1", arm, f"m-{arm}", "u1", "chat", 1, 20, 30,
                     0.001, lat * 0.2, lat, "error" if err else "stop", 500 if err else 200,
                     None if err else float(0.8 if arm == "a" else 0.6), json.dumps({"exact": 1.0}),
                     int(arm == "b" and i % 10 == 1), "m-a" if arm == "b" and i % 10 == 1 else None,
                     "boom" if err else None, f"<b>prompt {i}</b>", f"completion {i}", None))
    db.executemany("INSERT INTO requests VALUES (" + ",".join("?" * 23) + ")", rows)
    db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", [
        (T0, "experiment_start", "exp1", None, None, "experiment exp1 started"),
        (T0 + 300, "breaker_open", "exp1", "b", "m-b", "quality 0.60 < 0.70 over 50 requests"),
        (T0 + 360, "alert", "exp1", "b", "m-b", "p99 latency 1.2 s above 1.0 s"),
        (T0 + 420, "breaker_close", "exp1", "b", "m-b", "half-open probe passed"),
    ])
    db.execute("INSERT INTO feedback VALUES (?, ?, ?, ?, ?)", ("req-0", T0 + 1, "thumbs", 1.0, "good"))
    db.commit()
    db.close()
    return path


@pytest.fixture
def request_log(tmp_path):
    return make_request_log(tmp_path / "requests.db")


def test_summary_numbers(request_log):
    log = ServeLog(request_log, buckets=10)
    s = log.summary()
    assert s["requests"] == 400 and s["arms"] == ["a", "b"]
    tl = s["timeline"]
    assert len(tl["x"]) == 10 and tl["bucket_s"] == pytest.approx(59.85, abs=0.01)
    # 200 requests per arm over 10 buckets of 59.85 s: 20 per bucket -> 0.334 req/s
    assert sum(tl["rps"]["a"]) * tl["bucket_s"] == pytest.approx(200)
    assert tl["rps_total"][0] == pytest.approx(40 / tl["bucket_s"], rel=1e-5)
    assert sum(tl["errors_per_s"]) * tl["bucket_s"] == pytest.approx(16)  # i % 25 == 24: 16 of 400
    assert all(q == pytest.approx(0.8) for q in tl["quality"]["a"])
    assert all(q == pytest.approx(0.6) for q in tl["quality"]["b"])
    assert sum(tl["fallback_rate"]) / 10 == pytest.approx(40 / 400)  # 40 fallbacks (i % 10 == 1: all on arm b)
    lat = s["latency"]["latency"]
    assert len(lat["edges"]) == 31 and sum(lat["arms"]["a"]["counts"]) == 200
    assert lat["arms"]["b"]["p50"] > 1.5 * lat["arms"]["a"]["p50"]  # arm b is twice as slow
    assert s["breakers"]["b"]["state"] == "closed"
    assert [e["kind"] for e in s["breakers"]["b"]["events"]] == ["breaker_open", "breaker_close"]
    assert {e["kind"] for e in s["events"]} == {"experiment_start", "breaker_open", "alert", "breaker_close"}
    h = log.headline()
    # the newest request is at T0 + 598.5 (i = 399); the last 300 s hold i = 199..399 (ts >= T0 + 298.5)
    assert h["requests"] == 201 and h["completion_tokens_per_s"] == pytest.approx(201 * 30 / 300.0)
    assert h["requests_per_s"] == pytest.approx(201 / 300.0)


def test_opened_read_only_and_never_written(request_log):
    """The database file is byte-for-byte unchanged (SQLite may create the -wal/-shm side files a WAL reader
    needs; a running `gmpo serve` has them open anyway), and a write through the reader's connection fails."""
    before = (request_log.read_bytes(), request_log.stat().st_mtime_ns)
    log = ServeLog(request_log)
    log.summary(), log.version(), log.sample_requests(), log.headline()
    db = log._connect()
    with pytest.raises(sqlite3.OperationalError, match="readonly|read-only"):
        db.execute("INSERT INTO feedback VALUES ('x', 0, 'thumbs', 1, '')")
    db.close()
    assert (request_log.read_bytes(), request_log.stat().st_mtime_ns) == before


def test_version_changes_with_new_rows_while_a_writer_holds_the_wal(request_log):
    log = ServeLog(request_log)
    v0 = log.version()
    w = sqlite3.connect(request_log)  # a live writer (gmpo serve) keeps the database open in WAL mode
    w.execute("INSERT INTO requests (id, ts, arm, model, latency_s, status) VALUES ('new', ?, 'a', 'm-a', 0.1, 200)",
              (T0 + 700,))
    w.commit()
    assert log.version() != v0 and log.summary()["requests"] == 401
    w.close()


def test_bad_logs_get_clear_errors(tmp_path):
    with pytest.raises(ServeLogError, match="no such request log"):
        ServeLog(tmp_path / "missing.db")
    other = tmp_path / "other.db"
    sqlite3.connect(other).executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
    with pytest.raises(ServeLogError, match="no 'requests' table"):
        ServeLog(other)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).executescript(SCHEMA)
    s = ServeLog(empty).summary()
    assert s["requests"] == 0 and s["timeline"] is None and s["headline"]["mean_latency_s"] is None


def test_recent_requests_cut_long_text(request_log):
    w = sqlite3.connect(request_log)
    w.execute("INSERT INTO requests (id, ts, arm, prompt, scores) VALUES ('long', ?, 'a', ?, 'not json')",
              (T0 + 900, "x" * 1000))
    w.commit(), w.close()
    rec = ServeLog(request_log).sample_requests(limit=3)
    assert rec[0]["id"] == "long" and len(rec[0]["prompt"]) == 301 and rec[0]["scores"] == "not json"
    assert rec[1]["scores"] == {"exact": 1.0}
    assert not os.path.exists(str(request_log) + "-journal")


def test_reads_a_log_written_by_gmpo_serve_while_it_writes(tmp_path):
    """The real writer (gmpo.serve.reqlog.RequestLog, with its trailing columns) while the reader follows it."""
    from gmpo.serve.reqlog import RequestLog

    path = tmp_path / "served.db"
    w = RequestLog(path)
    try:
        for i in range(30):
            w.request(id=f"r{i}", ts=T0 + i, experiment="e", arm="a" if i % 3 else "b", model="m", status=200,
                      latency_s=0.1 * (1 + i % 3), ttft_s=0.01, completion_tokens=10, quality=1.0 if i % 2 else 0.0,
                      fallback=0, scores={"exact": 1.0}, assigned_arm="a", model_version="v1")
        w.event("breaker_open", "quality low", experiment="e", arm="b", model="m")
        w.flush()
        log = ServeLog(path, buckets=3)
        s = log.summary()
        assert s["requests"] == 30 and s["arms"] == ["a", "b"] and s["breakers"]["b"]["state"] == "open"
        assert sum(s["latency"]["latency"]["arms"]["b"]["counts"]) == 10 and len(s["timeline"]["x"]) == 3
        v = log.version()
        w.request(id="late", ts=T0 + 40, arm="a", model="m", status=500, latency_s=0.2)
        w.event("breaker_close", "recovered", experiment="e", arm="b", model="m")
        w.flush()
        assert log.version() != v
        s = log.summary()
        assert s["requests"] == 31 and s["breakers"]["b"]["state"] == "closed"
        assert log.sample_requests(1)[0]["id"] == "late"
    finally:
        w.close()
