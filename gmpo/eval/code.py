"""Code benchmarks and training data: MBPP (full and sanitized) and the HumanEval format.

Sources, by local file or by hub name (the hub needs network):

- ``mbpp``: ``mbpp.jsonl`` (974 tasks; ``text``, ``code``, ``test_list``, ``test_setup_code``) or the hub
  dataset ``google-research-datasets/mbpp`` (config ``full``). Splits by task id, as in the MBPP paper:
  ``prompt`` 1-10 (few-shot), ``test`` 11-510, ``validation`` 511-600, ``train`` 601-974; ``all``.
- ``mbpp_sanitized``: ``mbpp_sanitized.json`` (427 hand-verified tasks; ``prompt``, ``test_imports``) or
  the hub config ``sanitized``; the same task-id ranges.
- ``humaneval``: a local ``.jsonl`` / ``.jsonl.gz`` in the HumanEval format (``task_id``, ``prompt``,
  ``canonical_solution``, ``test`` defining ``check(candidate)``, ``entry_point``) or the hub dataset
  ``openai/openai_humaneval``; graded as ``prompt + completion`` then ``check(entry_point)``.

:func:`code_dataset` turns a source into a ``datasets.Dataset`` for training (columns ``prompt``,
``answer`` = the reference program, ``tests``, ``setup_code``, ``entry_point``, ``task_id``) that the
``code_tests`` reward reads.
"""
from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path

MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974), "all": (1, 10**9)}
MBPP_HUB = "google-research-datasets/mbpp"
HUMANEVAL_HUB = "openai/openai_humaneval"
CODE_BENCHMARKS = {
    "mbpp": "MBPP test split (task ids 11-510, 500 tasks; mbpp.jsonl)",
    "mbpp_sanitized": "MBPP sanitized, test split (task ids 11-510, 257 tasks; mbpp_sanitized.json)",
    "humaneval": "HumanEval format (164 tasks): a local file (--humaneval-file) or openai/openai_humaneval",
}
LOCAL_FILES = {"mbpp": "mbpp.jsonl", "mbpp_sanitized": "mbpp_sanitized.json"}
HUMANEVAL_FILES = ("HumanEval.jsonl", "HumanEval.jsonl.gz", "humaneval.jsonl", "human-eval-v2-20210705.jsonl")

MBPP_INSTRUCTION = ("You are an expert Python programmer, and here is your task: {text} "
                    "Your code should pass these tests:\n\n{tests}\n\n"
                    "Answer with the complete function in one ```python code block.")
HUMANEVAL_INSTRUCTION = ("Complete the following Python function. Answer with the complete function (with its "
                         "imports) in one ```python code block.\n\n```python\n{prompt}```")


@dataclass(frozen=True)
class CodeProblem:
    """One coding task: what the model sees, how it is graded, and the reference solution."""

    benchmark: str
    task_id: str
    text: str  # the task description
    prompt: str  # the instruction shown to the model
    tests: tuple[str, ...]  # assert lines, or one HumanEval check(...) program
    setup_code: str  # run after the solution, before the tests
    entry_point: str | None  # the function the tests call
    solution: str  # the reference program (its tests must pass: --check-grader)
    prefix: str = ""  # HumanEval: the prompt the completion continues (used when the code lacks the function)

    def program(self, code: str) -> str:
        """The program to run for ``code`` extracted from a completion (HumanEval: joined to its prompt)."""
        if not self.prefix:
            return code
        if self.entry_point and re.search(rf"^\s*def\s+{re.escape(self.entry_point)}\s*\(", code, re.M):
            imports = "\n".join(ln for ln in self.prefix.splitlines() if re.match(r"\s*(import|from)\s", ln))
            return imports + "\n" + code  # a complete function: keep the prompt's imports (typing, math)
        return self.prefix + code  # a continuation of the prompt's body


