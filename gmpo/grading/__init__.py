"""Answer extraction and math-equivalence grading with a hard timeout.

``grade(completion, gold)`` takes the *final answer* of a completion (the last ``\\boxed{}``; else the
last "the answer is X" / "Final Answer: X" / "#### X"; else the last number) and checks it against the
gold answer with math-verify. Only the final-answer position counts: a right answer written earlier and
then replaced, an empty ``\\boxed{}``, or a list of candidates ("3, 4, 5" when the gold is 4) is wrong.

Gold answers come in the shapes the benchmarks use: a LaTeX string (MATH500, AIME), a float (AMC:
``27.0`` equals "27"), or a list of acceptable strings (OlympiadBench, Minerva in the Dr. GRPO files;
any one may match).

Cost and safety. Plain numbers and string-identical answers are decided in-process in microseconds.
Everything else goes to a persistent grading subprocess (spawned on first use, one per concurrent
caller) that runs math-verify with math-verify's own signal-based timeouts disabled and a whole-call
deadline of its own; the caller waits at most ``timeout`` (+ a short grace) and kills and replaces a
worker that does not answer, so an expression that blocks inside C code (a huge integer power) cannot
hang training. This works from any thread, unlike math-verify's ``signal.alarm`` timeout.
"""
from __future__ import annotations

import atexit
import json
import logging
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

_GRACE_S = 1.0  # extra wait for a worker past its own deadline before it is killed
_STARTUP_S = 120.0  # a worker must import math-verify within this (generous: the CPU may be busy)

# --------------------------------------------------------------------------------------------------
# extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox|framebox)(?![A-Za-z])")


def _match_braces(text: str, start: int) -> int | None:
    """Index one past the ``}`` closing the ``{`` at ``text[start]``; escaped ``\\{``/``\\}`` ignored."""
    depth = 0
    i = start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2  # skip the escaped character (\{ \} \\)
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def extract_boxed(text: str | None) -> str | None:
    """Content of the LAST ``\\boxed{...}`` (also ``\\fbox``, ``\\framebox``, and ``\\boxed 5``).

    Nested braces are fine. Returns ``""`` for an empty box and ``None`` when there is no box or the
    last box is never closed (a truncated completion).
    """
    if not text:
        return None
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    i = matches[-1].end()
    if text.startswith("[", i):  # \framebox[width]{...}
        j = text.find("]", i)
        if j < 0:
            return None
        i = j + 1
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        end = _match_braces(text, i)
        if end is None:
            return None
        return text[i + 1:end - 1].strip()
    # "\boxed 5$" form: up to the closing $ or the end of the line
    rest = re.split(r"[$\n]", text[i:], maxsplit=1)[0]
    return rest.strip().rstrip(".")


_FINAL_RE = re.compile(r"(?i)(?:final\s+)?answer\s*(?:is|:)\s*(?:\\?:\s*)?|####\s*")
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S)
_NUMBER_RE = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


# "18 dollars", "$1,200 per month", "12 km/h": one number then plain unit words (the first of >= 2
# letters, so "2 x" stays whole; never pi/e/i or a connective, so "2 pi" and "3 or 4" stay whole and
# "3 or 4" grades as a set of candidates); no second number
_NUMBER_UNITS_RE = re.compile(r"\\?\$?\s*(-?\d+(?:,\d{3})*(?:\.\d+)?)\s*([A-Za-z]{2,}[A-Za-z\s/.\-]*)?")
_NOT_UNITS = {"and", "or", "not", "nor", "plus", "minus", "times", "over", "pi", "e", "i"}


def _clean_phrase(s: str) -> str:
    """The answer at the start of ``s`` (the rest of a line after "the answer is")."""
    s = s.strip().strip("*").strip()  # markdown bold: "**Answer:** 5"
    for lo, hi in _DELIMS:
        if s.startswith(lo):
            end = s.find(hi, len(lo))
            if end >= 0:
                return s[len(lo):end].strip()
            if lo != "$":  # a lone "$" is a currency sign: "$18 per day."
                return s[len(lo):].strip()
    s = re.split(r"\.(?:\s|$)", s, maxsplit=1)[0]  # end of sentence ("... is 3.5. So ..." -> 3.5)
    s = s.strip().strip("*").rstrip(".,;:!").strip()
    m = _NUMBER_UNITS_RE.fullmatch(s)
    if m and m.group(2) and not (set(m.group(2).lower().replace("/", " ").split()) & _NOT_UNITS):
        return m.group(1)
    return s


