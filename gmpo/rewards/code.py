"""Code-execution rewards: run the completion's program against the task's tests in the sandbox.

``code_tests(prompts, completions, tests=..., setup_code=..., entry_point=...)``: the program is taken
from the completion's fenced code blocks (the last one by default; the last one defining the task's
function when ``entry_point`` is known; the whole completion when it has no fence), then a harness runs
it in :mod:`gmpo.sandbox` followed by each test (an ``assert`` line, or a HumanEval ``check`` function)
and reports which passed. Reward: 1.0 only when every test passes (``mode="all"``, the default) or the
fraction passed (``mode="fraction"``); no code, compile errors, timeouts, memory and crashes score 0.

Columns (TRL style, any of): ``tests`` or MBPP's ``test_list`` (list of assert lines); ``setup_code`` or
MBPP's ``test_setup_code`` / sanitized MBPP's ``test_imports``; HumanEval's ``test`` + ``entry_point``
(run as ``check(entry_point)``); ``code_prefix`` (text put before the completion, e.g. a HumanEval prompt
that the completion continues).

Step metrics: after each call, ``code_tests.last_metrics`` holds counts per outcome
(``status/passed``, ``status/wrong_answer``, ``status/compile_error``, ``status/runtime_error``,
``status/no_code``, ``status/no_result``, ``status/timeout``, ``status/memory``, ``status/crashed``,
``status/sandbox_error``), ``tests_passed_frac`` and ``exec_s`` (wall seconds of the batch), and
``code_tests.last_outcomes`` the per-sample :class:`CodeOutcome` list.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from gmpo.rewards.builtin import as_text
from gmpo.rewards.runner import register_reward

OUTCOMES = ("passed", "wrong_answer", "compile_error", "runtime_error", "no_code", "no_result", "timeout",
            "memory", "crashed", "sandbox_error")
_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PY_LANGS = ("", "python", "py", "python3", "py3")
_RESULT = ".result"

# The harness (main.py). The solution and the tests come in files; a per-run key arrives on stdin and
# signs the result, so a program that merely exits early (sys.exit, os._exit) or writes its own result
# file cannot claim a pass. It runs in the same interpreter as the solution, so a program that searches
# the interpreter's memory for the key could forge one: the README's 'Code rewards and the sandbox' section.
HARNESS = r'''
import hashlib as _h, hmac as _m, json as _j, os as _o, sys as _s

def _gmpo_emitter():
    key = _s.stdin.readline().strip().encode()
    _o.close(0)
    def emit(result):
        body = _j.dumps(result)
        sig = _m.new(key, body.encode(), _h.sha256).hexdigest()
        with open(".result", "w") as f:
            f.write(body + "\n" + sig)
        _s.stdout.flush(); _s.stderr.flush()
        _o._exit(0)
    return emit

def _gmpo_run(emit):
    spec = _j.load(open("tests.json"))
    src = open("solution.py", encoding="utf-8").read()
    res = {"stage": "compile", "passed": [], "error": ""}
    try:
        code = compile(src, "solution.py", "exec")
    except BaseException as e:
        res["error"] = (type(e).__name__ + ": " + str(e))[:500]
        emit(res)
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    for stage, text in (("import", None), ("setup", spec["setup"])):
        res["stage"] = stage
        try:
            exec(code if text is None else compile(text, "setup", "exec"), ns)
        except BaseException as e:
            res["error"] = (type(e).__name__ + ": " + str(e))[:500]
            emit(res)
    res["stage"] = "tests"
    for t in spec["tests"]:
        try:
            exec(compile(t, "test", "exec"), ns)
            res["passed"].append(True)
        except BaseException as e:
            res["passed"].append(False)
            if not res["error"]:
                res["error"] = (type(e).__name__ + ": " + str(e))[:500]
    emit(res)

_gmpo_run(_gmpo_emitter())
'''


@dataclass
class CodeOutcome:
    """One program's verdict: outcome (one of :data:`OUTCOMES`), tests passed / total, the error text."""

    outcome: str
    passed: int
    total: int
    error: str = ""
    wall_s: float = 0.0

    def score(self, mode: str = "all") -> float:
        """1.0 / 0.0 (``all``: every test passed) or passed / total (``fraction``)."""
        if self.outcome not in ("passed", "wrong_answer") or self.total == 0:
            return 0.0
        return float(self.passed == self.total) if mode == "all" else self.passed / self.total


