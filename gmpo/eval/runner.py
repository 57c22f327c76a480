"""Run a model over math benchmarks: render prompts, generate, grade, aggregate, save, resume.

``run_eval`` is the full evaluation (metrics, timing, per-problem records, resume); ``evaluate`` is
the small API the trainer calls and returns ``{benchmark: accuracy}`` for ``eval/<name>`` logging.
Per-problem records go to a jsonl file as each batch finishes; rerunning with the same file and the
same settings skips the problems already recorded, so an interrupted evaluation resumes.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gmpo.eval.benchmarks import Problem, load_benchmark, resolve_names
from gmpo.eval.metrics import average, primary_metric, summarize
from gmpo.grading import DEFAULT_TIMEOUT, grade, grade_batch, grader_stats

# stop strings per template: the R1 template closes its answer with </answer> (understand-r1-zero)
_TEMPLATE_STOPS = {"r1": ["</answer>"]}
FALLBACKS = ("auto", "last-number", "none")


def uses_last_number(benchmark: str, fallback: str) -> bool:
    """Whether completions with no explicit final answer are graded by their last number."""
    from gmpo.eval.benchmarks import BENCHMARKS

    return BENCHMARKS[benchmark].last_number if fallback == "auto" else fallback == "last-number"


@dataclass(frozen=True)
class EvalSettings:
    """Everything that changes a completion or its verdict; records are reused only when these match."""

    template: str = "chat"
    system_prompt: str = ""
    max_new_tokens: int = 512
    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    fallback: str = "auto"  # last-number fallback: auto (per benchmark) | last-number | none

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work together."""
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}, got {self.fallback!r}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(f"samples={self.samples} with temperature 0 gives {self.samples} identical greedy "
                             "completions; set a temperature > 0 (e.g. 0.6 or 1.0) to sample")


def read_records(path: Path, settings: dict, key) -> dict:
    """Per-problem records already saved in ``path`` (jsonl), keyed by ``key(record)``; a ValueError if one was
    written with other ``settings`` (its ``"settings"`` field); a line cut by an interruption is skipped (that
    problem is redone)."""
    done: dict = {}
    if not path.is_file():
        return done
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("settings") != settings:
                raise ValueError(
                    f"{path}:{lineno} was written with other settings {rec.get('settings')} (now {settings}); "
                    "delete it, pass --no-resume, or choose another output path to start afresh")
            done[key(rec)] = rec
    return done


