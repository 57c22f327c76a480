"""Run one program in a private working directory under an :class:`~gmpo.sandbox.isolation.Isolation`.

:func:`run_in` writes the program into a fresh directory, starts it in a new session with the scrubbed
environment, reads stdout/stderr up to the output cap while watching the wall clock, kills the process
group when the program ends, overruns or floods its output, kills every process left under the run's uid
(a child that detached with ``setsid`` or a double ``fork``), reads back the requested files, deletes the
directory, and classifies the outcome into one of :data:`~gmpo.sandbox.limits.STATUSES`.
"""
from __future__ import annotations

import atexit
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from gmpo.sandbox.limits import CRASHED, FAILED, MEMORY, OK, SANDBOX_ERROR, TIMEOUT, Limits, Program, Result
from gmpo.sandbox.isolation import Isolation, slot_uid

_BASE: list[str] = []
_SETUP_TOOLS = ("bwrap: ", "unshare: ", "setpriv: ", "prlimit: ", "mount: ", "sh: ", "gmpo-sandbox: ")
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT, signal.SIGSYS}


def base_dir() -> str:
    """This process's parent directory of run directories (mode 0711: run uids can reach only their own)."""
    if not _BASE:
        d = tempfile.mkdtemp(prefix="gmpo-sandbox-")
        os.chmod(d, 0o711)
        _BASE.append(d)
        atexit.register(shutil.rmtree, d, True)
    return _BASE[0]


def _proc_uid(pid: str) -> tuple[int, str] | None:
    """(real uid, state letter) of a process from /proc/<pid>/status (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read(2048).decode("ascii", "replace")
    except OSError:
        return None
    uid, state = -1, "?"
    for line in text.splitlines():
        if line.startswith("State:"):
            state = line.split()[1]
        elif line.startswith("Uid:"):
            uid = int(line.split()[1])
            break
    return uid, state


def kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid``: ``kill -KILL -1`` run as that uid (the kernel signals all of the
    uid's processes in one pass, so a fork bomb cannot outrun it), twice; a /proc sweep without ``kill``."""
    kill = shutil.which("kill")
    if kill is None:
        _sweep_uid(uid)
        return
    for _ in range(2):
        subprocess.run([kill, "-KILL", "-1"], user=uid, group=uid, extra_groups=[], env={},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)


def _sweep_uid(uid: int, rounds: int = 200) -> int:
    """Stop then kill every live process whose real uid is ``uid`` found in /proc; how many were signalled."""
    killed = 0
    for _ in range(rounds):
        pids = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                info = _proc_uid(entry.name)
                if info and info[0] == uid and info[1] not in ("Z", "X"):
                    pids.append(int(entry.name))
        if not pids:
            return killed
        for sig in (signal.SIGSTOP, signal.SIGKILL):  # stopped processes cannot fork while we sweep
            for p in pids:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
        killed += len(pids)
        time.sleep(0.002)
    return killed


def _write_dir(workdir: Path, program: Program, uid: int | None) -> None:
    (workdir / "main.py").write_text(program.source, encoding="utf-8")
    (workdir / ".stdin").write_text(program.stdin, encoding="utf-8")
    for name, text in program.files.items():
        (workdir / name).write_text(text, encoding="utf-8")
    if uid is not None:
        for p in [workdir, *workdir.iterdir()]:
            os.chown(p, uid, uid)


def _pump(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, str, bool]:
    """Read both pipes until the program exits, the deadline passes or the output cap is hit.

    Returns (stdout, stderr, why it stopped: "" | "timeout" | "output-limit", truncated).
    """
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    sel = selectors.DefaultSelector()
    for fd in bufs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    pidfd = os.pidfd_open(proc.pid)
    sel.register(pidfd, selectors.EVENT_READ)
    why, truncated, exited = "", False, False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                why = "timeout"
                break
            open_pipes = len(sel.get_map()) - (0 if exited else 1)
            if exited and open_pipes == 0:
                break
            # after the program exits, drain what is buffered (a detached child may hold the pipe open)
            events = sel.select(timeout=0.05 if exited else left)
            if exited and not events:
                break
            for key, _ in events:
                if key.fd == pidfd:
                    exited = True
                    sel.unregister(pidfd)
                    continue
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.fd]
                room = cap - len(buf)
                buf += chunk[:max(room, 0)]
                if len(chunk) > room:
                    truncated = True
                    why = "output-limit"
            if why:
                break
    finally:
        sel.close()
        os.close(pidfd)
    return bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), why, truncated


