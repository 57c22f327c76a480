"""Built-in reward functions, TRL style: ``f(prompts, completions, **columns) -> list[float]``.

``prompts`` and ``completions`` are lists of strings (TRL's conversational form, a list of
``{"role", "content"}`` messages, is accepted too: the last message's content is used). Dataset
columns arrive as keyword lists of the same length; the gold answer is the ``answer`` column. Options
given in a reward spec's ``kwargs`` arrive as plain keyword arguments. Each function registers itself
(:func:`gmpo.rewards.registry.register_reward`) with its options and their config-time checks.

Every answer reward reads only the completion's *final* answer (:func:`gmpo.grading.final_answer`:
the last ``\\boxed{}``, else "the answer is X" / "#### X", all read from the raw completion; else the
last number of the completion without the spans it copied from the prompt), so restating the question
does not put its numbers in the answer position, and an answer that repeats part of it stays whole.
"""
from __future__ import annotations

import re
from typing import Any

from gmpo import grading
from gmpo.rewards.registry import register_reward

NUMERIC_TOL = 1e-6  # absolute tolerance for numeric_answer / gsm8k_answer / arithmetic

# A number: optional minus (not a binary minus right after a word, digit or bracket: "10-3" is 10, 3),
# digits with optional thousands commas ("1,000"; "1,2,3" is three numbers), optional decimals.
_NUM_RE = re.compile(r"(?:(?<![\w.)\]}])-)?(?<![\d.])(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")


def _check_timeout(kwargs: dict) -> None:
    """Config-time check of the ``timeout`` option (seconds, > 0)."""
    if "timeout" in kwargs:
        grading.check_timeout(kwargs["timeout"])


_TIMEOUT_HELP = "seconds per math-verify comparison; a slower one scores 0 (slow ones of a batch share it)"


