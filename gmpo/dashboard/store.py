"""The dashboard's in-memory view of a run directory, filled incrementally by tailing its jsonl files.

:class:`RunStore` tails ``metrics.jsonl``, ``alerts.jsonl`` and ``samples.jsonl`` with
:class:`gmpo.runs.files.JsonlTail` (the one reader of run files): each :meth:`RunStore.refresh` reads only the
bytes appended since the last one; a torn last line waits for its newline; a file that is truncated or
replaced (a run restarted from a checkpoint) is read again from the start.

Metrics are kept column-wise in numpy arrays (one float64 column per metric name, NaN where a step lacks it;
``ratio/log_hist`` as a (rows, 42) block), so a 30,000-step run costs ~12 MB and a chart's series is a slice.
Memory is bounded: past ``max_rows`` rows the table keeps every other row (older detail thins 2:1, the
newest rows stay exact), samples keep the newest ``max_samples``, alerts the newest ``max_alerts``.

Step semantics follow the writer: a record whose step equals the last row's updates that row (the trainer
logs a final eval as its own record); a step below the last row means the run went back (a guard rollback
re-logs from the snapshot): the rows from that step on are dropped, as :func:`gmpo.runs.files.read_metrics`
keeps the last record per step.
"""
from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import Iterator

import numpy as np
import yaml

from gmpo.dashboard.series import HIST_KEY, HIST_LEN, clip_range
from gmpo.runs.files import ALERTS, CONFIG, METRICS, SAMPLES, JsonlTail, run_identity

SAMPLE_TEXT_MAX = 4000  # characters kept of a sample's prompt / completion
_NUMERIC = (int, float, bool)  # JSON numbers (bool: 0/1); compared by class, the fastest test


class Columns:
    """A growable column table: ``steps`` (int64) and one float64 column per name, plus a histogram block."""

    def __init__(self, capacity: int = 1024):
        self.n, self.cap = 0, capacity
        self.steps = np.empty(capacity, dtype=np.int64)
        self.cols: dict[str, np.ndarray] = {}
        self.hist: np.ndarray | None = None  # (cap, 42) float32, NaN rows where a step has no histogram

    def _grow(self, need: int) -> None:
        cap = self.cap
        while cap < need:
            cap *= 2
        if cap == self.cap:
            return

        def grown(a: np.ndarray, fill) -> np.ndarray:
            b = np.full((cap,) + a.shape[1:], fill, dtype=a.dtype)
            b[: self.n] = a[: self.n]
            return b

        self.steps = grown(self.steps, 0)
        self.cols = {k: grown(v, np.nan) for k, v in self.cols.items()}
        if self.hist is not None:
            self.hist = grown(self.hist, np.nan)
        self.cap = cap

    def _column(self, name: str) -> np.ndarray:
        col = self.cols.get(name)
        if col is None:
            col = self.cols[name] = np.full(self.cap, np.nan)
        return col

    def add(self, rec: dict) -> None:
        """Add one metrics record (see the module docstring for repeated and earlier steps)."""
        step = int(rec["step"])
        if self.n and step <= self.steps[self.n - 1]:
            if step < self.steps[self.n - 1]:  # went back: drop rows >= step, then append
                self.truncate(int(np.searchsorted(self.steps[: self.n], step, side="left")))
                row = self._new_row(step)
            else:
                row = self.n - 1
        else:
            row = self._new_row(step)
        for k, v in rec.items():
            if k == "step":
                continue
            if v.__class__ in _NUMERIC:
                self._column(k)[row] = v
            elif k == HIST_KEY and isinstance(v, list) and len(v) == HIST_LEN:
                self._hist_rows([row], [v])

    def add_many(self, recs: list[dict]) -> None:
        """Add records in order; runs of strictly increasing new steps go in as one block (the fast path of
        a first read: one numpy conversion per metric instead of one assignment per value)."""
        i = 0
        while i < len(recs):
            prev = self.steps[self.n - 1] if self.n else None
            j = i
            while j < len(recs) and (prev is None or int(recs[j]["step"]) > prev):
                prev = int(recs[j]["step"])
                j += 1
            if j - i > 1:
                self._append_block(recs[i:j])
                i = j
            else:
                self.add(recs[i])
                i += 1

    def _append_block(self, block: list[dict]) -> None:
        m, start = len(block), self.n
        self._grow(start + m)
        self.steps[start: start + m] = [int(r["step"]) for r in block]
        keys: set[str] = set()
        for r in block:
            keys.update(r)
        keys.discard("step")
        for k in keys:
            vals = [r.get(k) for r in block]
            if k == HIST_KEY:
                rows = [start + i for i, v in enumerate(vals) if isinstance(v, list) and len(v) == HIST_LEN]
                self._hist_rows(rows, [vals[r - start] for r in rows])
                continue
            arr = np.fromiter((v if v.__class__ in _NUMERIC else np.nan for v in vals), dtype=float, count=m)
            if k in self.cols or not np.isnan(arr).all():  # a key that is never a number gets no column
                self._column(k)[start: start + m] = arr
        self.n += m

    def _hist_rows(self, rows: list[int], hists: list[list]) -> None:
        if not rows:
            return
        if self.hist is None:
            self.hist = np.full((self.cap, HIST_LEN), np.nan, dtype=np.float32)
        try:
            self.hist[rows] = np.asarray(hists, dtype=np.float32)
        except (TypeError, ValueError):  # a malformed histogram is left out, not fatal
            for r, h in zip(rows, hists):
                try:
                    self.hist[r] = np.asarray(h, dtype=np.float32)
                except (TypeError, ValueError):
                    pass

    def _new_row(self, step: int) -> int:
        self._grow(self.n + 1)  # rows past n are all NaN (see _clear)
        row = self.n
        self.steps[row] = step
        self.n += 1
        return row

    def _clear(self, a: int, b: int) -> None:
        """Reset rows [a, b) to NaN (kept so beyond :attr:`n`, so a new row starts empty)."""
        for col in self.cols.values():
            col[a:b] = np.nan
        if self.hist is not None:
            self.hist[a:b] = np.nan

    def truncate(self, n: int) -> None:
        """Keep only the first `n` rows."""
        n = max(0, min(n, self.n))
        self._clear(n, self.n)
        self.n = n

    def thin(self) -> None:
        """Keep every other row of the older half (the newest half stays exact): bounds memory on very long runs."""
        half = self.n // 2
        keep = np.r_[np.arange(0, half, 2), np.arange(half, self.n)]
        m = len(keep)
        self.steps[:m] = self.steps[keep]
        for col in self.cols.values():
            col[:m] = col[keep]
        if self.hist is not None:
            self.hist[:m] = self.hist[keep]
        self._clear(m, self.n)
        self.n = m

    def nbytes(self) -> int:
        """Bytes held by the arrays (capacity included)."""
        return self.steps.nbytes + sum(c.nbytes for c in self.cols.values()) + (self.hist.nbytes if self.hist is not None else 0)


