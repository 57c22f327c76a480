"""Answer extraction and math-equivalence grading with a hard, batch-aware timeout.

``grade(completion, gold)`` takes the *final answer* of a completion (:func:`final_answer`: the last
``\\boxed{}``; else the last "the answer is X" / "Final Answer: X" / "#### X"; else the last number) and
checks it against the gold answer with math-verify. Only the final-answer position counts: a right
answer written earlier and then replaced, an empty ``\\boxed{}``, or a list of candidates ("3, 4, 5"
when the gold is 4) is wrong. :func:`grade_batch` / :func:`verify_batch` do a whole batch at once.

Gold answers come in the shapes the benchmarks use: a LaTeX string (MATH500, AIME), a float (AMC:
``27.0`` equals "27"), or a list of acceptable strings (OlympiadBench, Minerva in the Dr. GRPO files;
any one may match).

Cost and safety. Plain numbers and string-identical answers are decided in-process in microseconds.
Everything else goes to math-verify in killable processes (:mod:`gmpo.grading.server`): a comparison that
runs past ``timeout`` seconds (default 1 s, as the official GMPO code) is wrong, and the slow
comparisons of a batch share one timeout, so 64 pathological answers (``\\boxed{9^{9^{9}}}``) cost about
two timeouts of wall time, not 64, and never delay the normal answers of the batch. Answers that write
an astronomically large integer (:func:`too_large`: power towers, huge factorials, the usual way to hang
sympy) are graded wrong in-process without math-verify. Works from any thread.

Layout: :mod:`gmpo.grading.extract` (strings -> final answer), this module (fast decisions, the public
API), :mod:`gmpo.grading.pool` (the caller's side of the math-verify processes), :mod:`gmpo.grading.server`
(the server process and its per-comparison children).
"""
from __future__ import annotations

import atexit
import math
import re
import threading
from dataclasses import dataclass

from gmpo.grading.extract import (
    extract_answer,
    extract_boxed,
    final_answer,
    match_braces,
    strip_question_echo,
)
from gmpo.grading.pool import MathVerifyPool

DEFAULT_TIMEOUT = 1.0  # seconds per math-verify comparison (the official GMPO code uses 1 s)

# --------------------------------------------------------------------------------------------------
# fast in-process decisions

_PLAIN_NUM = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def _norm(s: str) -> str:
    """Light normalisation for a cheap exact-match check (never used to declare a mismatch)."""
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\[,;:! ]|\\left|\\right|\s+", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")
    s = re.sub(r"_\{([A-Za-z0-9])\}", r"_\1", s)  # E_{1} -> E_1
    return s


_BOLD_RE = re.compile(r"\\(?:textbf|mathbf|bm|boldsymbol)\{")


def _unwrap(s: str) -> str:
    """Drop formatting that wraps a whole answer: ``\textbf{(073)}`` -> ``073``, ``**5**`` -> ``5``."""
    s = s.strip().strip("$").strip()
    for _ in range(4):
        m = _BOLD_RE.match(s)
        if m and match_braces(s, m.end() - 1) == len(s):
            s = s[m.end():-1].strip()
            continue
        if s.startswith("**") and s.endswith("**") and len(s) > 4:
            s = s[2:-2].strip()
            continue
        if re.fullmatch(r"\([-+]?\d+(?:\.\d+)?\)", s):  # an answer-choice style "(073)" of a plain number
            s = s[1:-1]
            continue
        break
    return s


_E_NOTATION = re.compile(r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))[eE]([-+]?\d+)")
_TIMES_TEN = re.compile(r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))(?:\\times|\\cdot|\*|x)10\^\{?([-+]?\d+)\}?")


MAX_DIGITS = 1e6  # an integer this long costs sympy seconds to build; no benchmark answer comes close
_POWER_RE = re.compile(r"(?<![\d.])(\d+)\s*\^\s*(?=[{\d])")
_FACTORIAL_RE = re.compile(r"(?<![\d.])(\d+)\s*!")


def _tower_log10(s: str) -> float | None:
    """log10 of an integer power tower in LaTeX ("9^{9^{9}}", "10^{100}", "7"; 0 gives -inf); None if
    ``s`` is not one."""
    s = s.strip()
    if s.startswith("{") and match_braces(s, 0) == len(s):
        return _tower_log10(s[1:-1])
    if s.isdigit():
        return len(s) if len(s) > 300 else (math.log10(int(s)) if int(s) else -math.inf)
    m = re.fullmatch(r"(\d+)\s*\^\s*(\d|\{.*\})", s, re.S)
    if not m or (m.group(2).startswith("{") and match_braces(m.group(2), 0) != len(m.group(2))):
        return None
    return _power_log10(m.group(1), _tower_log10(m.group(2)))