def as_text(x: Any) -> str:
    """A prompt/completion as text (TRL conversational lists: the last message's content)."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict) and "content" in x[-1]:
        return str(x[-1]["content"])
    raise TypeError(f"expected a string or a list of chat messages, got {type(x).__name__}: {str(x)[:80]!r}")


def numbers(text: str) -> list[float]:
    """Every number in ``text`` in order ("1,000" -> 1000.0, "-4" -> -4.0, "10-3" -> 10.0, 3.0)."""
    text = text.replace("\u2212", "-")  # unicode minus
    return [float(m.replace(",", "")) for m in _NUM_RE.findall(text)]


def single_number(text: str | None) -> float | None:
    """The value of an answer string that holds exactly one number ("$1,000", "x = 5", "-4."), else None.

    Two or more numbers ("\\frac{1}{2}", "3, 4") are ambiguous and give None.
    """
    if text is None:
        return None
    found = numbers(text)
    return found[0] if len(found) == 1 else None


# A plain-number answer: an optional "x =" and currency sign, a signed number with optional thousands
# commas and decimals, then optional plain unit words ("dollars", "\\text{ clips}", "km/h") or a percent
# sign (GSM8K golds of "what percent" questions are the bare number). Nothing else: "\\sqrt{72}", "72!",
# "x^{72}" and "\\log 72" are expressions, not the number 72.
_PLAIN_RE = re.compile(
    r"(?:[A-Za-z]\s*=\s*)?(?:\\?\$\s*)?([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[-+]?\.\d+)"
    r"\s*(?:\\[,;! ]\s*)*(\\?%|percent|[A-Za-z][A-Za-z\s/.\-]*)?"
)
_TEXT_RE = re.compile(r"\\(?:text|textrm|mbox|mathrm)\{([^{}]*)\}")
_NOT_UNITS = {"and", "or", "not", "nor", "plus", "minus", "times", "over", "pi", "e", "i", "x"}


def plain_number(text: str | None) -> float | None:
    """The value of an answer that is a plain number ("72", "-3", "$1,200", "18 dollars", "25\\%", "x = 5").

    None for anything else: expressions holding one numeral ("\\sqrt{72}", "72!", "x^{72}", "\\log 72")
    are not that number, and several numbers ("3 or 4", "1,2,3") are not one answer.
    """
    if text is None:
        return None
    s = _TEXT_RE.sub(r" \1", text.replace("\u2212", "-")).strip().strip("$").strip()
    m = _PLAIN_RE.fullmatch(s.rstrip(".").strip())
    if not m:
        return None
    units = (m.group(2) or "").lower()
    if units and units[-1] != "%" and (len(units.split()[0]) < 2 or set(units.replace("/", " ").split()) & _NOT_UNITS):
        return None
    return float(m.group(1).replace(",", ""))


def _gold_numbers(gold: Any, name: str) -> list[float]:
    """Numeric gold(s): a number, a numeric string ("1,000", "#### 72"), or a list of those."""
    if isinstance(gold, (list, tuple)):
        return [g for item in gold for g in _gold_numbers(item, name)]
    if isinstance(gold, bool) or gold is None:
        raise ValueError(f"{name}: gold answer {gold!r} is not a number")
    if isinstance(gold, (int, float)):
        return [float(gold)]
    s = str(gold)
    if "####" in s:
        s = s.rsplit("####", 1)[1]
    value = single_number(s.strip())
    if value is None:
        raise ValueError(f"{name}: gold answer {str(gold)[-80:]!r} is not a single number")
    return [value]


def _final_answer(prompt: Any, completion: Any) -> tuple[str, str | None]:
    """(completion text, its final answer: :func:`gmpo.grading.final_answer` with the prompt as question)."""
    text = as_text(completion)
    question = as_text(prompt) if prompt is not None else None
    return text, grading.final_answer(text, question)


def _golds(answer: list | None, n: int, name: str) -> list:
    if answer is None:
        raise ValueError(f"{name} needs the gold answers in an 'answer' column (set data.answer_field)")
    if len(answer) != n:
        raise ValueError(f"{name}: {len(answer)} gold answers for {n} completions")
    return list(answer)


def _close(p: float, golds: list[float]) -> bool:
    return any(abs(p - g) <= NUMERIC_TOL for g in golds)


@register_reward("math_answer", options={"timeout": _TIMEOUT_HELP}, validate=_check_timeout)
def math_answer(prompts, completions, answer=None, timeout: float = grading.DEFAULT_TIMEOUT, **columns) -> list[float]:
    """1.0 when the completion's final answer is mathematically equivalent to the gold (math-verify).

    Gold may be LaTeX text, a number, or a list of acceptable answers. ``timeout`` (seconds, default 1)
    bounds each math-verify comparison: an expression that takes longer scores 0, and the slow
    comparisons of a batch share one timeout (:func:`gmpo.grading.grade_batch`), so they never stall a step.
    """
    golds = _golds(answer, len(completions), "math_answer")
    questions = [as_text(p) if p is not None else None for p in prompts]
    results = grading.grade_batch([as_text(c) for c in completions], golds, timeout, questions=questions)
    return [float(r.correct) for r in results]


@register_reward("gsm8k_answer", options={"timeout": _TIMEOUT_HELP}, validate=_check_timeout)
def gsm8k_answer(prompts, completions, answer=None, timeout: float = grading.DEFAULT_TIMEOUT,
                 **columns) -> list[float]:
    """GSM8K: 1.0 when the final answer equals the gold number (after ``####`` in the ``answer`` column).

    The prediction is the completion's final answer (boxed / "answer is" / "####" / last number); a
    plain number (:func:`plain_number`: commas, ``$``, unit words and ``%`` ignored) is compared
    numerically (tolerance 1e-6); any other form ("\\frac{144}{2}", "\\sqrt{72}") goes to math-verify
    against the gold number, so an expression is graded by its value, never by the numeral inside it.
    ``timeout`` bounds each math-verify comparison as in :func:`math_answer`.
    """
    grading.check_timeout(timeout)
    golds = _golds(answer, len(completions), "gsm8k_answer")
    out: list[float] = []
    symbolic: dict[int, tuple[str, list[float]]] = {}  # index -> (prediction, gold numbers) for math-verify
    for i, (p, c, g) in enumerate(zip(prompts, completions, golds)):
        gold = _gold_numbers(g, "gsm8k_answer")
        _, pred = _final_answer(p, c)
        value = plain_number(pred)
        out.append(float(value is not None and _close(value, gold)))
        if value is None and pred:
            symbolic[i] = (pred, gold)
    verdicts = grading.verify_batch([p for p, _ in symbolic.values()], [g for _, g in symbolic.values()], timeout)
    for i, ok in zip(symbolic, verdicts):
        out[i] = float(ok)
    return out


@register_reward("numeric_answer", options=())
def numeric_answer(prompts, completions, answer=None, **columns) -> list[float]:
    """1.0 when the final answer is a plain number (:func:`plain_number`) equal to the gold (|pred - gold| <= 1e-6).

    Commas are thousands separators ("1,000" = 1000); a gold with ``####`` uses the part after it; a
    list gold accepts any of its numbers. No symbolic equivalence: "\\frac{1}{2}" is not 0.5 here.
    """
    golds = _golds(answer, len(completions), "numeric_answer")
    out = []
    for p, c, g in zip(prompts, completions, golds):
        gold = _gold_numbers(g, "numeric_answer")
        value = plain_number(_final_answer(p, c)[1])
        out.append(float(value is not None and _close(value, gold)))
    return out


@register_reward("arithmetic", options=())
def arithmetic_answer(prompts, completions, answer=None, **columns) -> list[float]:
    """The arithmetic task's reward: :func:`numeric_answer`, and the completion's last number is the answer.

    "20", "13 + 7 = 20" and "The answer is 20." score 1; "\\boxed{20}, or maybe 21" and "20 5" score 0,
    so hedging with several candidates is never rewarded.
    """
    golds = _golds(answer, len(completions), "arithmetic")
    base = numeric_answer(prompts, completions, answer=golds)
    out = []
    for b, c, g in zip(base, completions, golds):
        found = numbers(as_text(c))
        out.append(float(b == 1.0 and bool(found) and _close(found[-1], _gold_numbers(g, "arithmetic"))))
    return out


FORMAT_STYLES = {
    "boxed": None,  # a non-empty, closed \boxed{...}
    "think_answer": r"</think>\s*<answer>\s*\S.*?</answer>\s*$",  # R1 template: reasoning, then the answer tags
}


def _format_regex(pattern: str | None, style: str | None) -> re.Pattern | None:
    """The compiled regex of a ``format`` spec (None: a closed, non-empty box); ValueError if invalid."""
    if pattern is not None and style is not None:
        raise ValueError("format: give either pattern or style, not both")
    style = style or ("boxed" if pattern is None else None)
    if style is not None and style not in FORMAT_STYLES:
        raise ValueError(f"format: unknown style {style!r}; choose {', '.join(FORMAT_STYLES)} or give a pattern")
    regex = pattern if pattern is not None else FORMAT_STYLES[style]
    if regex is None:
        return None
    try:
        return re.compile(regex, re.DOTALL)
    except (re.error, TypeError) as e:
        raise ValueError(f"format: invalid regex {regex!r}: {e}") from None


@register_reward("format", options={"pattern": "a regex the completion must match (re.DOTALL; anchor with ^/$)",
                                    "style": f"a named form: {' | '.join(FORMAT_STYLES)} (default boxed)"},
                 validate=lambda kw: _format_regex(kw.get("pattern"), kw.get("style")))
def format_reward(prompts, completions, pattern: str | None = None, style: str | None = None, **columns) -> list[float]:
    """1.0 when the completion has the expected final-answer form, else 0.0.

    Default (``style="boxed"``): a non-empty, closed ``\\boxed{...}``. ``style="think_answer"``: the R1
    form ``... </think> <answer> X </answer>`` at the end. ``pattern``: any regex, searched with
    ``re.DOTALL`` (anchor it with ``^``/``$`` to constrain the whole completion).
    """
    compiled = _format_regex(pattern, style)
    if compiled is None:
        return [float(bool(grading.extract_boxed(as_text(c)))) for c in completions]
    return [float(compiled.search(as_text(c)) is not None) for c in completions]


__all__ = ["FORMAT_STYLES", "arithmetic_answer", "format_reward", "gsm8k_answer", "math_answer", "numbers",
           "numeric_answer", "plain_number", "single_number"]
