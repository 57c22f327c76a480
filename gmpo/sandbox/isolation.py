"""How a program is isolated: detect the strongest mode this machine allows and build its command line.

Modes (:func:`detect`):

- ``bubblewrap`` (Debian's ``bubblewrap``): new user, pid, network, ipc, uts and mount namespaces; the
  root file system read-only; a private ``/tmp`` that is the run's own working directory; tmpfs over
  /var/tmp, /dev/shm, /run, home directories, the caller's working directory and the project; a fresh
  /proc that shows only the sandbox; the process dies with its parent. Run as root, bubblewrap itself
  is started under an unprivileged uid of its own (see below), so the program is not uid 0 on the host
  and RLIMIT_NPROC binds.
- ``fallback`` (no usable bwrap): a new session and process group; rlimits via ``prlimit``; as root: a
  network namespace and a mount namespace (``unshare -n -m``) where the run's working directory is
  bind-mounted over /tmp and tmpfs masks the same paths as above, then ``setpriv`` to an unprivileged
  uid with no new privileges; not root: ``unshare --user --net`` where unprivileged user namespaces are
  allowed, else no network isolation (reported).

Each worker slot of a pool gets its own uid (``UID_BASE + 64 * pid + slot``, no passwd entry needed), so
NPROC counts only that run and after the run every process still owned by it (a ``setsid`` or double
``fork`` escapee) is found in /proc and killed. The interpreter is ``python -I -S`` (isolated mode, no
site-packages): the base interpreter of this Python when the sandbox uid can run it, else the system
``python3``.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from gmpo.sandbox.limits import Limits

MODES = ("bubblewrap", "fallback")
UID_BASE = 1_500_000_000  # per-slot uids: UID_BASE + 64 * pid + slot (pid < 2**22 keeps them < 2**31)
MAX_SLOTS = 64
# never masked: the system the interpreter needs
_KEEP = ("/", "/usr", "/etc", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/opt", "/proc", "/sys", "/dev", "/var")
_WRITABLE = ("/var/tmp", "/dev/shm", "/run", "/run/lock", "/var/lock", "/var/crash", "/dev/mqueue")
SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8"}
# the fallback's setup inside the new mount namespace: $1 = working dir, $2 = uid ('' = keep), $3.. masks,
# then '--' and the program's argv
_FALLBACK_SH = r"""
set -e
w="$1"; uid="$2"; shift 2
mount --bind "$w" /tmp
while [ "$1" != "--" ]; do
  if [ -d "$1" ]; then mount -t tmpfs -o size=64k,mode=755,nosuid,nodev gmpo-mask "$1"; fi
  shift
done
shift
cd /tmp
if [ -n "$uid" ]; then
  exec setpriv --reuid="$uid" --regid="$uid" --clear-groups --no-new-privs -- "$@"
fi
exec "$@"
"""


def slot_uid(slot: int) -> int:
    """The unprivileged uid worker slot ``slot`` of this process runs programs as (when root)."""
    if not 0 <= slot < MAX_SLOTS:
        raise ValueError(f"sandbox slot must be in [0, {MAX_SLOTS}), got {slot}")
    return UID_BASE + 64 * (os.getpid() % (1 << 22)) + slot


def _is_root() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True)
class Isolation:
    """A detected isolation mode and what it provides; :meth:`command` builds one run's command line."""

    mode: str  # bubblewrap | fallback
    python: str  # interpreter run as `python -I -S`
    drop_uid: bool  # runs under a per-slot unprivileged uid (we are root)
    network: str  # "namespace" | "none" (not isolated)
    filesystem: str  # what protects files, in words
    masks: tuple[str, ...] = ()  # host paths hidden under an empty tmpfs
    userns: bool = False  # non-root fallback: `unshare --user --net`
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        """One line: the mode, uid, network, file-system protection and interpreter."""
        uid = f"uid {UID_BASE}+64*pid+slot (unprivileged)" if self.drop_uid else f"uid {os.geteuid()} (not root: unchanged)"
        text = (f"{self.mode}: {uid}; network: {self.network}; files: {self.filesystem}; "
                f"python: {self.python} -I -S")
        return text + "".join(f"; note: {n}" for n in self.notes)

    def env(self) -> dict[str, str]:
        """The scrubbed environment every program gets (nothing of the parent's)."""
        return dict(SAFE_ENV)

    def command(self, workdir: str, uid: int | None, limits: Limits, program_argv: list[str]) -> list[str]:
        """The full argv: rlimits (prlimit), then the isolation, then ``program_argv`` (run in ``/tmp``)."""
        mb = 1024 * 1024
        cpu = limits.cpu_seconds
        argv = ["prlimit", f"--cpu={cpu}:{cpu + 1}", f"--as={limits.memory_mb * mb}",
                f"--fsize={limits.file_size_mb * mb}", f"--nofile={limits.open_files}",
                f"--nproc={limits.processes}", "--core=0", "--"]
        if self.mode == "bubblewrap":
            argv += ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/", "/",
                     "--proc", "/proc", "--dev", "/dev"]
            for m in self.masks:
                argv += ["--tmpfs", m]
            argv += ["--bind", workdir, "/tmp", "--chdir", "/tmp", "--"]
            return argv + program_argv
        if _is_root():
            if self.network == "namespace":
                argv += ["unshare", "--net", "--mount", "--"]
            else:
                argv += ["unshare", "--mount", "--"]
            argv += ["sh", "-c", _FALLBACK_SH, "gmpo-sandbox", workdir, str(uid) if self.drop_uid else "",
                     *self.masks, "--"]
            return argv + program_argv
        if self.userns:
            argv += ["unshare", "--user", "--net", "--"]
        return argv + program_argv


