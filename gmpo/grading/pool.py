"""The caller's side of grading: a pool of grading servers (:mod:`gmpo.grading.server`), one per
concurrent caller thread, each serving whole batches of ``(pred, gold)`` comparisons.

A server that stops answering for longer than a comparison may take (``timeout`` + ``GRACE_S``) is
killed and its comparisons count as wrong; its children die with it. Timeouts and errors are counted
(:func:`gmpo.grading.grader_stats`).
"""
from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)

GRACE_S = 2.0  # extra wait for the server past the time it owes an answer before it is killed
STARTUP_S = 120.0  # a server must import math-verify within this (generous: the CPU may be busy)


class ServerDied(RuntimeError):
    """A grading server exited or stopped answering."""


class _Server:
    """One server subprocess, used by one thread at a time."""

    def __init__(self) -> None:
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from gmpo.grading.server import serve; serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True,
        )
        self._buf = b""
        self.last_stats: dict = {}  # the server's figures for the last batch: rounds, round_s, wall_s
        if self._read(STARTUP_S) is None:  # imports sympy: about a second on an idle machine
            self.close()
            raise ServerDied(f"grading server did not start within {STARTUP_S:.0f}s")

    def run(self, jobs: list[tuple[str, str]], timeout: float) -> list[tuple[bool, str]]:
        """(ok, status) per job. Raises :class:`ServerDied` if the server goes quiet for longer than a
        comparison may take (``timeout`` + grace): it is then killed."""
        msg = json.dumps({"jobs": jobs, "timeout": timeout}) + "\n"
        try:
            self.proc.stdin.write(msg.encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise ServerDied(str(e)) from e
        results: list[tuple[bool, str] | None] = [None] * len(jobs)
        while True:
            reply = self._read(timeout + GRACE_S)
            if reply is None:
                self.close()
                raise ServerDied(f"grading server silent for {timeout + GRACE_S:.1f}s")
            if "done" in reply:
                self.last_stats = {k: v for k, v in reply.items() if k != "done"}
                break
            if "i" in reply:
                results[reply["i"]] = (bool(reply["ok"]), reply["status"])
        return [r if r is not None else (False, "error: no answer") for r in results]

    def _read(self, wait: float) -> dict | None:
        """The next line from the server, or None if none came within ``wait`` seconds."""
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + wait
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise ServerDied(f"grading server exited with code {self.proc.poll()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        """Kill the server (its children die with it) and close the pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class MathVerifyPool:
    """Idle servers, one handed to each concurrent caller (thread-safe); counts timeouts and errors."""

    def __init__(self, max_idle: int = 4) -> None:
        self._idle: list[_Server] = []
        self._lock = threading.Lock()
        self.max_idle = max_idle
        self.n_timeouts = 0
        self.n_errors = 0
        self.last_stats: dict = {}  # the last batch's server figures (rounds, round_s, wall_s) of any thread

    def run(self, jobs: list[tuple[str, str]], timeout: float) -> list[bool]:
        """Whether each ``(pred, gold)`` is equivalent; a comparison past ``timeout`` seconds is False."""
        if not jobs:
            return []
        with self._lock:
            server = self._idle.pop() if self._idle else None
        try:
            if server is None:
                server = _Server()
            out = server.run(jobs, timeout)
            self.last_stats = server.last_stats
        except ServerDied as e:
            if server is not None:
                server.close()
            with self._lock:
                self.n_errors += len(jobs)
            log.warning("grading server failed (%s); %d comparisons counted as wrong (first: pred=%r gold=%r)",
                        e, len(jobs), jobs[0][0][:200], jobs[0][1][:200])
            return [False] * len(jobs)
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(server)
                server = None
        if server is not None:
            server.close()
        self._count(jobs, out, timeout)
        return [ok for ok, _ in out]

    def _count(self, jobs: list, out: list[tuple[bool, str]], timeout: float) -> None:
        timed = [j for j, (_, s) in zip(jobs, out) if s == "timeout"]
        errors = [(j, s) for j, (_, s) in zip(jobs, out) if s not in ("ok", "timeout")]
        with self._lock:
            self.n_timeouts += len(timed)
            self.n_errors += len(errors)
        if timed:
            log.warning("grading: %d of %d comparisons timed out after %.1fs; counted as wrong "
                        "(first: pred=%r gold=%r)",
                        len(timed), len(jobs), timeout, timed[0][0][:200], timed[0][1][:200])
        for (pred, gold), status in errors[:3]:
            log.debug("grading error %s: pred=%r gold=%r", status, pred[:200], gold[:200])

    def close(self) -> None:
        """Stop every idle server (a later call starts a fresh one)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for s in idle:
            s.close()


__all__ = ["GRACE_S", "MathVerifyPool", "ServerDied"]
