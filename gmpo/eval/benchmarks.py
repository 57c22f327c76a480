"""The math benchmarks ``gmpo eval`` knows: where each one lives and where its gold answer is.

Every benchmark has a local source (file names looked up in ``--data-dir``, in the formats of
``../shared/data``: jsonl, Hugging Face ``save_to_disk`` arrow shards, parquet) and, where one exists, a
Hugging Face hub dataset as the default source. A source names its question field, how to read the gold
answer (a string; a float, compared numerically; a list of acceptable strings; the last ``\\boxed{}`` of
a solution; the text after ``#### ``) and its reference-solution field, used by ``--check-grader``.

Names: ``math500``, ``aime24``, ``amc`` (AMC 2023, 40 problems), ``minerva``, ``olympiadbench``,
``gsm8k``, and the exact evaluation suite of the GMPO / Dr. GRPO papers, ``drgrpo_aime``,
``drgrpo_amc`` (AMC 2022+2023, 83 problems), ``drgrpo_math``, ``drgrpo_minerva``,
``drgrpo_olympiad_bench``. Groups: ``default`` (the first six) and ``paper`` (the five drgrpo sets).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from gmpo.grading import extract_boxed


@dataclass(frozen=True)
class Source:
    """One place a benchmark's rows come from, with its field names.

    ``gold`` is ``"<kind>:<field>"`` with kind ``text`` (a string), ``number`` (a float), ``list`` (list
    of acceptable strings), ``boxed`` (the last ``\\boxed{}`` of that field) or ``gsm8k`` (the text after
    ``#### `` in that field).
    """

    location: str  # a file name inside --data-dir, or a hub dataset id
    question: str  # field holding the problem text
    gold: str  # "<kind>:<field>" (see above)
    solution: str = ""  # field holding a reference solution ('' = none)
    config: str | None = None  # hub dataset config
    split: str = "test"  # hub split


@dataclass(frozen=True)
class Benchmark:
    """A named benchmark: its local file source and its hub source (None when not on the hub)."""

    name: str
    local: Source
    hub: Source | None
    description: str
    # grade a finished completion with no explicit final answer by its last number (lm-eval's GSM8K
    # "flexible-extract"); off elsewhere: small-integer LaTeX golds make the last number of an
    # unanswered completion match by chance (SmolLM2-135M on MATH500's first 100: 6 such "correct"
    # answers, e.g. "$a + b = 2 + 2 = 4$" for gold 4, and none with an explicit final answer)
    last_number: bool = False


def _b(name, local, hub, description, last_number=False):
    return Benchmark(name, local, hub, description, last_number)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    _b("math500",
       Source("math500.jsonl", "problem", "text:answer", "solution"),
       Source("HuggingFaceH4/MATH-500", "problem", "text:answer", "solution"),
       "MATH500: 500 MATH test problems (LaTeX answers)"),
    _b("aime24",
       Source("aime24.jsonl", "problem", "text:answer", "solution"),
       Source("HuggingFaceH4/aime_2024", "problem", "text:answer", "solution", split="train"),
       "AIME 2024: 30 problems (integer answers)"),
    _b("amc",
       Source("amc23.jsonl", "problem", "number:answer"),
       Source("math-ai/amc23", "question", "number:answer"),
       "AMC 2023: 40 problems (float golds, compared numerically)"),
    _b("minerva",
       Source("minerva_math.jsonl", "problem", "boxed:solution", "solution"),
       Source("math-ai/minervamath", "question", "text:answer"),
       "Minerva Math: 272 MIT OCW science problems (gold: last \\boxed{} of the solution)"),
    _b("olympiadbench",
       Source("olympiadbench.jsonl", "question", "list:final_answer", "solution"),
       Source("Hothan/OlympiadBench", "question", "list:final_answer", "solution",
              config="OE_TO_maths_en_COMP", split="train"),
       "OlympiadBench OE_TO_maths_en_COMP: 675 problems (list of acceptable answers)"),
    _b("gsm8k",
       Source("gsm8k_test.jsonl", "question", "gsm8k:answer", "answer"),
       Source("openai/gsm8k", "question", "gsm8k:answer", "answer", config="main"),
       "GSM8K test: 1319 grade-school word problems (gold after '#### ')", last_number=True),
    # the GMPO / Dr. GRPO papers' exact suite (sail-sg/understand-r1-zero datasets/evaluation_suite)
    _b("drgrpo_aime", Source("drgrpo_eval_aime.arrow", "problem", "text:answer"), None,
       "AIME 2024 as in the Dr. GRPO / GMPO evaluation suite (30)"),
    _b("drgrpo_amc", Source("drgrpo_eval_amc.arrow", "problem", "number:answer"), None,
       "AMC 2022+2023 as in the Dr. GRPO / GMPO evaluation suite (83; the paper's 'AMC')"),
    _b("drgrpo_math", Source("drgrpo_eval_math.arrow", "problem", "text:answer"), None,
       "MATH500 as in the Dr. GRPO / GMPO evaluation suite (500)"),
    _b("drgrpo_minerva", Source("drgrpo_eval_minerva.arrow", "problem", "list:answer"), None,
       "Minerva Math as in the Dr. GRPO / GMPO evaluation suite (272)"),
    _b("drgrpo_olympiad_bench", Source("drgrpo_eval_olympiad_bench.arrow", "problem", "list:answer"), None,
       "OlympiadBench as in the Dr. GRPO / GMPO evaluation suite (675)"),
]}

GROUPS = {
    "default": ["math500", "aime24", "amc", "minerva", "olympiadbench", "gsm8k"],
    "paper": ["drgrpo_aime", "drgrpo_amc", "drgrpo_math", "drgrpo_minerva", "drgrpo_olympiad_bench"],
}
GROUPS["all"] = GROUPS["default"] + GROUPS["paper"]


def resolve_names(spec: str | list[str]) -> list[str]:
    """Benchmark names from ``"math500,gsm8k"`` or a list; groups expand; unknown names raise ValueError."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in (s.strip() for s in items):
        if not item:
            continue
        for name in GROUPS.get(item, [item]):
            if name not in BENCHMARKS:
                raise ValueError(f"unknown benchmark {name!r}; choose from: {', '.join(BENCHMARKS)} "
                                 f"or the groups {', '.join(GROUPS)}")
            if name not in names:
                names.append(name)
    if not names:
        raise ValueError("no benchmark named")
    return names


@dataclass(frozen=True)
class Problem:
    """One benchmark problem: its position in the source, question, gold answer, reference solution."""

    index: int
    question: str
    gold: str | float | list
    solution: str | None


def _strip(x):
    return x.strip() if isinstance(x, str) else x


def gold_of(row: dict, spec: str):
    """The gold answer of ``row`` per a ``"<kind>:<field>"`` spec (see :class:`Source`)."""
    kind, _, field = spec.partition(":")
    if field not in row:
        raise KeyError(f"gold field {field!r} missing; the row has {sorted(row)}")
    value = row[field]
    if kind == "text":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return str(value).strip()
    if kind == "number":
        try:
            return float(value)
        except (TypeError, ValueError):
            return str(value).strip()  # a hub copy storing "27" or "\frac{1}{2}": graded as text
    if kind == "list":
        values = value if isinstance(value, (list, tuple)) else [value]
        return [str(v).strip() for v in values if str(v).strip()]
    if kind == "boxed":
        boxed = extract_boxed(str(value))
        if not boxed:
            raise ValueError(f"no \\boxed{{}} answer in field {field!r}: {str(value)[-120:]!r}")
        return boxed
    if kind == "gsm8k":
        text = str(value)
        if "####" not in text:
            raise ValueError(f"no '#### answer' line in field {field!r}: {text[-120:]!r}")
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    raise ValueError(f"unknown gold kind {kind!r} in {spec!r}")


def _solution_of(row: dict, field: str) -> str | None:
    if not field or row.get(field) is None:
        return None
    value = row[field]
    if isinstance(value, (list, tuple)):
        return str(value[0]) if value else None
    return str(value)


def _read_rows(path: Path) -> list[dict]:
    """Rows of a local jsonl / json / arrow (save_to_disk shard) / parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if suffix == ".json":
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, list) else data.get("data", data.get("rows"))
    if suffix == ".arrow":
        from datasets import Dataset

        return Dataset.from_file(str(path)).to_list()
    if suffix == ".parquet":
        from datasets import Dataset

        return Dataset.from_parquet(str(path)).to_list()
    raise ValueError(f"unsupported benchmark file format {suffix!r}: {path}")


def _hub_rows(source: Source) -> list[dict]:
    from datasets import load_dataset

    try:
        ds = load_dataset(source.location, source.config, split=source.split)
    except Exception as e:  # noqa: BLE001  (no network, no such dataset: say how to fix it)
        raise RuntimeError(
            f"could not load hub dataset {source.location!r} (config={source.config}, split={source.split}): "
            f"{type(e).__name__}: {e}. Offline? Pass --data-dir with local benchmark files.") from e
    return ds.to_list()


@functools.lru_cache(maxsize=32)
def _load_cached(name: str, data_dir: str) -> tuple[Problem, ...]:
    bench = BENCHMARKS[name]
    if data_dir:
        source = bench.local
        path = Path(data_dir).expanduser() / source.location
        if not path.is_file():
            raise FileNotFoundError(f"benchmark {name!r}: {path} not found (expected file {source.location!r} "
                                    f"in --data-dir {data_dir})")
        rows = _read_rows(path)
    else:
        if bench.hub is None:
            raise ValueError(f"benchmark {name!r} has no hub dataset: download {bench.local.location} from "
                             "github.com/sail-sg/understand-r1-zero (datasets/evaluation_suite) and pass --data-dir")
        source = bench.hub
        rows = _hub_rows(source)
    problems = []
    for i, row in enumerate(rows):
        if source.question not in row:
            raise KeyError(f"benchmark {name!r}: question field {source.question!r} missing; row has {sorted(row)}")
        problems.append(Problem(index=i, question=str(row[source.question]), gold=gold_of(row, source.gold),
                                solution=_solution_of(row, source.solution)))
    return tuple(problems)


def load_benchmark(name: str, data_dir: str | Path = "", limit: int = 0) -> list[Problem]:
    """The problems of benchmark ``name`` (first ``limit`` if > 0) from ``data_dir``, or the hub if ''."""
    if name not in BENCHMARKS:
        resolve_names(name)  # raises the helpful error
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    problems = _load_cached(name, str(data_dir) if data_dir else "")
    return list(problems[:limit] if limit else problems)