def _masks(python: str, extra: tuple[str, ...]) -> tuple[str, ...]:
    """Directories to hide: world-writable places, homes, the caller's cwd and project, ``extra``."""
    prefix = Path(python).resolve().parent.parent
    project = Path(__file__).resolve().parents[2]
    cands = [*_WRITABLE, "/root", "/home", os.getcwd(), str(project), tempfile.gettempdir(), *extra]
    out: list[str] = []
    for c in cands:
        p = Path(c)
        if not p.is_absolute() or p.is_symlink() or not p.is_dir():
            continue
        p = p.resolve()
        s = str(p)
        if s in _KEEP or s == "/tmp" or s.startswith(("/proc/", "/sys/")) or p in prefix.parents or p == prefix:
            continue
        if s.startswith("/tmp/"):  # already hidden: the run's private directory replaces all of /tmp
            continue
        if any(s == o or s.startswith(o.rstrip("/") + "/") for o in out):
            continue
        out = [o for o in out if not o.startswith(s.rstrip("/") + "/")] + [s]
    return tuple(out)


def _python_candidates(python: str | None) -> list[str]:
    if python:
        return [python]
    cands = [os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable), "/usr/bin/python3",
             "/usr/local/bin/python3", shutil.which("python3") or ""]
    seen: list[str] = []
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK) and os.path.realpath(c) not in seen:
            seen.append(os.path.realpath(c))
    if _is_root():  # the run's uid is not root: it must be able to reach the interpreter
        seen = [c for c in seen if _world_reachable(c)]
    return seen


def _world_reachable(path: str) -> bool:
    """Whether any user may execute ``path`` (o+x on it and on every directory above it)."""
    p = Path(path)
    return all(q.stat().st_mode & stat.S_IXOTH for q in [p, *p.parents])


def _probe_ok(iso: Isolation) -> tuple[bool, str]:
    """Run ``print(6 * 7)`` through ``iso``; (works?, why not)."""
    from gmpo.sandbox.runner import run_in

    res = run_in(iso, "print(6 * 7)", slot=MAX_SLOTS - 1, limits=Limits(timeout=20.0))
    if res.status == "ok" and res.stdout.strip() == "42":
        return True, ""
    return False, f"{res.status}: {res.reason} {res.stderr.strip()[-300:]}"


def _bwrap_usable() -> tuple[bool, str]:
    if not shutil.which("bwrap"):
        return False, "bwrap not found (apt-get install bubblewrap)"
    return True, ""


def _unshare_ok(args: list[str]) -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", *args, "--", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _build(mode: str, python: str, hide: tuple[str, ...]) -> Isolation:
    root = _is_root()
    masks = _masks(python, hide)
    if mode == "bubblewrap":
        return Isolation("bubblewrap", python, root, "namespace",
                         "read-only root; private /tmp = working dir; tmpfs over " + (", ".join(masks) or "nothing"),
                         masks)
    if root:
        net = _unshare_ok(["--net", "--mount"])
        if not net and not _unshare_ok(["--mount"]):
            return Isolation("fallback", python, True, "none",
                             "unprivileged uid only (no mount namespace: /tmp stays writable)", (),
                             notes=("unshare is not permitted here: no network or mount isolation",))
        return Isolation("fallback", python, True, "namespace" if net else "none",
                         "unprivileged uid; private /tmp = working dir; tmpfs over " + (", ".join(masks) or "nothing"),
                         masks)
    userns = _unshare_ok(["--user", "--net"])
    return Isolation("fallback", python, False, "namespace" if userns else "none",
                     "none beyond the user's own permissions (not root: no uid change, no mount masks)", (),
                     userns=userns, notes=("run as root or install bubblewrap for file-system isolation",))


class SandboxUnavailable(RuntimeError):
    """No isolation mode works on this machine (the message says what was tried and why it failed)."""


@functools.lru_cache(maxsize=8)
def detect(prefer: str = "auto", python: str | None = None, hide: tuple[str, ...] = ()) -> Isolation:
    """The strongest isolation that runs a probe program here (cached per process).

    ``prefer``: ``auto`` (bubblewrap if it works, else the fallback), ``bubblewrap`` (error if it does
    not work) or ``fallback``. ``python``: the interpreter (default: this Python's base interpreter,
    else the system python3 — whichever the sandbox uid can run). ``hide``: extra host directories
    to mask. Raises :class:`SandboxUnavailable` when nothing works.
    """
    if prefer not in ("auto", *MODES):
        raise ValueError(f"sandbox isolation must be auto, bubblewrap or fallback, got {prefer!r}")
    if not shutil.which("prlimit"):
        raise SandboxUnavailable("prlimit (util-linux) not found: the sandbox needs it to set resource limits")
    modes = ["bubblewrap", "fallback"] if prefer == "auto" else [prefer]
    tried = []
    for mode in modes:
        if mode == "bubblewrap":
            ok, why = _bwrap_usable()
            if not ok:
                tried.append(f"bubblewrap: {why}")
                continue
        for py in _python_candidates(python):
            iso = _build(mode, py, tuple(hide))
            ok, why = _probe_ok(iso)
            if ok:
                if tried and prefer == "auto":
                    iso = dataclasses.replace(iso, notes=iso.notes + tuple(tried))
                return iso
            tried.append(f"{mode} with {py}: {why}")
    raise SandboxUnavailable("no sandbox mode works here: " + " | ".join(tried))
