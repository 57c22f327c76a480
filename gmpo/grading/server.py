"""The grading server process: math-verify warm in one process, each comparison in a killable child.

Why processes. math-verify (sympy) can run for minutes on an answer like ``9^{9^{9}}``; its own
timeout uses ``signal.alarm``, which works only in a main thread. Here a comparison runs in a child
process that is killed at its deadline, so nothing can hold the caller (:mod:`gmpo.grading.pool`).

The server imports math-verify once, warms the usual answer shapes, and forks children from that state
(a fork costs ~3-10 ms, an import with warm-up ~2 s). For a batch it runs ``SLOTS`` children at a time;
a comparison that has used ``SLICE_S`` of CPU (or 3x that in wall time on a busy machine) is paused
(SIGSTOP) and its slot goes to the next one. Once the queue is empty, or ``BACKGROUND_MAX`` are paused,
the paused ones resume together for one shared ``timeout``; what still runs then is killed (wrong).
Those paused for their own CPU use run at a lower priority than those paused only by a busy CPU.

Cost: a batch with k slow comparisons takes about ``k * SLICE_S / cores + timeout * ceil(k / 96)`` of
wall time, not ``k * timeout``; quick comparisons never wait behind slow ones, and paused children use
no CPU. The price: the slow comparisons of one batch share the CPU for their common timeout, so in a
batch flooded with pathological answers a legitimately slow one (> ~0.1 s of CPU; the 99th percentile
of MATH500 comparisons is ~0.12 s, the median 5 ms) can time out too. Linux (fork, /proc, prctl).
"""
from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import select
import signal
import sys
import time
from collections import deque

SLICE_S = 0.03  # CPU seconds after which a comparison is paused and its slot freed (median comparison: 5 ms)
_WALL_SLICE_S = 3 * SLICE_S  # ... or after this much wall time
_CHECK_S = 0.004  # how often running comparisons are checked
BACKGROUND_MAX = 96  # paused comparisons resumed together (bounds the processes and memory of a flood)
_CHILD_NICE = 5  # children yield to the server (forking, reading answers)
_SLOW_NICE = 15  # comparisons that used a whole slice yield to those paused only because the CPU was busy
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
SLOTS = max(2, min(8, 2 * _CPUS))  # comparisons run at once


# one comparison of each common answer shape: sympy initialises many paths on first use (a first
# polynomial comparison costs ~300 ms, later ones ~5 ms), and every child inherits what the server did
_WARM_UP = [(r"\frac{1}{3}", r"\frac{2}{6}"), (r"2\sqrt{2}", r"\sqrt{8}"), ("x^2+2x+1", "(x+1)^2"),
            ("(1, 2)", r"\left( 1, 2 \right)"), (r"3\pi", r"2\pi"), (r"[1, 3)", r"[1, 3)"), (r"\{1, 2\}", "2, 1"),
            (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"), ("x = 5", "5"),
            (r"\text{Evelyn}", r"\text{Evelyn}"), (r"30^\circ", r"\frac{\pi}{6}"), ("0.5", r"\frac{1}{2}")]


def _wrap(s: str) -> str:
    s = s.strip().strip("$").strip()
    return s if "\\boxed" in s else "\\boxed{" + s + "}"


def mv_equal(pred: str, gold: str) -> bool:
    """math-verify equivalence of two answer strings (no timeout of its own: callers bound it)."""
    from math_verify import parse, verify as mv_verify

    g = parse(_wrap(gold), parsing_timeout=None)
    p = parse(_wrap(pred), parsing_timeout=None)
    if not g or not p:
        return False
    return bool(mv_verify(g, p, timeout_seconds=None))


# --------------------------------------------------------------------------------------------------
# the server process: children, the batch scheduler, the request loop

def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphaned sympy loops)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: children still exit at EOF on their job pipe
        pass