def open_append(path: Path):
    """Open the records file for appending; a last line cut by an interruption is closed off first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cut = False
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, 2)
            cut = f.read(1) != b"\n"
    f = open(path, "a", encoding="utf-8")
    if cut:
        f.write("\n")
    return f


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="problem", dynamic_ncols=True, disable=not enabled, desc="eval")


def generate(engine, encoder, questions: list[str], params) -> tuple[list[str], object]:
    """(prompt texts, :class:`gmpo.rollout.Rollout`) for `questions` encoded by `encoder` (a
    :class:`gmpo.data.prompts.PromptEncoder`): the one generation path of every evaluation (benchmarks
    and the trainer's held-out accuracy), so both see exactly the token ids training sees."""
    texts, ids = encoder.encode_batch(questions)
    return texts, engine.generate(ids, params)


def _records(name: str, batch: list, texts: list[str], rollout, settings: EvalSettings, timeout: float,
             last_number: bool) -> list[dict]:
    """Grade a generated batch: one per-problem record (completions, extracted answers, verdicts) each."""
    samples = settings.samples
    lengths, truncated = rollout.lengths.tolist(), rollout.truncated.tolist()
    graded = grade_batch(list(rollout.texts), [p.gold for p in batch for _ in range(samples)], timeout,
                         questions=[p.question for p in batch for _ in range(samples)], truncated=truncated,
                         last_number=last_number)  # one math-verify batch: slow answers share one timeout
    out = []
    for i, (p, text) in enumerate(zip(batch, texts)):
        rows = range(i * samples, (i + 1) * samples)
        results = [graded[r] for r in rows]
        out.append({"benchmark": name, "index": p.index, "settings": asdict(settings), "prompt": text,
                    "gold": p.gold, "completions": [rollout.texts[r] for r in rows],
                    "preds": [g.pred for g in results], "correct": [g.correct for g in results],
                    "n_tokens": [lengths[r] for r in rows], "truncated": [truncated[r] for r in rows]})
    return out


def run_eval(model, tokenizer, benchmarks: str | list[str], *, data_dir: str | Path = "", limit: int = 0,
             max_new_tokens: int = 512, template: str = "chat", system_prompt: str = "", samples: int = 1,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 32,
             engine=None, bf16: bool = False, records_path: str | Path | None = None, timeout: float = DEFAULT_TIMEOUT,
             progress: bool = False, fallback: str = "auto") -> dict:
    """Evaluate ``model`` on ``benchmarks``; return the report dict written as ``results.json``.

    The report holds ``benchmarks`` ({name: {"n", "pass@1" | "mean@K", "pass@k"...}}), ``average``,
    ``settings``, ``timing`` (wall_s, generate_s, grade_s, generated_tokens, tokens_per_s: of the
    problems generated in this call) and ``grader`` (math-verify timeouts/errors). With
    ``records_path``, per-problem records (prompt, completions, extracted answers, gold, verdicts) are
    appended after each batch and problems already recorded there are skipped (resume).
    ``engine``: a :class:`gmpo.rollout.RolloutEngine`; by default gmpo's KV-cache engine.
    ``fallback``: how a completion with no explicit final answer (box, answer tag, "the answer is",
    "####") is graded: ``auto`` = by its last number on benchmarks that opt in (GSM8K), else wrong;
    ``last-number`` / ``none`` force either way. A truncated completion never uses the fallback.
    """
    from gmpo.data.prompts import PromptEncoder
    from gmpo.rollout import SamplingParams, make_engine

    settings = EvalSettings(template, system_prompt, max_new_tokens, samples, temperature, top_p, seed, fallback)
    settings.validate()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    names = resolve_names(benchmarks)
    problems = {name: load_benchmark(name, data_dir, limit) for name in names}
    path = Path(records_path) if records_path else None
    done = read_records(path, asdict(settings), lambda r: (r["benchmark"], r["index"])) if path else {}
    if engine is None:
        engine = make_engine("engine", model, tokenizer, bf16=bf16)
    stop = _TEMPLATE_STOPS.get(template, [])
    encoder = PromptEncoder(tokenizer, template, system_prompt)

    t_start = time.perf_counter()
    gen_s = grade_s = 0.0
    gen_tokens = 0
    todo = {name: [p for p in probs if (name, p.index) not in done] for name, probs in problems.items()}
    bar = _progress(sum(len(v) for v in problems.values()), progress)
    bar.update(sum(len(problems[n]) - len(todo[n]) for n in names))
    out = open_append(path) if path else None
    try:
        for name in names:
            last_number = uses_last_number(name, fallback)
            for start in range(0, len(todo[name]), batch_size):
                batch: list[Problem] = todo[name][start:start + batch_size]
                params = SamplingParams(n=samples, max_new_tokens=max_new_tokens, temperature=temperature,
                                        top_p=top_p, stop=list(stop), seed=seed + batch[0].index)
                t0 = time.perf_counter()
                texts, rollout = generate(engine, encoder, [p.question for p in batch], params)
                gen_s += time.perf_counter() - t0
                gen_tokens += int(rollout.lengths.sum())
                t0 = time.perf_counter()
                for rec in _records(name, batch, texts, rollout, settings, timeout, last_number):
                    done[(name, rec["index"])] = rec
                    if out:
                        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                if out:
                    out.flush()
                grade_s += time.perf_counter() - t0
                bar.update(len(batch))
                bar.set_postfix_str(f"{name} {gen_tokens / max(gen_s, 1e-9):.0f} tok/s")
    finally:
        bar.close()
        if out:
            out.close()

    per_bench: dict[str, dict[str, float]] = {}
    for name in names:
        verdicts = [done[(name, p.index)]["correct"] for p in problems[name]]
        per_bench[name] = {"n": len(verdicts), **summarize(verdicts, samples)}
    metrics_only = {k: {m: v for m, v in d.items() if m != "n"} for k, d in per_bench.items()}
    wall = time.perf_counter() - t_start
    return {
        "benchmarks": per_bench,
        "average": average(metrics_only) if per_bench else {},
        "primary_metric": primary_metric(samples),
        "settings": {**asdict(settings), "benchmarks": names, "limit": limit, "data_dir": str(data_dir),
                     "batch_size": batch_size, "bf16": bf16},
        "timing": {"wall_s": wall, "generate_s": gen_s, "grade_s": grade_s, "generated_tokens": gen_tokens,
                   "tokens_per_s": gen_tokens / gen_s if gen_s > 0 else 0.0,
                   "resumed_problems": sum(len(problems[n]) - len(todo[n]) for n in names)},
        "grader": grader_stats(),
    }


def evaluate(model, tokenizer, benchmarks: list[str] | str, *, data_dir: str | Path = "", limit: int = 0,
             max_new_tokens: int = 512, template: str = "chat", engine=None, system_prompt: str = "",
             samples: int = 1, temperature: float = 0.0, batch_size: int = 32, bf16: bool = False,
             seed: int = 0, timeout: float = DEFAULT_TIMEOUT, fallback: str = "auto") -> dict[str, float]:
    """Accuracy per benchmark, ``{name: pass@1}`` (greedy by default; ``mean@K`` when sampling).

    The trainer's hook: pass its rollout ``engine`` so evaluation decodes with the live policy weights,
    and log the result as ``eval/<name>``. Nothing is written to disk.
    """
    report = run_eval(model, tokenizer, benchmarks, data_dir=data_dir, limit=limit, max_new_tokens=max_new_tokens,
                      template=template, system_prompt=system_prompt, samples=samples, temperature=temperature,
                      seed=seed, batch_size=batch_size, engine=engine, bf16=bf16, timeout=timeout, fallback=fallback)
    key = report["primary_metric"]
    return {name: m[key] for name, m in report["benchmarks"].items()}


def _first(gold):
    return gold[0] if isinstance(gold, list) and gold else gold


def check_grader(benchmarks: str | list[str], *, data_dir: str | Path = "", limit: int = 0,
                 timeout: float = DEFAULT_TIMEOUT, show: int = 20) -> dict[str, dict]:
    """Grade each benchmark's own reference solutions against its gold answers.

    Returns ``{name: {"n", "agree", "agreement", "disagreements": [{"index", "pred", "gold"}, ...],
    "false_accepts", "false_accept_rate", "cross_pairs"}}`` for the benchmarks that have reference
    solutions (others are left out). Agreement: solution i graded against gold i (a grader that cannot
    recover the gold from the authors' own solutions misgrades models the same way). False accepts:
    solution i graded against the gold of the next problem whose gold is not equivalent to gold i
    (a lenient grader accepts wrong answers).
    """
    from gmpo.grading import verify

    report: dict[str, dict] = {}
    for name in resolve_names(benchmarks):
        probs = [p for p in load_benchmark(name, data_dir, limit) if p.solution]
        if not probs:
            continue
        bad = []
        for p in probs:
            g = grade(p.solution, p.gold, timeout)
            if not g.correct:
                bad.append({"index": p.index, "pred": g.pred, "gold": p.gold})
        false_accepts = pairs = 0
        for i, p in enumerate(probs):
            other = probs[(i + 1) % len(probs)]
            if len(probs) < 2 or verify(str(_first(other.gold)), p.gold, timeout):
                continue  # same answer: not a wrong answer
            pairs += 1
            false_accepts += grade(p.solution, other.gold, timeout).correct
        report[name] = {"n": len(probs), "agree": len(probs) - len(bad),
                        "agreement": (len(probs) - len(bad)) / len(probs), "disagreements": bad[:show],
                        "false_accepts": false_accepts, "cross_pairs": pairs,
                        "false_accept_rate": false_accepts / pairs if pairs else 0.0}
    return report
