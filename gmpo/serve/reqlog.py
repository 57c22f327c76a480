"""The serving request log: an embedded SQLite database in WAL mode (schema: CONTRACTS.md, "request log").

One writer thread owns the connection; request handlers enqueue rows and never wait on disk (a commit
covers every row queued since the last one). :meth:`RequestLog.flush` waits until everything queued so far
is committed; :meth:`RequestLog.close` flushes and closes, so a drained server leaves a consistent file.
Readers (``gmpo ab report``, the dashboard) open the file read-only and never import this module's writer.

Columns after ``reference`` are additions of this module (allowed at the end only): ``assigned_arm`` (the
arm the user's hash picked; ``arm`` is the arm that answered, control when the assigned arm's breaker
was open) and ``model_version`` (the path, or the registry ref and version, that answered).
"""
from __future__ import annotations

import json
import queue
import sqlite3
import threading
import time
from pathlib import Path

REQUEST_COLUMNS = (
    "id", "ts", "experiment", "arm", "model", "user", "endpoint", "n", "prompt_tokens", "completion_tokens",
    "queue_s", "ttft_s", "latency_s", "finish_reason", "status", "quality", "scores", "fallback", "fallback_model",
    "error", "prompt", "completion", "reference", "assigned_arm", "model_version",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (id TEXT PRIMARY KEY, ts REAL, experiment TEXT, arm TEXT,
  model TEXT, user TEXT, endpoint TEXT, n INTEGER, prompt_tokens INTEGER,
  completion_tokens INTEGER, queue_s REAL, ttft_s REAL, latency_s REAL, finish_reason TEXT,
  status INTEGER, quality REAL, scores TEXT, fallback INTEGER, fallback_model TEXT, error TEXT, prompt TEXT,
  completion TEXT, reference TEXT, assigned_arm TEXT, model_version TEXT);
CREATE TABLE IF NOT EXISTS feedback (request_id TEXT, ts REAL, kind TEXT, value REAL, comment TEXT);
CREATE TABLE IF NOT EXISTS events (ts REAL, kind TEXT, experiment TEXT, arm TEXT, model TEXT, message TEXT);
CREATE TABLE IF NOT EXISTS experiments (id TEXT PRIMARY KEY, started REAL, config TEXT);
CREATE INDEX IF NOT EXISTS requests_experiment ON requests(experiment, arm);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback(request_id);
"""

_STOP = object()


class RequestLog:
    """Writer of the request log at ``path`` (created with its parent directory when missing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        conn.executescript(SCHEMA)
        self._migrate(conn)
        conn.commit()
        self._q: queue.Queue = queue.Queue()
        self.written = 0
        self._thread = threading.Thread(target=self._loop, args=(conn,), name="gmpo-serve-log", daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Add this module's trailing columns to a log created by an older version (never rename)."""
        have = {r[1] for r in conn.execute("PRAGMA table_info(requests)")}
        for col in REQUEST_COLUMNS:
            if col not in have:
                conn.execute(f"ALTER TABLE requests ADD COLUMN {col} TEXT")

    # -- writes (queued) --------------------------------------------------------------------------

    def request(self, **row) -> None:
        """Queue one ``requests`` row (missing columns are NULL; ``scores`` may be a dict)."""
        unknown = set(row) - set(REQUEST_COLUMNS)
        if unknown:
            raise ValueError(f"unknown request-log columns: {sorted(unknown)}")
        if isinstance(row.get("scores"), dict):
            row["scores"] = json.dumps(row["scores"])
        row.setdefault("ts", time.time())
        values = tuple(row.get(c) for c in REQUEST_COLUMNS)
        self._q.put((f"INSERT OR REPLACE INTO requests VALUES ({','.join('?' * len(REQUEST_COLUMNS))})", values))

    def feedback(self, request_id: str, kind: str, value: float, comment: str = "") -> None:
        """Queue one ``feedback`` row."""
        self._q.put(("INSERT INTO feedback VALUES (?,?,?,?,?)", (request_id, time.time(), kind, float(value), comment)))

    def event(self, kind: str, message: str, experiment: str | None = None, arm: str | None = None,
              model: str | None = None) -> None:
        """Queue one ``events`` row (breaker_open, breaker_close, alert, model_reload, experiment_start)."""
        self._q.put(("INSERT INTO events VALUES (?,?,?,?,?,?)", (time.time(), kind, experiment, arm, model, message)))

    def experiment(self, exp_id: str, config_json: str) -> bool:
        """Record an experiment once (True when it is new: the caller logs ``experiment_start``)."""
        self.flush()
        with sqlite3.connect(self.path, timeout=30) as conn:
            cur = conn.execute("INSERT OR IGNORE INTO experiments VALUES (?,?,?)", (exp_id, time.time(), config_json))
            return cur.rowcount == 1

    # -- reads ------------------------------------------------------------------------------------

    def has_request(self, request_id: str) -> bool:
        """Whether a request id is in the log (pending writes are flushed first)."""
        self.flush()
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30) as conn:
            return conn.execute("SELECT 1 FROM requests WHERE id=?", (request_id,)).fetchone() is not None

    # -- the writer thread ------------------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every row queued before this call is committed."""
        done = threading.Event()
        self._q.put(done)
        if not done.wait(timeout):
            raise TimeoutError(f"request log {self.path}: writes not committed within {timeout}s")

    def close(self) -> None:
        """Commit everything queued and close the database."""
        if self._thread.is_alive():
            self._q.put(_STOP)
            self._thread.join(60)

    def _loop(self, conn: sqlite3.Connection) -> None:
        while True:
            items = [self._q.get()]
            while True:  # take everything already queued: one commit for all of it
                try:
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            stop = False
            waiters = []
            for it in items:
                if it is _STOP:
                    stop = True
                elif isinstance(it, threading.Event):
                    waiters.append(it)
                else:
                    try:
                        conn.execute(*it)
                        self.written += 1
                    except sqlite3.Error as e:  # a bad row must not stop logging
                        print(f"[gmpo serve] request log write failed: {e}", flush=True)
            conn.commit()
            for w in waiters:
                w.set()
            if stop:
                conn.close()
                return