def _power_log10(base: str, exp_log10: float | None) -> float | None:
    """log10 of ``base ** 10**exp_log10`` (``base`` a digit string); inf when astronomically large."""
    b = _tower_log10(base)
    if exp_log10 is None or b is None:
        return None
    if b <= 0 or exp_log10 == -math.inf:  # 0^n, 1^n, n^0
        return 0.0
    return math.inf if exp_log10 > 300 else 10.0 ** exp_log10 * b


def too_large(pred: str) -> bool:
    """Whether ``pred`` writes an integer of more than :data:`MAX_DIGITS` digits as a power (``9^{9^{9}}``,
    ``10^{10^{10}}``) or a factorial (``1000000!``): sympy would spend minutes building it. Such an
    answer is graded wrong in-process, so a batch full of them costs nothing and starves no one."""
    for m in _POWER_RE.finditer(pred):
        rest = pred[m.end():]
        exp_text = rest[:match_braces(rest, 0) or 0] if rest.startswith("{") else rest[0]
        digits = _power_log10(m.group(1), _tower_log10(exp_text))
        if digits is not None and digits > MAX_DIGITS:
            return True
    for m in _FACTORIAL_RE.finditer(pred):
        n = m.group(1)
        if len(n) > 7 or math.lgamma(int(n) + 1) / math.log(10) > MAX_DIGITS:
            return True
    return False


def _as_number(s: str) -> float | None:
    """``s`` as a float if it is a plain number: "1,234", "-0.5", "8.7e8", "8.7 \\times 10^{8}"; else None."""
    s = _norm(s)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    if _PLAIN_NUM.fullmatch(s):
        return float(s)
    m = _E_NOTATION.fullmatch(s) or _TIMES_TEN.fullmatch(s)
    if m:
        try:
            return float(m.group(1)) * 10.0 ** int(m.group(2))
        except OverflowError:
            return None
    return None


def _latex_fixups(s: str) -> str:
    """Rewrite what math-verify's LaTeX parser misreads: "8.7e8" -> "8.7 \\times 10^{8}" (a bare "e"
    is Euler's number) and "-3./2" -> "-3/2" (a decimal point with no digits after it)."""
    m = _E_NOTATION.fullmatch(_norm(s))
    if m:
        return f"{m.group(1)} \\times 10^{{{int(m.group(2))}}}"
    return re.sub(r"(\d)\.(?!\d)", r"\1", s)


def _gold_text(gold: float | int) -> str:
    """A float gold as the string math-verify should see: 27.0 -> "27", 0.5 -> "0.5"."""
    g = float(gold)
    return str(int(g)) if g.is_integer() else repr(g)


def _numbers_equal(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)



# --------------------------------------------------------------------------------------------------
# the math-verify processes

_POOL = MathVerifyPool()
atexit.register(_POOL.close)
_LOCK = threading.Lock()
_TOO_LARGE = [0]


def grader_stats() -> dict[str, int]:
    """Counts since start-up: math-verify comparisons that timed out or errored, and answers too large
    to compare (:func:`too_large`); each graded as wrong."""
    return {"timeouts": _POOL.n_timeouts, "errors": _POOL.n_errors, "too_large": _TOO_LARGE[0]}


def shutdown() -> None:
    """Stop the grading processes (they restart on the next call; also done at exit)."""
    _POOL.close()


# --------------------------------------------------------------------------------------------------
# public grading API

