"""Final-answer extraction: the last box, ``<answer>`` tag or "the answer is" phrase, else the last number.

Pure string work, no math: :func:`final_answer` is what :func:`gmpo.grading.grade` compares with the
gold. Explicit answers are read from the raw completion; only the last-number fallback reads the
completion without the spans it copied from the question (:func:`strip_question_echo`).
"""
from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(?:boxed|fbox|framebox)(?![A-Za-z])")


def match_braces(text: str, start: int) -> int | None:
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
        end = match_braces(text, i)
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


__all__ = ["extract_answer", "extract_boxed", "final_answer", "match_braces", "strip_question_echo"]
