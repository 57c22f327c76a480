"""A pool of worker slots that runs many sandboxed programs in parallel.

Each slot has its own unprivileged uid (when root), so one program's fork bomb counts against its own
RLIMIT_NPROC only and its leftovers are killed without touching another slot's run. Every run is bounded
by its wall-clock limit, so no program can hold a slot longer than ``Limits.timeout`` plus cleanup.
"""
from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from gmpo.sandbox.isolation import MAX_SLOTS, Isolation, detect
from gmpo.sandbox.limits import Limits, Program, Result
from gmpo.sandbox.runner import run_in


class SandboxPool:
    """Run programs in the sandbox, ``workers`` at a time.

    ``isolation``: ``auto`` | ``bubblewrap`` | ``fallback`` (see :func:`gmpo.sandbox.detect`) or an
    :class:`Isolation`. ``limits``: default :class:`Limits` of each run (a call may pass others).
    ``workers``: parallel runs (default: the CPU count, at most 63).
    """

    def __init__(self, workers: int | None = None, limits: Limits | None = None,
                 isolation: str | Isolation = "auto", hide: tuple[str, ...] = ()):
        self.isolation = isolation if isinstance(isolation, Isolation) else detect(isolation, None, tuple(hide))
        self.limits = limits or Limits()
        n = workers if workers is not None else (os.cpu_count() or 1)
        if not 1 <= n < MAX_SLOTS:
            raise ValueError(f"sandbox workers must be in [1, {MAX_SLOTS - 1}], got {n}")
        self.workers = n
        self._slots: queue.Queue[int] = queue.Queue()
        for s in range(n):
            self._slots.put(s)
        self._executor = ThreadPoolExecutor(max_workers=n, thread_name_prefix="gmpo-sandbox")
        self._lock = threading.Lock()
        self._closed = False

    def run(self, program: Program | str, limits: Limits | None = None) -> Result:
        """Run one program on a free slot (blocks while all slots are busy)."""
        slot = self._slots.get()
        try:
            return run_in(self.isolation, program, slot, limits or self.limits)
        finally:
            self._slots.put(slot)

    def map(self, programs: Iterable[Program | str], limits: Limits | None = None) -> list[Result]:
        """Run all ``programs`` in parallel; results in input order."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this SandboxPool is closed")
        futures = [self._executor.submit(self.run, p, limits) for p in programs]
        return [f.result() for f in futures]

    def close(self) -> None:
        """Wait for running programs and stop the worker threads."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=True)

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_DEFAULT: dict[tuple, SandboxPool] = {}
_DEFAULT_LOCK = threading.Lock()


def default_pool(isolation: str = "auto", workers: int | None = None) -> SandboxPool:
    """A shared pool per (isolation, workers), created on first use (reward functions use this)."""
    key = (isolation, workers)
    with _DEFAULT_LOCK:
        if key not in _DEFAULT:
            _DEFAULT[key] = SandboxPool(workers=workers, isolation=isolation)
        return _DEFAULT[key]


def run_program(program: Program | str, limits: Limits | None = None, isolation: str = "auto") -> Result:
    """Run one program in the default pool of ``isolation`` (see :class:`SandboxPool`)."""
    return default_pool(isolation).run(program, limits)
