"""What a sandboxed run is allowed (:class:`Limits`), what it runs (:class:`Program`) and what came back
(:class:`Result`, with one of :data:`STATUSES`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

OK, FAILED, TIMEOUT, MEMORY, CRASHED, SANDBOX_ERROR = "ok", "failed", "timeout", "memory", "crashed", "sandbox-error"
STATUSES = (OK, FAILED, TIMEOUT, MEMORY, CRASHED, SANDBOX_ERROR)


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run (each enforced by the kernel or by the runner's clock).

    ``timeout``: wall-clock seconds; the process group (and, in the fallback, every process of the run's
    uid) is killed when it passes. ``cpu_s``: RLIMIT_CPU (0 = ceil(timeout) + 1). ``memory_mb``:
    RLIMIT_AS (address space; Python raises MemoryError). ``file_size_mb``: RLIMIT_FSIZE (largest file
    written). ``open_files``: RLIMIT_NOFILE. ``processes``: RLIMIT_NPROC (processes *and threads* of the
    run's uid, counting the sandbox's own helper processes). ``output_bytes``: bytes kept of stdout and of
    stderr each; a program writing more is killed (reason ``output-limit``).
    """

    timeout: float = 10.0
    cpu_s: int = 0
    memory_mb: int = 1024
    file_size_mb: int = 16
    open_files: int = 64
    processes: int = 32
    output_bytes: int = 64 * 1024

    def __post_init__(self):
        for name in ("timeout", "memory_mb", "file_size_mb", "open_files", "processes", "output_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
                raise ValueError(f"sandbox limit {name} must be a positive number, got {v!r}")
        if self.cpu_s < 0:
            raise ValueError(f"sandbox limit cpu_s must be >= 0 (0 = from the timeout), got {self.cpu_s!r}")
        if self.open_files < 16:
            raise ValueError(f"sandbox limit open_files must be >= 16 (the interpreter needs a few), got {self.open_files}")
        if self.processes < 4:
            raise ValueError(f"sandbox limit processes must be >= 4 (the sandbox's own helpers count), got {self.processes}")

    @property
    def cpu_seconds(self) -> int:
        """The RLIMIT_CPU soft limit in whole seconds."""
        return int(self.cpu_s) if self.cpu_s else int(math.ceil(self.timeout)) + 1


@dataclass(frozen=True)
class Program:
    """A Python program to run: its source, stdin, argv, extra files written beside it, files to read back.

    ``files``: name -> text written into the private working directory before the run. ``collect``:
    names of files the program (or a harness in ``source``) writes there, read back into
    :attr:`Result.files` (at most ``Limits.output_bytes`` each).
    """

    source: str
    stdin: str = ""
    argv: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)
    collect: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.source, str):
            raise TypeError(f"program source must be a string, got {type(self.source).__name__}")
        for name in [*self.files, *self.collect]:
            if not name or "/" in name or name in (".", "..") or name == "main.py" or name.startswith(".stdin"):
                raise ValueError(f"sandbox file name {name!r} must be a plain name (no '/'), not main.py or .stdin*")


@dataclass
class Result:
    """The outcome of one run.

    ``status``: ok (exit 0) / failed (non-zero exit, or killed for too much output) / timeout (wall or
    CPU limit) / memory (MemoryError or the address-space limit) / crashed (killed by a signal such as
    SIGSEGV) / sandbox-error (the sandbox itself could not start the program). ``exit_code``: the
    program's exit status, negative for a signal (-11 = SIGSEGV). ``reason``: the cause in words.
    """

    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    wall_s: float
    reason: str = ""
    truncated: bool = False  # stdout or stderr was cut at Limits.output_bytes
    files: dict[str, str] = field(default_factory=dict)
    isolation: str = ""  # the mode that ran it: bubblewrap | fallback

    @property
    def ok(self) -> bool:
        """True when the program exited with status 0."""
        return self.status == OK