def _entry_point(code: str, tests: list[str]) -> str | None:
    """The function the tests call: the first ``def`` of the reference code named in a test."""
    joined = "\n".join(tests)
    for name in re.findall(r"^\s*def\s+([A-Za-z_]\w*)\s*\(", code, re.M):
        if re.search(rf"\b{re.escape(name)}\s*\(", joined):
            return name
    return None


def mbpp_prompt(text: str, tests: list[str]) -> str:
    """The MBPP instruction (Austin et al. 2021): the task, its tests, and the answer format."""
    return MBPP_INSTRUCTION.format(text=text.strip(), tests="\n".join(tests))


def _check_split(split: str) -> tuple[int, int]:
    if split not in MBPP_SPLITS:
        raise ValueError(f"unknown MBPP split {split!r}; choose {', '.join(MBPP_SPLITS)} (task-id ranges)")
    return MBPP_SPLITS[split]


def _read_local(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"code benchmark file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _hub_rows(name: str, config: str | None, splits: list[str]) -> list[dict]:
    from datasets import load_dataset

    rows: list[dict] = []
    try:
        for s in splits:
            rows += load_dataset(name, config, split=s).to_list()
    except Exception as e:  # noqa: BLE001  (offline or renamed: say how to fix it)
        raise RuntimeError(f"could not load hub dataset {name!r} ({config or 'default'}): {type(e).__name__}: {e}. "
                           "Offline? Pass a local file (--data-dir with mbpp.jsonl / mbpp_sanitized.json, "
                           "or --humaneval-file)") from e
    return rows


def mbpp_from_rows(rows: list[dict], split: str = "test", name: str = "mbpp") -> list[CodeProblem]:
    """MBPP problems (full or sanitized rows) in the task-id range of ``split``, sorted by task id."""
    lo, hi = _check_split(split)
    out = []
    for row in sorted(rows, key=lambda r: int(r["task_id"])):
        tid = int(row["task_id"])
        if not lo <= tid <= hi:
            continue
        missing = [k for k in ("code", "test_list") if k not in row] + ([] if ("text" in row or "prompt" in row) else ["text"])
        if missing:
            raise KeyError(f"MBPP task {tid}: missing field(s) {', '.join(missing)} (has {', '.join(sorted(row))})")
        text = row.get("text") or row.get("prompt")
        tests = list(row["test_list"])
        setup = "\n".join(row.get("test_imports") or [])
        if row.get("test_setup_code"):
            setup = (setup + "\n" if setup else "") + row["test_setup_code"]
        out.append(CodeProblem(name, str(tid), text, mbpp_prompt(text, tests), tuple(tests), setup,
                               _entry_point(row["code"], tests), row["code"]))
    return out


def load_mbpp(source: str = "", split: str = "test", sanitized: bool = False, data_dir: str | Path = "") -> list[CodeProblem]:
    """MBPP problems of ``split`` from a local file (``source``, or the standard name in ``data_dir``) or
    the hub (``source`` empty and no ``data_dir``)."""
    _check_split(split)
    name = "mbpp_sanitized" if sanitized else "mbpp"
    if not source and data_dir:
        source = str(Path(data_dir).expanduser() / LOCAL_FILES[name])
    if source and source != MBPP_HUB:
        rows = _read_local(Path(source).expanduser())
    else:
        config = "sanitized" if sanitized else "full"
        rows = _hub_rows(MBPP_HUB, config, ["train", "test", "validation", "prompt"])
    return mbpp_from_rows(rows, split, name)


def humaneval_from_rows(rows: list[dict]) -> list[CodeProblem]:
    """HumanEval-format problems (task_id, prompt, canonical_solution, test, entry_point)."""
    out = []
    for i, row in enumerate(rows):
        missing = [k for k in ("task_id", "prompt", "test", "entry_point") if k not in row]
        if missing:
            raise KeyError(f"HumanEval row {i + 1}: missing field(s) {', '.join(missing)} (has {', '.join(sorted(row))})")
        check = f"{row['test']}\ncheck({row['entry_point']})"
        out.append(CodeProblem("humaneval", str(row["task_id"]), row["prompt"],
                               HUMANEVAL_INSTRUCTION.format(prompt=row["prompt"]), (check,), "", row["entry_point"],
                               row["prompt"] + row.get("canonical_solution", ""), prefix=row["prompt"]))
    return out


def find_humaneval(data_dir: str | Path) -> Path | None:
    """A HumanEval file in ``data_dir`` under one of its usual names, else None."""
    for name in HUMANEVAL_FILES:
        p = Path(data_dir).expanduser() / name
        if p.is_file():
            return p
    return None


def load_humaneval(source: str = "") -> list[CodeProblem]:
    """HumanEval-format problems from a local .jsonl(.gz) file, or the hub dataset (``source`` empty or its name)."""
    if source and source != HUMANEVAL_HUB:
        return humaneval_from_rows(_read_local(Path(source).expanduser()))
    return humaneval_from_rows(_hub_rows(HUMANEVAL_HUB, None, ["test"]))


def load_code_benchmark(name: str, data_dir: str | Path = "", limit: int = 0, humaneval_file: str = "",
                        split: str = "test") -> list[CodeProblem]:
    """Problems of code benchmark ``name`` (first ``limit`` if > 0)."""
    if name not in CODE_BENCHMARKS:
        raise ValueError(f"unknown code benchmark {name!r}; choose {', '.join(CODE_BENCHMARKS)}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if name == "humaneval":
        src = humaneval_file or (str(find_humaneval(data_dir) or "") if data_dir else "")
        if data_dir and not src:
            raise FileNotFoundError(f"humaneval: no {' / '.join(HUMANEVAL_FILES)} in {data_dir}; pass --humaneval-file")
        probs = load_humaneval(src)
    else:
        probs = load_mbpp("", split, name == "mbpp_sanitized", data_dir)
    return probs[:limit] if limit else probs


def is_code_source(source: str) -> bool:
    """Whether a ``data.dataset`` value names a code source :func:`code_dataset` reads."""
    name = Path(source).name.lower()
    return source in (MBPP_HUB, HUMANEVAL_HUB, "mbpp", "mbpp_sanitized", "humaneval") or name.startswith(
        ("mbpp", "humaneval", "human-eval")) and name.endswith((".jsonl", ".json", ".jsonl.gz"))


def code_problems(source: str, split: str = "train") -> list[CodeProblem]:
    """The problems of a code source (see :func:`is_code_source`); ``split`` is an MBPP split name."""
    name = Path(source).name.lower()
    if source in (HUMANEVAL_HUB, "humaneval") or name.startswith(("humaneval", "human-eval")):
        return load_humaneval("" if source == "humaneval" else source)
    sanitized = "sanitized" in name or source == "mbpp_sanitized"
    local = "" if source in ("mbpp", "mbpp_sanitized", MBPP_HUB) else source
    return load_mbpp(local, split, sanitized)


def code_dataset(source: str, split: str = "train"):
    """A ``datasets.Dataset`` of a code source for training: prompt (the instruction), answer (the
    reference program), tests, setup_code, entry_point, task_id, code_prefix."""
    from datasets import Dataset

    problems = code_problems(source, split)
    if not problems:
        raise ValueError(f"{source}: no problems in split {split!r}")
    rows = [{"prompt": p.prompt, "answer": p.solution, "tests": list(p.tests), "setup_code": p.setup_code,
             "entry_point": p.entry_point or "", "task_id": p.task_id, "code_prefix": ""} for p in problems]
    return Dataset.from_list(rows)


__all__ = ["CODE_BENCHMARKS", "MBPP_SPLITS", "CodeProblem", "code_dataset", "code_problems",
           "find_humaneval", "humaneval_from_rows", "is_code_source", "load_code_benchmark", "load_humaneval",
           "load_mbpp", "mbpp_from_rows", "mbpp_prompt"]
