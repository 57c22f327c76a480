"""The one reader (and tailer) of a run directory's jsonl files: metrics.jsonl, alerts.jsonl, samples.jsonl.

Writers append one JSON object per line and may be killed mid-line, so a reader skips a torn line
(it is either the last line, still being written, or a crash leftover) instead of failing. The dashboard
tails files while they grow (:class:`JsonlTail`): only complete lines are consumed, a partial last line is
kept for the next read, and a file that shrinks or is replaced (a run restarted from a checkpoint
truncates its metrics) is read again from the start.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

METRICS, ALERTS, SAMPLES, CONFIG = "metrics.jsonl", "alerts.jsonl", "samples.jsonl", "config.yaml"
MODEL_SOURCE = "model_source.json"  # the registered version a run started from (registry:NAME@ALIAS refs only)


_COMPARE_NAME = re.compile(r"^(?P<algo>.+)-s(?P<seed>\d+)$")  # the '<algo>-s<seed>' directories of `gmpo compare`


def run_identity(run_dir: str | Path, config: dict | None) -> tuple[str | None, int | None]:
    """(algorithm, seed) of a run: from its config.yaml contents (`config`, a dict or None), else from a
    ``<algo>-s<seed>`` directory name; None for what neither says."""
    cfg = config if isinstance(config, dict) else {}
    algo = (cfg.get("algorithm") or {}).get("loss") if isinstance(cfg.get("algorithm"), dict) else None
    seed = (cfg.get("train") or {}).get("seed") if isinstance(cfg.get("train"), dict) else None
    m = _COMPARE_NAME.match(Path(run_dir).name)
    if not isinstance(algo, str):
        algo = m.group("algo") if m else None
    if not isinstance(seed, int) or isinstance(seed, bool):
        seed = int(m.group("seed")) if m else None
    return algo, seed


def write_model_source(run_dir: str | Path, source: dict) -> None:
    """Record the registered version a run started from: ``{"ref", "name", "version", "sha256", "path"}``."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / MODEL_SOURCE).write_text(json.dumps(source, indent=2) + "\n")


def record_model_source(run_dir: str | Path, source: dict | None) -> None:
    """:func:`write_model_source` unless `source` is None or the run already recorded one (a resumed run keeps
    the version it first started from, wherever the alias points now)."""
    if source and read_model_source(run_dir) is None:
        write_model_source(run_dir, source)


def read_model_source(run_dir: str | Path) -> dict | None:
    """What :func:`write_model_source` recorded in `run_dir` (None when the run did not start from the registry)."""
    p = Path(run_dir) / MODEL_SOURCE
    if not p.is_file():
        return None
    rec = json.loads(p.read_text())
    return rec if isinstance(rec, dict) else None


def _parse(line: str) -> dict | None:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a jsonl file in order (torn or non-object lines skipped; nothing if absent)."""
    p = Path(path)
    if not p.is_file():
        return
    with open(p, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = _parse(line)
                if rec is not None:
                    yield rec


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every JSON object of a jsonl file (see :func:`iter_jsonl`)."""
    return list(iter_jsonl(path))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl, the last one per step, sorted by step (a resumed run logs a step again)."""
    by_step: dict[int, dict] = {}
    for rec in iter_jsonl(path):
        if "step" in rec:
            by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]


def read_alerts(run_dir: str | Path) -> list[dict]:
    """The guard events of ``<run_dir>/alerts.jsonl`` (empty when there were none)."""
    return read_jsonl(Path(run_dir) / ALERTS)


def truncate_jsonl(path: str | Path, max_step: int) -> None:
    """Drop records with ``step > max_step`` (resuming from an earlier checkpoint into the same run);
    torn lines go too. Written atomically (a temporary file renamed over the original)."""
    path = Path(path)
    if not path.is_file():
        return
    keep = [json.dumps(r) for r in iter_jsonl(path) if r.get("step", 0) <= max_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
    os.replace(tmp, path)


class JsonlTail:
    """Incremental reader of a growing jsonl file: each :meth:`read` returns the complete new records.

    A partial last line waits for its newline; if the file shrinks or is replaced (another inode), reading
    restarts from the beginning and :attr:`resets` counts it, so a caller can drop what it had.
    """

    def __init__(self, path: str | Path, max_bytes: int = 64 << 20):
        self.path, self.max_bytes = Path(path), max_bytes
        self.offset, self.resets = 0, 0
        self._inode: int | None = None
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        """New complete records since the last call (at most ``max_bytes`` read per call)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        if (self._inode is not None and st.st_ino != self._inode) or st.st_size < self.offset:
            self.offset, self._partial, self.resets = 0, b"", self.resets + 1
        self._inode = st.st_ino
        if st.st_size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(self.max_bytes)
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # b"" when the chunk ended on a newline
        out = []
        for line in lines:
            if line.strip():
                rec = _parse(line.decode("utf-8", errors="replace"))
                if rec is not None:
                    out.append(rec)
        return out