class RunStore:
    """One run directory, read incrementally. Thread-safe: :attr:`lock` guards every read and refresh."""

    def __init__(self, run_dir: str | Path, run_id: int, *, max_rows: int = 200_000, max_samples: int = 20_000,
                 max_alerts: int = 10_000, chunk_bytes: int = 4 << 20):
        self.path = Path(run_dir)
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: not a directory (expected a gmpo run directory)")
        self.id, self.name = run_id, self.path.name or str(self.path)
        self.max_rows, self.max_samples = max_rows, max_samples
        self.lock = threading.RLock()
        self._tails = {f: JsonlTail(self.path / f, max_bytes=chunk_bytes) for f in (METRICS, ALERTS, SAMPLES)}
        self.table = Columns()
        self.alerts: deque[dict] = deque(maxlen=max_alerts)
        self.samples: deque[dict] = deque(maxlen=max_samples)
        self.n_samples_seen = 0
        self.version = 0  # bumps whenever anything changed
        self.restarts = 0  # times a file was truncated or replaced under us
        self.config = self._read_config()

    # -- config ---------------------------------------------------------------------------------
    def _read_config(self) -> dict:
        f = self.path / CONFIG
        try:
            cfg = yaml.safe_load(f.read_text(encoding="utf-8")) if f.is_file() else {}
        except (OSError, yaml.YAMLError):
            cfg = {}
        return cfg if isinstance(cfg, dict) else {}

    def info(self) -> dict:
        """Static facts of the run: id, name, path, algorithm, seed, clip range, eval size."""
        algo_cfg = self.config.get("algorithm")
        algo_cfg = algo_cfg if isinstance(algo_cfg, dict) else {}
        algo, seed = run_identity(self.path, self.config)
        try:
            clip = clip_range(algo, algo_cfg.get("eps_low"), algo_cfg.get("eps_high"))
        except (TypeError, ValueError) as e:  # a hand-edited config: show the run, say why the clip is missing
            clip = {"lo": None, "hi": None, "space": None, "note": f"clip range not marked: {e}"}
        return {"id": self.id, "name": self.name, "path": str(self.path), "algo": algo,
                "seed": seed if isinstance(seed, int) else None, "clip": clip, "eval_n": self.eval_n()}

    def eval_n(self) -> int | None:
        """Problems per held-out evaluation (data.eval_size; for the built-in task with 0 = all, its n_eval)."""
        data = self.config.get("data")
        data = data if isinstance(data, dict) else {}
        n = data.get("eval_size")
        if isinstance(n, int) and n > 0:
            return n
        if n == 0 and data.get("dataset") == "arithmetic":
            n_eval = (data.get("arithmetic") or {}).get("n_eval") if isinstance(data.get("arithmetic"), dict) else None
            return n_eval if isinstance(n_eval, int) and n_eval > 0 else None
        return None

    # -- tailing --------------------------------------------------------------------------------
    def _chunks(self, fname: str) -> Iterator[tuple[list[dict], bool]]:
        """The complete records appended to `fname` since the last call, one read chunk at a time (memory
        stays at one chunk's records), each with whether the file restarted first (truncated or replaced:
        then what the caller holds from this file is void and the records are the new file's, from its start)."""
        tail = self._tails[fname]
        while True:
            offset, resets = tail.offset, tail.resets
            got = tail.read()
            reset = tail.resets != resets
            if got or reset:
                yield got, reset
            if tail.offset - (0 if reset else offset) < tail.max_bytes:  # a short chunk: caught up with the writer
                return

    def refresh(self) -> bool:
        """Read what was appended since the last call; True when anything changed."""
        with self.lock:
            changed = False
            if not self.config and (self.path / CONFIG).is_file():  # the trainer writes it when it starts
                self.config = self._read_config()
                changed = bool(self.config)
            for recs, reset in self._chunks(METRICS):
                if reset:
                    self.table, self.restarts = Columns(), self.restarts + 1
                recs = [r for r in recs if r.get("step").__class__ in (int, float)]
                block = max(1, self.max_rows // 2)
                for i in range(0, len(recs), block):  # thin between blocks: memory stays bounded
                    self.table.add_many(recs[i: i + block])
                    while self.table.n > self.max_rows:
                        self.table.thin()
                changed = True
            for fname, store in ((ALERTS, self.alerts), (SAMPLES, self.samples)):
                for got, reset in self._chunks(fname):
                    if reset:
                        store.clear()
                        if fname == SAMPLES:
                            self.n_samples_seen = 0
                    if fname == SAMPLES:
                        got = [_trim_sample(s) for s in got]
                        self.n_samples_seen += len(got)
                    store.extend(got)
                    changed = True
            if changed:
                self.version += 1
            return changed

    # -- views ----------------------------------------------------------------------------------
    def series(self, metric: str, x0: float | None = None, x1: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of `metric` within [x0, x1], finite rows only (copies; call under :attr:`lock`)."""
        t = self.table
        col = t.cols.get(metric)
        if col is None or t.n == 0:
            return np.empty(0, dtype=np.int64), np.empty(0)
        steps, vals = t.steps[: t.n], col[: t.n]
        a = 0 if x0 is None else int(np.searchsorted(steps, x0, side="left"))
        b = t.n if x1 is None else int(np.searchsorted(steps, x1, side="right"))
        steps, vals = steps[a:b], vals[a:b]
        ok = np.isfinite(vals)
        return steps[ok].copy(), vals[ok].copy()

    def hist_rows(self, x0: float | None = None, x1: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(steps, counts (m, 42)) of the rows that carry ``ratio/log_hist`` within [x0, x1]."""
        t = self.table
        if t.hist is None or t.n == 0:
            return np.empty(0, dtype=np.int64), np.empty((0, HIST_LEN))
        steps, h = t.steps[: t.n], t.hist[: t.n]
        ok = np.isfinite(h[:, 0])
        if x0 is not None:
            ok &= steps >= x0
        if x1 is not None:
            ok &= steps <= x1
        return steps[ok].copy(), h[ok].astype(np.float64)

    def has_hist(self) -> bool:
        """True when at least one step logged ``ratio/log_hist``."""
        t = self.table
        return t.hist is not None and bool(np.isfinite(t.hist[: t.n, 0]).any())

    def last_step(self) -> int | None:
        """The newest step in the table (None before the first record)."""
        return int(self.table.steps[self.table.n - 1]) if self.table.n else None

    def status(self) -> dict:
        """What the live stream tells the page about this run."""
        return {"id": self.id, "rows": self.table.n, "last_step": self.last_step(), "alerts": len(self.alerts),
                "samples": self.n_samples_seen, "restarts": self.restarts, "version": self.version}

    def records(self, keys: tuple[str, ...]) -> list[dict]:
        """Rows as dicts holding only `keys` (finite values) plus "step": the shape gmpo.report.table reads."""
        t = self.table
        cols = {k: t.cols[k][: t.n].tolist() for k in keys if k in t.cols}
        out = []
        for i, s in enumerate(t.steps[: t.n].tolist()):
            rec = {"step": s}
            for k, c in cols.items():
                if c[i] == c[i]:  # not NaN
                    rec[k] = c[i]
            out.append(rec)
        return out


def _trim_sample(s: dict) -> dict:
    """A sample record with its long text fields cut to SAMPLE_TEXT_MAX characters (memory bound)."""
    out = s
    for k in ("prompt", "completion", "answer"):
        v = s.get(k)
        if v.__class__ is str and len(v) > SAMPLE_TEXT_MAX:
            if out is s:
                out = dict(s)
            out[k] = v[:SAMPLE_TEXT_MAX] + f"… [{len(v) - SAMPLE_TEXT_MAX} more characters]"
    return out
