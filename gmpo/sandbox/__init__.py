"""Running untrusted Python: isolation detected at start, resource limits, a parallel worker pool.

>>> from gmpo.sandbox import SandboxPool, Program, Limits
>>> with SandboxPool(workers=4) as pool:
...     results = pool.map([Program("print(input()[::-1])", stdin="abc")])
>>> results[0].status, results[0].stdout
('ok', 'cba\\n')

``detect()`` picks bubblewrap where it works, else the fallback (new session and process group, rlimits,
an unprivileged uid and network/mount namespaces when root); ``python -m gmpo.sandbox`` prints what was
detected. Statuses: ok / failed / timeout / memory / crashed / sandbox-error. What the sandbox does and
does not protect against: the README's 'Code rewards and the sandbox' section.
"""
from gmpo.sandbox.isolation import MODES, Isolation, SandboxUnavailable, detect, slot_uid
from gmpo.sandbox.limits import STATUSES, Limits, Program, Result
from gmpo.sandbox.pool import SandboxPool, default_pool, run_program
from gmpo.sandbox.runner import kill_uid, run_in

__all__ = ["MODES", "STATUSES", "Isolation", "Limits", "Program", "Result", "SandboxPool", "SandboxUnavailable",
           "default_pool", "detect", "kill_uid", "run_in", "run_program", "slot_uid"]