def check_timeout(timeout) -> float:
    """``timeout`` as a positive float of seconds; a clear ValueError otherwise."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0 \
            or not math.isfinite(timeout):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _decide(pred: str | None, gold) -> bool | list[tuple[str, str]]:
    """The verdict decided in-process, or the math-verify comparisons still needed (any True: correct)."""
    if pred is None or not str(pred).strip():
        return False
    pred = _unwrap(str(pred))
    if not pred:
        return False
    if isinstance(gold, (list, tuple)):  # any of the acceptable answers
        jobs: list[tuple[str, str]] = []
        for g in gold:
            d = _decide(pred, g)
            if d is True:
                return True
            if d is not False:
                jobs += d
        return jobs or False
    if isinstance(gold, bool) or gold is None:
        raise TypeError(f"gold answer must be a string, a number or a list of them, got {gold!r}")
    if isinstance(gold, (int, float)):
        if not math.isfinite(float(gold)):
            raise ValueError(f"gold answer is not finite: {gold!r}")
        p = _as_number(pred)
        if p is not None:
            return _numbers_equal(p, float(gold))
        gold = _gold_text(gold)
    gold = str(gold).strip()
    if not gold:
        raise ValueError("gold answer is empty")
    if _norm(pred) == _norm(gold):
        return True
    p, g = _as_number(pred), _as_number(gold)
    if p is not None and g is not None:
        return _numbers_equal(p, g)
    if too_large(pred):
        with _LOCK:
            _TOO_LARGE[0] += 1
        return False
    return [(_latex_fixups(pred), _latex_fixups(gold))]


def verify_batch(preds: list, golds: list, timeout: float = DEFAULT_TIMEOUT) -> list[bool]:
    """:func:`verify` for each ``(preds[i], golds[i])``, the math-verify part as one batch.

    Identical comparisons run once; slow ones share one ``timeout`` (see :mod:`gmpo.grading.server`), so
    the wall time is about that of the normal comparisons plus one or two timeouts.
    """
    timeout = check_timeout(timeout)
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold answers")
    decided = [_decide(p, g) for p, g in zip(preds, golds)]
    unique = list(dict.fromkeys(j for d in decided if isinstance(d, list) for j in d))
    verdict = dict(zip(unique, _POOL.run(unique, timeout)))
    return [d if isinstance(d, bool) else any(verdict[j] for j in d) for d in decided]


def verify(pred: str | None, gold: str | float | int | list, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether ``pred`` is mathematically equivalent to ``gold``.

    ``gold`` may be a string, a number (compared numerically, so 27.0 accepts "27"), or a list of
    acceptable answers (any one matching suffices). ``None`` or an empty prediction is wrong. A
    comparison that takes longer than ``timeout`` seconds counts as wrong and never hangs the caller.
    """
    return verify_batch([pred], [gold], timeout)[0]


@dataclass(frozen=True)
class GradeResult:
    """A graded completion: whether its final answer matches the gold, and that extracted answer."""

    correct: bool
    pred: str | None


def grade_batch(completions: list[str], golds: list, timeout: float = DEFAULT_TIMEOUT, *,
                questions: list[str | None] | None = None, truncated: list[bool] | None = None,
                last_number: bool = True) -> list[GradeResult]:
    """:func:`grade` for each completion, math-verify run as one batch (:func:`verify_batch`)."""
    n = len(completions)
    questions = [None] * n if questions is None else list(questions)
    truncated = [False] * n if truncated is None else list(truncated)
    if not len(golds) == len(questions) == len(truncated) == n:
        raise ValueError(f"{n} completions, {len(golds)} golds, {len(questions)} questions, "
                         f"{len(truncated)} truncated flags: give one of each per completion")
    preds = [final_answer(c, q, last_number=last_number and not t)
             for c, q, t in zip(completions, questions, truncated)]
    return [GradeResult(ok, p) for ok, p in zip(verify_batch(preds, golds, timeout), preds)]


def grade(completion: str, gold, timeout: float = DEFAULT_TIMEOUT, *, question: str | None = None,
          truncated: bool = False, last_number: bool = True) -> GradeResult:
    """Extract the final answer of ``completion`` (:func:`final_answer`) and :func:`verify` it.

    Pass ``question`` where it is known: a completion with no explicit answer that restates the problem
    ("... if the flock is 20 chickens?") is then not graded by the question's last number.
    ``truncated=True`` (the completion hit its token budget) grades explicit final answers only (box,
    answer tag, answer phrase): the last number of an unfinished computation is not an answer.
    ``last_number=False`` does so for every completion (strict: an explicit final answer is required).
    """
    return grade_batch([completion], [gold], timeout, questions=[question], truncated=[truncated],
                       last_number=last_number)[0]


__all__ = ["DEFAULT_TIMEOUT", "MAX_DIGITS", "GradeResult", "check_timeout", "extract_answer", "extract_boxed",
           "final_answer", "grade", "grade_batch", "grader_stats", "shutdown", "strip_question_echo", "too_large",
           "verify", "verify_batch"]