def code_blocks(text: str) -> list[str]:
    """The Python fenced code blocks of ``text`` in order (unlabelled ones count; an unclosed last fence
    runs to the end of the text, as in a truncated completion)."""
    return [m.group(2) for m in _FENCE.finditer(text) if m.group(1).lower() in _PY_LANGS and m.group(2).strip()]


def extract_code(completion: str, entry_point: str | None = None, block: str = "last",
                 require_fence: bool = False) -> str | None:
    """The program in ``completion``: a fenced block (``block``: last | first | all, joined), preferring
    the last block that defines ``entry_point``; without any fence the whole completion (None when
    ``require_fence`` or when it is blank)."""
    if block not in ("last", "first", "all"):
        raise ValueError(f"code block must be last, first or all, got {block!r}")
    blocks = code_blocks(completion)
    if not blocks:
        return None if require_fence or not completion.strip() else completion
    if block == "all":
        return "\n\n".join(blocks)
    if entry_point:
        defining = [b for b in blocks if re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", b, re.M)]
        if defining:
            return defining[0] if block == "first" else defining[-1]
    return blocks[0] if block == "first" else blocks[-1]


def harness_program(code: str, tests: list[str], setup_code: str = ""):
    """(sandbox Program, key) that runs ``code`` then ``setup_code`` then each test; see :func:`read_outcome`."""
    from gmpo.sandbox import Program

    if not isinstance(tests, (list, tuple)) or not all(isinstance(t, str) for t in tests):
        raise ValueError(f"tests must be a list of strings (assert lines), got {str(tests)[:80]!r}")
    key = secrets.token_hex(16)
    spec = json.dumps({"setup": setup_code or "", "tests": list(tests)})
    prog = Program(HARNESS, stdin=key + "\n", files={"solution.py": code, "tests.json": spec}, collect=(_RESULT,))
    return prog, key


_SANDBOX_TO_OUTCOME = {"timeout": "timeout", "memory": "memory", "crashed": "crashed", "sandbox-error": "sandbox_error"}


def read_outcome(result, key: str, total: int) -> CodeOutcome:
    """The :class:`CodeOutcome` of a sandbox result of :func:`harness_program` (signature checked)."""
    if result.status in _SANDBOX_TO_OUTCOME:
        return CodeOutcome(_SANDBOX_TO_OUTCOME[result.status], 0, total, result.reason, result.wall_s)
    body, _, sig = result.files.get(_RESULT, "").rpartition("\n")
    good = hmac.new(key.encode(), body.encode(), hashlib.sha256).hexdigest()
    if not body or not hmac.compare_digest(sig.strip(), good):
        why = result.reason or "the program ended before the tests finished"
        err = result.stderr.strip().rsplit("\n", 1)[-1][:300] if result.stderr.strip() else ""
        return CodeOutcome("no_result", 0, total, f"{why}; {err}".strip("; "), result.wall_s)
    res = json.loads(body)
    stage, passed = res["stage"], sum(bool(p) for p in res["passed"])
    if stage == "compile":
        return CodeOutcome("compile_error", 0, total, res["error"], result.wall_s)
    if stage in ("import", "setup"):
        kind = "memory" if res["error"].startswith("MemoryError") else "runtime_error"
        return CodeOutcome(kind, 0, total, res["error"], result.wall_s)
    outcome = "passed" if passed == total and total > 0 else "wrong_answer"
    return CodeOutcome(outcome, passed, total, res["error"], result.wall_s)


def run_tests(codes: list[str | None], tests: list[list[str]], setups: list[str] | None = None, *,
              pool=None, limits=None) -> list[CodeOutcome]:
    """Run each program against its tests in parallel in the sandbox; ``None`` code is ``no_code``."""
    from gmpo.sandbox import default_pool

    pool = pool or default_pool()
    setups = setups or [""] * len(codes)
    jobs, outs = [], [None] * len(codes)
    for i, (code, ts, setup) in enumerate(zip(codes, tests, setups)):
        if code is None:
            outs[i] = CodeOutcome("no_code", 0, len(ts), "no code in the completion")
        else:
            jobs.append((i, *harness_program(code, ts, setup)))
    results = pool.map([p for _, p, _ in jobs], limits)
    for (i, _, key), r in zip(jobs, results):
        outs[i] = read_outcome(r, key, len(tests[i]))
    return outs


def _column(columns: dict, n: int, *names: str) -> list | None:
    for name in names:
        v = columns.get(name)
        if v is not None:
            if len(v) != n:
                raise ValueError(f"code_tests: column '{name}' has {len(v)} entries for {n} completions")
            return list(v)
    return None


def task_tests(columns: dict, n: int) -> tuple[list[list[str]], list[str], list[str | None]]:
    """(tests, setup code, entry point) per sample from the data columns (MBPP, sanitized MBPP or HumanEval)."""
    tests = _column(columns, n, "tests", "test_list")
    entry = _column(columns, n, "entry_point") or [None] * n
    if tests is None:
        check = _column(columns, n, "test")
        if check is None or any(e is None for e in entry):
            raise ValueError("code_tests needs a 'tests' (or MBPP 'test_list') column of assert lines, or HumanEval "
                             f"'test' + 'entry_point' columns; got columns {', '.join(sorted(columns)) or 'none'}")
        tests = [[f"{c}\ncheck({e})"] for c, e in zip(check, entry)]
    setup = _column(columns, n, "setup_code", "test_setup_code") or [""] * n
    imports = _column(columns, n, "test_imports")
    if imports is not None:
        setup = ["\n".join(i or []) + ("\n" + s if s else "") for i, s in zip(imports, setup)]
    return [list(t) for t in tests], [s or "" for s in setup], entry


def _options(*names: str):
    def mark(fn):
        fn.reward_options = names
        return fn

    return mark


@_options("mode", "block", "require_fence", "timeout", "memory_mb", "isolation", "workers")
def code_tests(prompts, completions, mode: str = "all", block: str = "last", require_fence: bool = False,
               timeout: float = 10.0, memory_mb: int = 1024, isolation: str = "auto", workers: int | None = None,
               **columns) -> list[float]:
    """Reward = the completion's program run against the task's tests in the sandbox (module docstring).

    ``mode``: all (1 only if every test passes) | fraction. ``block``: last | first | all fenced blocks.
    ``timeout`` / ``memory_mb``: per-program limits. ``isolation``: auto | bubblewrap | fallback.
    Outcome counts of the call are in ``code_tests.last_metrics``.
    """
    from gmpo.sandbox import Limits, default_pool

    if mode not in ("all", "fraction"):
        raise ValueError(f"code_tests: mode must be 'all' or 'fraction', got {mode!r}")
    n = len(completions)
    tests, setups, entries = task_tests(columns, n)
    prefix = _column(columns, n, "code_prefix") or [""] * n
    codes = []
    for c, e, pre in zip(completions, entries, prefix):
        code = extract_code(as_text(c), e, block, require_fence)
        codes.append(None if code is None else (pre or "") + code)
    t0 = time.perf_counter()
    outs = run_tests(codes, tests, setups, pool=default_pool(isolation, workers),
                     limits=Limits(timeout=timeout, memory_mb=memory_mb))
    metrics: dict[str, float] = {f"status/{k}": 0.0 for k in OUTCOMES}
    for o in outs:
        metrics[f"status/{o.outcome}"] += 1
    total = sum(o.total for o in outs)
    metrics["tests_passed_frac"] = sum(o.passed for o in outs) / total if total else 0.0
    metrics["exec_s"] = time.perf_counter() - t0
    code_tests.last_metrics, code_tests.last_outcomes = metrics, outs
    return [o.score(mode) for o in outs]


code_tests.last_metrics, code_tests.last_outcomes = {}, []


@_options("require_closed")
def code_format(prompts, completions, require_closed: bool = True, **columns) -> list[float]:
    """1.0 when the completion has a non-empty fenced Python code block (closed, unless
    ``require_closed=False``), else 0.0."""
    out = []
    for c in completions:
        text = as_text(c)
        if require_closed:
            ok = any(m.group(1).lower() in _PY_LANGS and m.group(2).strip() and m.group(0).rstrip().endswith("```")
                     for m in _FENCE.finditer(text))
        else:
            ok = bool(code_blocks(text))
        out.append(float(ok))
    return out


register_reward("code_tests", code_tests)
register_reward("code_format", code_format)

__all__ = ["HARNESS", "OUTCOMES", "CodeOutcome", "code_blocks", "code_format", "code_tests", "extract_code",
           "read_outcome", "run_tests", "task_tests", "harness_program"]