class _Child:
    """One forked comparison process, fed jobs over a pipe, one JSON line per answer."""

    def __init__(self, keep_closed: list[int]) -> None:
        job_r, job_w = os.pipe()
        res_r, res_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: compare until the job pipe closes
            code = 0
            try:
                _die_with_parent()
                os.nice(_CHILD_NICE)  # the server (forking, reading answers) goes first
                os.close(job_w)
                os.close(res_r)
                for fd in keep_closed:  # other children's pipes: a closed pipe must mean EOF to them
                    os.close(fd)
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)  # never hold the caller's pipes open
                os.dup2(null, 1)
                _child_loop(job_r, res_w)
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                os._exit(code)
        os.close(job_r)
        os.close(res_w)
        self.pid, self.wfd, self.rfd = pid, job_w, res_r
        self.buf = b""
        self.job: int | None = None
        self.start = self.cpu0 = 0.0
        self.reniced = False

    def cpu_s(self) -> float:
        """CPU seconds this child has run (Linux schedstat; wall-clock seconds where that is missing)."""
        try:
            with open(f"/proc/{self.pid}/schedstat", "rb") as f:
                return int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            return time.monotonic()

    def cpu_used(self) -> float:
        """CPU seconds spent on the current comparison."""
        return self.cpu_s() - self.cpu0

    def send(self, pred: str, gold: str) -> bool:
        """Hand the child a comparison; False if it is gone."""
        try:
            os.write(self.wfd, (json.dumps([pred, gold]) + "\n").encode())
            return True
        except OSError:
            return False

    def read(self) -> dict | None:
        """Read what is ready: the answer once a whole line arrived, None before; raises EOFError if it died."""
        chunk = os.read(self.rfd, 65536)
        if not chunk:
            raise EOFError(f"comparison process exited ({self.reap()})")
        self.buf += chunk
        if b"\n" not in self.buf:
            return None
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def reap(self, block: bool = True) -> str | None:
        """Collect the exited child: its exit status in words (None if ``block`` is off and it still runs)."""
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return "already reaped"
        if pid == 0:
            return None
        return f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"code {os.WEXITSTATUS(status)}"

    def kill(self) -> None:
        """SIGKILL (works on a paused child too) and close the pipes; :meth:`reap` it later."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.close_fds()

    def close_fds(self) -> None:
        for fd in (self.wfd, self.rfd):
            try:
                os.close(fd)
            except OSError:
                pass


def _child_loop(job_r: int, res_w: int) -> None:
    """Answer ``[pred, gold]`` lines with ``{"ok", "status"}`` lines until EOF."""
    with os.fdopen(job_r, "rb") as jobs:
        for line in jobs:
            pred, gold = json.loads(line)
            status, ok = "ok", False
            try:
                ok = mv_equal(pred, gold)
            except Exception as e:  # noqa: BLE001  (a grader error is a wrong answer, reported)
                status = f"error: {type(e).__name__}: {str(e)[:200]}"
            os.write(res_w, (json.dumps({"ok": ok, "status": status}) + "\n").encode())


class _Scheduler:
    """Runs one batch of comparisons on children: ``slots`` at a time, slow ones paused then resumed together."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.idle: list[_Child] = []
        self.live: list[_Child] = []
        self.dying: list[_Child] = []  # killed, not yet reaped (a dying process needs CPU: not waited for)

    def _spawn(self) -> _Child:
        c = _Child([fd for other in self.live for fd in (other.wfd, other.rfd)])
        self.live.append(c)
        return c

    def reap(self, block: bool = False) -> None:
        """Collect killed children that have exited (all of them if ``block``)."""
        self.dying = [c for c in self.dying if c.reap(block) is None]

    def _child(self) -> _Child:
        return self.idle.pop() if self.idle else self._spawn()

    def _release(self, c: _Child, alive: bool) -> None:
        """Back to the idle list (at most slots + 2 kept), or killed."""
        c.job = None
        if alive and not c.reniced and len(self.idle) < self.slots + 2:
            self.idle.append(c)
            return
        c.kill()
        self.live.remove(c)
        self.dying.append(c)

    def _collect(self, c: _Child, emit) -> bool:
        """Read from a ready child; True once its comparison is over (answered or died)."""
        try:
            reply = c.read()
        except (EOFError, OSError) as e:
            emit(c.job, False, f"error: {e}")
            self._release(c, alive=False)
            return True
        if reply is None:
            return False
        emit(c.job, bool(reply["ok"]), reply["status"])
        self._release(c, alive=True)
        return True

    def run(self, jobs: list, timeout: float, emit) -> dict:
        """Compare every ``jobs[i] = (pred, gold)``; ``emit(i, ok, status)`` once per job, ``emit(None, ...)``
        as a heartbeat when comparisons are paused. Returns ``{"rounds", "round_s", "wall_s"}``: how often
        paused comparisons were resumed together, the seconds that took, and the whole batch's seconds."""
        t0 = time.monotonic()
        stats = {"rounds": 0, "round_s": 0.0}
        pending = deque(range(len(jobs)))
        running: dict[int, _Child] = {}  # rfd -> child, in a slot
        paused: list[_Child] = []
        while pending or running or paused:
            if paused and (len(paused) >= BACKGROUND_MAX or not (pending or running)):
                t_round = time.monotonic()
                self._resume_together(paused, timeout, emit)
                stats["rounds"] += 1
                stats["round_s"] += time.monotonic() - t_round
                paused = []
                continue
            while pending and len(running) < self.slots:
                i = pending.popleft()
                c = self._child()
                c.job, c.start, c.cpu0 = i, time.monotonic(), c.cpu_s()
                if c.send(*jobs[i]):
                    running[c.rfd] = c
                else:
                    emit(i, False, "error: comparison process gone")
                    self._release(c, alive=False)
            if not running:
                continue
            if pending and not self.idle:  # fork the next child while these compare
                self.idle.append(self._spawn())
            ready, _, _ = select.select(list(running), [], [], _CHECK_S)
            for fd in ready:
                if self._collect(running[fd], emit):
                    del running[fd]
            now = time.monotonic()
            for fd, c in list(running.items()):
                # slow: SLICE_S of CPU used, or 3x that in wall time (a busy machine slows every comparison);
                # CPU time never exceeds wall time, so /proc is read only once SLICE_S of wall time has passed
                age = now - c.start
                if age >= _WALL_SLICE_S or (age >= SLICE_S and c.cpu_used() >= SLICE_S):
                    os.kill(c.pid, signal.SIGSTOP)
                    paused.append(running.pop(fd))
                    emit(None, False, "paused")
        return {**stats, "wall_s": time.monotonic() - t0}

    def _resume_together(self, paused: list[_Child], timeout: float, emit) -> None:
        """Resume the paused comparisons for one shared ``timeout``; kill what is still running then."""
        deadline = time.monotonic() + timeout
        waiting = {c.rfd: c for c in paused}
        for c in paused:
            if c.cpu_used() >= SLICE_S:  # slow by its own work (not paused for a busy CPU): runs behind the others
                try:
                    os.setpriority(os.PRIO_PROCESS, c.pid, _SLOW_NICE)
                    c.reniced = True  # an unprivileged process cannot raise it back: not reused
                except OSError:
                    pass
            os.kill(c.pid, signal.SIGCONT)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(list(waiting), [], [], left)
            for fd in ready:
                if self._collect(waiting[fd], emit):
                    del waiting[fd]
        for c in waiting.values():  # every SIGKILL first: a dying child needs CPU that the others hold
            os.kill(c.pid, signal.SIGKILL)
        for c in waiting.values():
            emit(c.job, False, "timeout")
            self._release(c, alive=False)


