"""math-verify in killable processes: a warm server that forks one child per concurrent comparison.

Why processes. math-verify (sympy) can run for minutes on an answer like ``9^{9^{9}}``; its own
timeout uses ``signal.alarm``, which works only in the main thread and not inside every C loop. Here a
comparison runs in a child process that is killed at its deadline, so nothing can hold the caller.

Shape. :class:`MathVerifyPool` (in the caller) keeps one server subprocess per concurrent caller
thread. A server imports math-verify once and forks children from that warm state (a fork costs about
5 ms, an import about 1 s). For a batch of comparisons it runs ``slots`` children at a time; a
comparison still running after ``SLICE_S`` (normal ones take 2-20 ms) is paused (SIGSTOP) and its slot
goes to the next one. When the queue is empty, or ``BACKGROUND_MAX`` comparisons are paused, the paused
ones resume together for one shared ``timeout`` and whatever is still running then is killed (wrong).
So a batch with k slow comparisons costs about ``k * SLICE_S / slots + timeout * ceil(k / BACKGROUND_MAX)``
of wall time instead of ``k * timeout`` (64 x ``\\boxed{9^{9^{9}}}`` on 2 CPUs: about 2 s at a 1 s
timeout), a slow comparison never delays the quick ones queued behind it, and the normal ones are not
slowed by the slow ones (paused children use no CPU). The price: slow comparisons of one batch share
the CPU for their common ``timeout``, so in a batch flooded with pathological answers a legitimately
slow one (over ~0.1 s of CPU) can time out too.
"""
from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque

log = logging.getLogger(__name__)

SLICE_S = 0.03  # CPU seconds after which a comparison is paused and its slot freed (normal: 2-15 ms)
_WALL_SLICE_S = 3 * SLICE_S  # ... or after this much wall time
_CHECK_S = 0.004  # how often running comparisons are checked
BACKGROUND_MAX = 64  # paused comparisons resumed together (bounds the processes and memory of a flood)
GRACE_S = 2.0  # extra wait for the server past the time it owes an answer before it is killed
STARTUP_S = 120.0  # a server must import math-verify within this (generous: the CPU may be busy)
_CHILD_NICE = 5  # children yield to the server (forking, reading answers)
_SLOW_NICE = 15  # comparisons that used a whole slice yield to those paused only because the CPU was busy
SLOTS = max(2, min(8, 2 * (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)))


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

    def run(self, jobs: list, timeout: float, emit) -> None:
        """Compare every ``jobs[i] = (pred, gold)``; ``emit(i, ok, status)`` once per job, ``emit(None, ...)``
        as a heartbeat when comparisons are paused."""
        pending = deque(range(len(jobs)))
        running: dict[int, _Child] = {}  # rfd -> child, in a slot
        paused: list[_Child] = []
        while pending or running or paused:
            if paused and (len(paused) >= BACKGROUND_MAX or not (pending or running)):
                self._resume_together(paused, timeout, emit)
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
                # slow: SLICE_S of CPU used, or 3x that in wall time (a busy machine slows every comparison)
                if c.cpu_used() >= SLICE_S or now - c.start >= _WALL_SLICE_S:
                    os.kill(c.pid, signal.SIGSTOP)
                    paused.append(running.pop(fd))
                    emit(None, False, "paused")

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
    ``{"i", "ok", "status"}`` lines (``{"hb": 1}`` heartbeats while pausing slow ones), then ``{"done": 1}``."""
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
            sched.run([tuple(j) for j in req["jobs"]], float(req["timeout"]), emit)
            out.write(json.dumps({"done": 1}) + "\n")
            out.flush()
            sched.reap()
    finally:  # EOF, or a broken pipe to a caller that died: the children go with us
        for c in list(sched.live):
            c.kill()
        sched.dying += sched.live
        sched.reap(block=True)


# --------------------------------------------------------------------------------------------------
# the caller's side

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
            [sys.executable, "-c", "from gmpo.grading.pool import serve; serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True,
        )
        self._buf = b""
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


__all__ = ["BACKGROUND_MAX", "SLICE_S", "MathVerifyPool", "ServerDied", "mv_equal", "serve"]
