"""The serving panel's reader of `gmpo serve`'s request log (SQLite, WAL; schema in the serve package's docs).

The database is opened read-only (``file:...?mode=ro``) for every query and never written. Every query is
an aggregate or bounded by a LIMIT, so the panel costs the same for ten requests or ten million: requests/s
and per-arm quality / fallback rate in at most ``buckets`` time buckets, latency and time-to-first-token
histograms over the newest ``max_latency_rows`` requests, the newest ``max_events`` events.

An "arm" is the A/B arm of a request, or its model when the request was not part of an experiment.
"""
from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

import numpy as np

from gmpo.dashboard.series import to_json_list

ARM = "COALESCE(arm, model, '-')"
BREAKER_KINDS = ("breaker_open", "breaker_close")


class ServeLogError(RuntimeError):
    """The request log cannot be read (missing file, not SQLite, no requests table)."""


class ServeLog:
    """Read-only access to one request-log database."""

    def __init__(self, path: str | Path, *, buckets: int = 120, max_latency_rows: int = 50_000, max_events: int = 200):
        self.path = Path(path)
        if not self.path.is_file():
            raise ServeLogError(f"{self.path}: no such request log (write one with `gmpo serve --log-db PATH`)")
        self.buckets, self.max_latency_rows, self.max_events = buckets, max_latency_rows, max_events
        with closing(self._connect()) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "requests" not in tables:
            raise ServeLogError(f"{self.path}: not a gmpo request log (no 'requests' table; found: "
                                f"{', '.join(sorted(tables)) or 'none'})")
        self.has_events = "events" in tables

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(f"file:{quote(str(self.path.resolve()))}?mode=ro", uri=True, timeout=2.0)
            db.execute("PRAGMA query_only = 1")
            return db
        except sqlite3.Error as e:
            raise ServeLogError(f"{self.path}: cannot open the request log read-only: {e}") from e

    def version(self) -> tuple:
        """A cheap fingerprint that changes when rows are added (max rowid of requests and events)."""
        with closing(self._connect()) as db:
            req = db.execute("SELECT max(rowid), count(*) FROM requests").fetchone()
            ev = db.execute("SELECT max(rowid) FROM events").fetchone() if self.has_events else (None,)
        return tuple(req) + tuple(ev)

    def summary(self) -> dict:
        """Everything the serving panel draws (see the module docstring)."""
        with closing(self._connect()) as db:
            t0, t1, n = db.execute("SELECT min(ts), max(ts), count(*) FROM requests").fetchone()
            out: dict = {"path": str(self.path), "requests": n, "t0": t0, "t1": t1}
            if not n:
                out.update(arms=[], timeline=None, latency=None, headline=_empty_headline(), events=[], breakers={})
                return out
            width = max((t1 - t0) / self.buckets, 1.0)
            out["arms"] = [r[0] for r in db.execute(f"SELECT {ARM} AS a, count(*) FROM requests GROUP BY a ORDER BY a")]
            out["timeline"] = self._timeline(db, t0, width, out["arms"])
            out["latency"] = self._latency(db, out["arms"])
            out["headline"] = self._headline(db, t1)
            out["events"], out["breakers"] = self._events(db)
        return out

    def headline(self) -> dict:
        """Mean latency and throughput over the last 5 minutes of the log (the page's headline numbers)."""
        with closing(self._connect()) as db:
            (t1,) = db.execute("SELECT max(ts) FROM requests").fetchone()
            return self._headline(db, t1) if t1 is not None else _empty_headline()

    def _timeline(self, db: sqlite3.Connection, t0: float, width: float, arms: list[str]) -> dict:
        """Per time bucket and arm: requests/s, mean quality, fallback rate, error rate."""
        rows = db.execute(
            f"SELECT min(CAST((ts - ?) / ? AS INTEGER), ?) AS k, {ARM} AS a, count(*), avg(quality), avg(fallback), "
            "sum(CASE WHEN status >= 400 OR finish_reason = 'error' THEN 1 ELSE 0 END) "
            "FROM requests GROUP BY k, a ORDER BY k", (t0, width, self.buckets - 1)).fetchall()
        ks = sorted({r[0] for r in rows})
        pos = {k: i for i, k in enumerate(ks)}
        col = {a: i for i, a in enumerate(arms)}
        shape = (len(arms), len(ks))
        count, quality, fallback, errors = np.zeros(shape), np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape)
        for k, a, c, q, fb, err in rows:
            i, j = col[a], pos[k]
            count[i, j], errors[i, j] = c, err
            quality[i, j] = np.nan if q is None else q
            fallback[i, j] = np.nan if fb is None else fb
        total = count.sum(axis=0)
        with np.errstate(all="ignore"):
            fb_all = np.nansum(np.nan_to_num(fallback) * count, axis=0) / np.maximum(total, 1)
        return {
            "x": [t0 + (k + 0.5) * width for k in ks], "bucket_s": width,
            "rps": {a: to_json_list(count[i] / width) for a, i in col.items()},
            "rps_total": to_json_list(total / width),
            "errors_per_s": to_json_list(errors.sum(axis=0) / width),
            "quality": {a: to_json_list(quality[i]) for a, i in col.items()},
            "fallback_rate": to_json_list(fb_all),
        }

    def _latency(self, db: sqlite3.Connection, arms: list[str]) -> dict:
        """Histograms of end-to-end latency and time to first token, and percentiles per arm (newest rows)."""
        rows = db.execute(f"SELECT latency_s, ttft_s, {ARM} FROM requests ORDER BY ts DESC LIMIT ?",
                          (self.max_latency_rows,)).fetchall()
        lat = np.array([r[0] if r[0] is not None else np.nan for r in rows], dtype=float)
        ttft = np.array([r[1] if r[1] is not None else np.nan for r in rows], dtype=float)
        arm = np.array([r[2] for r in rows], dtype=object)
        out: dict = {"rows": len(rows)}
        for name, v in (("latency", lat), ("ttft", ttft)):
            v_ok = v[np.isfinite(v)]
            if not len(v_ok):
                out[name] = None
                continue
            hi = float(np.quantile(v_ok, 0.99)) * 1.25 or 1.0
            edges = np.linspace(0.0, hi, 31)
            per_arm = {}
            for a in arms:
                va = v[(arm == a) & np.isfinite(v)]
                if len(va):
                    per_arm[a] = {"counts": np.histogram(np.minimum(va, hi), bins=edges)[0].tolist(),
                                  "p50": float(np.quantile(va, 0.5)), "p90": float(np.quantile(va, 0.9)),
                                  "p99": float(np.quantile(va, 0.99)), "mean": float(va.mean()), "n": int(len(va))}
            out[name] = {"edges": to_json_list(edges), "arms": per_arm}
        return out

    def _headline(self, db: sqlite3.Connection, t1: float, window_s: float = 300.0) -> dict:
        """Mean latency and throughput over the last `window_s` seconds of the log (relative to its newest row)."""
        since = t1 - window_s
        n, lat, toks, t_first = db.execute(
            "SELECT count(*), avg(latency_s), sum(completion_tokens), min(ts) FROM requests WHERE ts >= ?",
            (since,)).fetchone()
        span = max(t1 - (t_first if t_first is not None else t1), 1.0)
        return {"window_s": window_s, "requests": n, "mean_latency_s": lat, "requests_per_s": n / span,
                "completion_tokens_per_s": (toks or 0) / span}

    def _events(self, db: sqlite3.Connection) -> tuple[list[dict], dict]:
        """The newest events, and per arm/model its breaker events in time order and current state."""
        if not self.has_events:
            return [], {}
        rows = db.execute("SELECT ts, kind, experiment, arm, model, message FROM events ORDER BY ts DESC LIMIT ?",
                          (self.max_events,)).fetchall()
        events = [dict(zip(("ts", "kind", "experiment", "arm", "model", "message"), r)) for r in rows]
        breakers: dict[str, dict] = {}
        brows = db.execute(f"SELECT ts, kind, {ARM}, message FROM events WHERE kind IN (?, ?) ORDER BY ts",
                           BREAKER_KINDS).fetchall()
        for ts, kind, a, msg in brows[-self.max_events:]:
            b = breakers.setdefault(a, {"events": [], "state": "closed"})
            b["events"].append({"ts": ts, "kind": kind, "message": msg})
            b["state"] = "open" if kind == "breaker_open" else "closed"
        return events, breakers

    def sample_requests(self, limit: int = 20) -> list[dict]:
        """The newest requests (for the panel's table), text fields cut to 300 characters."""
        with closing(self._connect()) as db:
            rows = db.execute(f"SELECT id, ts, {ARM}, status, latency_s, quality, scores, fallback, prompt, completion "
                              "FROM requests ORDER BY ts DESC LIMIT ?", (limit,)).fetchall()
        keys = ("id", "ts", "arm", "status", "latency_s", "quality", "scores", "fallback", "prompt", "completion")
        out = []
        for r in rows:
            d = dict(zip(keys, r))
            try:
                d["scores"] = json.loads(d["scores"]) if d["scores"] else None
            except (TypeError, json.JSONDecodeError):
                pass
            for k in ("prompt", "completion"):
                if isinstance(d[k], str) and len(d[k]) > 300:
                    d[k] = d[k][:300] + "…"
            out.append(d)
        return out


def _empty_headline() -> dict:
    return {"window_s": 300.0, "requests": 0, "mean_latency_s": None, "requests_per_s": 0.0,
            "completion_tokens_per_s": 0.0}