def serve() -> None:
    """The server's main: read ``{"jobs": [[pred, gold], ...], "timeout": s}`` lines on stdin; write
    ``{"i", "ok", "status"}`` lines (``{"hb": 1}`` heartbeats while pausing slow ones), then ``{"done": 1}``
    with the batch's :meth:`_Scheduler.run` figures."""
    logging.disable(logging.WARNING)  # math-verify warns that its timeout is disabled: we own it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the caller; we exit at EOF on stdin
    # (no PR_SET_PDEATHSIG here: it fires when the caller *thread* that started us ends, and callers
    # are often short-lived threads; a dead caller means EOF on stdin or a broken pipe, and we exit)
    for pred, gold in _WARM_UP:  # pay the sympy imports and first-use costs once, before forking
        mv_equal(pred, gold)
    gc.freeze()  # children share these pages instead of copying them on the first collection
    out = sys.stdout
    out.write(json.dumps({"ready": 1}) + "\n")
    out.flush()
    sched = _Scheduler(SLOTS)

    def emit(i, ok, status):
        out.write(json.dumps({"hb": 1} if i is None else {"i": i, "ok": ok, "status": status}) + "\n")
        out.flush()

    try:
        for line in sys.stdin:
            req = json.loads(line)
            stats = sched.run([tuple(j) for j in req["jobs"]], float(req["timeout"]), emit)
            out.write(json.dumps({"done": 1, **stats}) + "\n")
            out.flush()
            sched.reap()
    finally:  # EOF, or a broken pipe to a caller that died: the children go with us
        for c in list(sched.live):
            c.kill()
        sched.dying += sched.live
        sched.reap(block=True)


__all__ = ["BACKGROUND_MAX", "SLICE_S", "SLOTS", "mv_equal", "serve"]