def _explicit_answer(text: str) -> str | None:
    """The answer the completion states: last box, else last ``<answer>`` tag, else last "answer is"."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    tags = _ANSWER_TAG_RE.findall(text)  # R1 template: <answer> ... </answer>
    if tags:
        inner = tags[-1].strip()
        phrase = list(_FINAL_RE.finditer(inner))
        return _clean_phrase(inner[phrase[-1].end():] if phrase else inner)
    finals = list(_FINAL_RE.finditer(text))
    if finals:
        line = text[finals[-1].end():].split("\n", 1)[0]
        ans = _clean_phrase(line)
        if ans:
            return ans
    return None


def _last_number(text: str) -> str | None:
    """The last number in ``text`` without thousands commas ("1,500" -> "1500"), or None."""
    nums = _NUMBER_RE.findall(text)
    return nums[-1].replace(",", "") if nums else None


def extract_answer(text: str | None, *, last_number: bool = True) -> str | None:
    """The final answer of a completion.

    Order: the last ``\\boxed{}`` (an empty box gives ``""``, which grades wrong); else the content of
    the last ``<answer>...</answer>`` (R1 template; an unclosed tag runs to the end); else the text after
    the last "answer is" / "Answer:" / "Final Answer:" / "####" up to the end of that sentence or
    ``$...$`` span; else (if ``last_number``) the last number in the text; else ``None``.
    """
    if not text:
        return None
    explicit = _explicit_answer(text)
    if explicit is not None or not last_number:
        return explicit
    return _last_number(text)


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
        if m and _match_braces(s, m.end() - 1) == len(s):
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
# the math-verify worker (a subprocess: killable, thread-agnostic)

class _Deadline(BaseException):
    """Raised inside the worker when a job runs past its deadline (BaseException: math-verify's
    ``except Exception`` handlers must not swallow it)."""


def _wrap(s: str) -> str:
    s = s.strip().strip("$").strip()
    return s if "\\boxed" in s else "\\boxed{" + s + "}"


def _mv_equal(pred: str, gold: str) -> bool:
    """math-verify equivalence of two answer strings (no timeout of its own: callers bound it)."""
    from math_verify import parse, verify as mv_verify

    g = parse(_wrap(gold), parsing_timeout=None)
    p = parse(_wrap(pred), parsing_timeout=None)
    if not g or not p:
        return False
    return bool(mv_verify(g, p, timeout_seconds=None))


def _worker_main() -> None:
    """Serve ``{"pred", "gold", "timeout"}`` JSON lines on stdin with ``{"ok": bool}`` lines."""
    import signal

    logging.disable(logging.WARNING)  # math-verify warns that its timeout is disabled: we own it

    def on_alarm(signum, frame):
        raise _Deadline()

    signal.signal(signal.SIGALRM, on_alarm)
    import math_verify  # noqa: F401  (pay the sympy import before announcing readiness)

    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        job = json.loads(line)
        status = "ok"
        ok = False
        try:
            signal.setitimer(signal.ITIMER_REAL, float(job["timeout"]))
            try:
                ok = _mv_equal(job["pred"], job["gold"])
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Deadline:
            status = "timeout"
        except Exception as e:  # noqa: BLE001  (a grader error is a wrong answer, reported)
            status = f"error: {type(e).__name__}: {e}"
        out.write(json.dumps({"ok": ok, "status": status}) + "\n")
        out.flush()


class _WorkerDied(RuntimeError):
    pass


class _Worker:
    """One grading subprocess."""

    def __init__(self) -> None:
        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from gmpo.grading import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            close_fds=True,
        )
        self._buf = b""
        if self._read(_STARTUP_S) is None:  # imports sympy: about a second on an idle machine
            self.close()
            raise _WorkerDied(f"grading worker did not start within {_STARTUP_S:.0f}s")

    def request(self, pred: str, gold: str, timeout: float, wait: float) -> dict | None:
        """Send one job; the reply, or None if none came within ``wait`` seconds."""
        msg = json.dumps({"pred": pred, "gold": gold, "timeout": timeout}) + "\n"
        try:
            self.proc.stdin.write(msg.encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise _WorkerDied(str(e)) from e
        return self._read(wait)

    def _read(self, wait: float) -> dict | None:
        """The next reply line, or None if none came within ``wait`` seconds."""
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
                raise _WorkerDied(f"grading worker exited with code {self.proc.poll()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class _Pool:
    """Idle workers, handed out one per concurrent call (thread-safe)."""

    def __init__(self, max_idle: int = 4) -> None:
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self.max_idle = max_idle
        self.n_timeouts = 0
        self.n_errors = 0

    def call(self, pred: str, gold: str, timeout: float) -> bool:
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        try:
            if worker is None:
                worker = _Worker()
            reply = worker.request(pred, gold, timeout, timeout + _GRACE_S)
        except _WorkerDied as e:
            if worker is not None:
                worker.close()
            self.n_errors += 1
            log.warning("grading worker died (%s); counted as wrong: pred=%r gold=%r", e, pred[:200], gold[:200])
            return False
        if reply is None:  # blocked past its own deadline: kill it, a fresh one serves the next call
            worker.close()
            self.n_timeouts += 1
            log.warning("grading timed out after %.1fs; counted as wrong: pred=%r gold=%r", timeout,
                        pred[:200], gold[:200])
            return False
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(worker)
                worker = None
        if worker is not None:
            worker.close()
        if reply["status"] == "timeout":
            self.n_timeouts += 1
            log.warning("grading timed out after %.1fs; counted as wrong: pred=%r gold=%r", timeout,
                        pred[:200], gold[:200])
        elif reply["status"] != "ok":
            self.n_errors += 1
            log.debug("grading error %s: pred=%r gold=%r", reply["status"], pred[:200], gold[:200])
        return bool(reply["ok"])

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for w in idle:
            w.close()


_POOL = _Pool()
atexit.register(_POOL.close)


def grader_stats() -> dict[str, int]:
    """Counts since start-up: math-verify calls that timed out or errored (each graded as wrong)."""
    return {"timeouts": _POOL.n_timeouts, "errors": _POOL.n_errors}


def shutdown() -> None:
    """Stop the grading subprocesses (they restart on the next call; also done at exit)."""
    _POOL.close()


# --------------------------------------------------------------------------------------------------
# public grading API

def verify(pred: str | None, gold: str | float | int | list, timeout: float = 5.0) -> bool:
    """Whether ``pred`` is mathematically equivalent to ``gold``.

    ``gold`` may be a string, a number (compared numerically, so 27.0 accepts "27"), or a list of
    acceptable answers (any one matching suffices). ``None`` or an empty prediction is wrong. A
    comparison that takes longer than ``timeout`` seconds counts as wrong and never hangs the caller.
    """
    if timeout is None or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if pred is None or not str(pred).strip():
        return False
    pred = _unwrap(str(pred))
    if not pred:
        return False
    if isinstance(gold, (list, tuple)):
        return any(verify(pred, g, timeout) for g in gold)
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
    return _POOL.call(_latex_fixups(pred), _latex_fixups(gold), float(timeout))


@dataclass(frozen=True)
class GradeResult:
    """A graded completion: whether its final answer matches the gold, and that extracted answer."""

    correct: bool
    pred: str | None


_ECHO_MIN_CHARS = 20  # shorter spans ("20 chickens") may legitimately repeat the question


def _ws(s: str) -> str:
    """Runs of spaces/tabs -> one space, line breaks kept (the "answer is" rule reads to the line end)."""
    return re.sub(r" ?\n ?", "\n", re.sub(r"[^\S\n]+", " ", s)).strip()


def strip_question_echo(completion: str, question: str) -> str:
    """``completion`` without the spans (>= 20 characters, whitespace-insensitive) copied from ``question``.

    Used only before the last-number fallback (:func:`final_answer`), never on an explicit answer:
    numbers copied from the question then cannot become the "last number" answer. Each removal is the
    longest remaining common span (difflib), so repeated or partial echoes all go.
    """
    from difflib import SequenceMatcher

    q, text = _ws(question), _ws(completion)
    if len(q) < _ECHO_MIN_CHARS:
        return completion
    removed = False
    for _ in range(64):  # bounded: each pass removes >= 20 characters
        m = SequenceMatcher(None, text, q, autojunk=False).find_longest_match(0, len(text), 0, len(q))
        if m.size < _ECHO_MIN_CHARS:
            break
        text = text[:m.a] + "\n" + text[m.a + m.size:]
        removed = True
    return text if removed else completion


def final_answer(completion: str | None, question: str | None = None, *, last_number: bool = True) -> str | None:
    """The final answer of ``completion`` as :func:`grade` reads it.

    An explicit answer (box, ``<answer>`` tag, "the answer is") is taken from the raw completion, so a
    right answer that repeats a piece of the question (a matrix, a tuple) stays whole. Only when there
    is none, and ``last_number`` is on, the last number is taken, from the completion without the spans
    it copied from ``question`` (:func:`strip_question_echo`): restating the problem is not an answer.
    """
    if not completion:
        return None
    explicit = _explicit_answer(completion)
    if explicit is not None or not last_number:
        return explicit
    return _last_number(strip_question_echo(completion, question) if question else completion)


def grade(completion: str, gold, timeout: float = 5.0, *, question: str | None = None,
          truncated: bool = False, last_number: bool = True) -> GradeResult:
    """Extract the final answer of ``completion`` (:func:`final_answer`) and :func:`verify` it.

    Pass ``question`` where it is known: a completion with no explicit answer that restates the problem
    ("... if the flock is 20 chickens?") is then not graded by the question's last number.
    ``truncated=True`` (the completion hit its token budget) grades explicit final answers only (box,
    answer tag, answer phrase): the last number of an unfinished computation is not an answer.
    ``last_number=False`` does so for every completion (strict: an explicit final answer is required).
    """
    pred = final_answer(completion, question, last_number=last_number and not truncated)
    return GradeResult(correct=verify(pred, gold, timeout), pred=pred)


__all__ = ["GradeResult", "extract_answer", "extract_boxed", "final_answer", "grade", "grader_stats", "shutdown",
           "strip_question_echo",
           "verify"]