def _classify(iso: Isolation, rc: int, why: str, stderr: str, limits: Limits) -> tuple[str, str]:
    """(status, reason) from the exit status, why the runner stopped it, and stderr."""
    if why == "timeout":
        return TIMEOUT, f"killed after {limits.timeout:g} s wall time"
    if why == "output-limit":
        return FAILED, f"output-limit: more than {limits.output_bytes} bytes on stdout or stderr"
    sig = -rc if rc < 0 else (rc - 128 if iso.mode == "bubblewrap" and 128 < rc < 160 else 0)
    tail = stderr.rstrip().rsplit("\n", 1)[-1] if stderr.strip() else ""
    if sig:
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
        if sig == signal.SIGXCPU:
            return TIMEOUT, f"CPU limit ({limits.cpu_seconds} s): {name}"
        if "MemoryError" in stderr:
            return MEMORY, f"{name} after MemoryError"
        if sig in _CRASH_SIGNALS:
            return CRASHED, name
        return CRASHED, f"killed by {name}"
    if rc == 0:
        return OK, ""
    if tail.startswith("MemoryError") or "\nMemoryError" in stderr[-2000:]:
        return MEMORY, f"MemoryError (address space limit {limits.memory_mb} MB)"
    if rc in (1, 125, 126, 127) and stderr.startswith(_SETUP_TOOLS):
        return SANDBOX_ERROR, stderr.strip().splitlines()[0][:300]
    return FAILED, f"exit status {rc}" + (f": {tail[:200]}" if tail else "")


def run_in(iso: Isolation, program: Program | str, slot: int = 0, limits: Limits | None = None,
           workdir_base: str | None = None) -> Result:
    """Run ``program`` (a :class:`Program` or its source) through ``iso`` as worker ``slot``; never raises
    for anything the program does (failures to even start become status ``sandbox-error``)."""
    limits = limits or Limits()
    program = Program(program) if isinstance(program, str) else program
    t0 = time.monotonic()
    uid = slot_uid(slot) if iso.drop_uid else None
    workdir = Path(tempfile.mkdtemp(prefix=f"run{slot}-", dir=workdir_base or base_dir()))
    proc, why = None, ""
    try:
        _write_dir(workdir, program, uid)
        masked = iso.mode == "bubblewrap" or (iso.drop_uid and bool(iso.masks))
        env = iso.env()
        if not masked:  # /tmp is the host's: point HOME and TMPDIR at the private directory instead
            env.update(HOME=str(workdir), TMPDIR=str(workdir))
        argv = iso.command(str(workdir), uid, limits, [iso.python, "-I", "-S", "main.py", *program.argv])
        as_uid = uid if (iso.mode == "bubblewrap" and uid is not None) else None
        with open(workdir / ".stdin", "rb") as stdin:
            proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=workdir, env=env, start_new_session=True, close_fds=True,
                                    user=as_uid, group=as_uid, extra_groups=[] if as_uid is not None else None)
        os.unlink(workdir / ".stdin")  # the program has it as fd 0; it cannot reopen it by name
        out, err, why, truncated = _pump(proc, t0 + limits.timeout, limits.output_bytes)
    except OSError as e:
        return Result(SANDBOX_ERROR, None, "", "", time.monotonic() - t0, f"could not start: {e}", isolation=iso.mode)
    finally:
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the group: whatever the program left behind
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        # bubblewrap: when the program ends, the sandbox's init exits and the kernel kills and reaps every
        # process of its pid namespace first; when the runner killed bubblewrap, the init only learns of it
        # through its parent-death signal and the namespace is torn down asynchronously: sweep the uid then
        if uid is not None and (iso.mode != "bubblewrap" or proc is None or why):
            kill_uid(uid)
        files = _collect(workdir, program.collect, limits.output_bytes) if proc is not None else {}
        shutil.rmtree(workdir, ignore_errors=True)
    wall = time.monotonic() - t0
    stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    status, reason = _classify(iso, proc.returncode, why, stderr, limits)
    return Result(status, proc.returncode, stdout, stderr, wall, reason, truncated, files, iso.mode)


def _collect(workdir: Path, names: tuple[str, ...], cap: int) -> dict[str, str]:
    out = {}
    for name in names:
        p = workdir / name
        try:
            if p.is_file() and not p.is_symlink():
                with open(p, "rb") as f:
                    out[name] = f.read(cap).decode("utf-8", "replace")
        except OSError:
            pass
    return out
