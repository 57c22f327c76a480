"""Evaluate a model on code benchmarks (MBPP, HumanEval format) and check the grader on the references.

:func:`run_code_eval` generates a completion per problem (greedy: pass@1) or K samples (unbiased pass@k,
Chen et al. 2021), extracts the program (:func:`gmpo.rewards.code.extract_code`), runs it against the
task's tests in the sandbox pool and writes one record per problem (prompt, completions, outcome per
completion: passed / wrong_answer / compile_error / runtime_error / timeout / ...). :func:`check_code_grader`
runs every reference solution through the same path: all must pass.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from gmpo.eval.code import CODE_BENCHMARKS, CodeProblem, load_code_benchmark
from gmpo.eval.metrics import average, primary_metric, summarize
from gmpo.eval.runner import open_append, read_records
from gmpo.rewards.code import CodeOutcome, extract_code, run_tests


def _pool(pool, isolation: str, workers: int | None):
    from gmpo.sandbox import SandboxPool

    return pool if pool is not None else SandboxPool(workers=workers, isolation=isolation)


def _limits(timeout: float):
    from gmpo.sandbox import Limits

    return Limits(timeout=timeout)


def grade_completions(problems: list[CodeProblem], completions: list[list[str]], pool, timeout: float = 10.0,
                      block: str = "last") -> list[list[CodeOutcome]]:
    """Outcomes per problem per completion (all programs of the batch run in parallel)."""
    codes, tests, setups, where = [], [], [], []
    for i, (p, comps) in enumerate(zip(problems, completions)):
        for c in comps:
            code = extract_code(c, p.entry_point, block)
            codes.append(None if code is None else p.program(code))
            tests.append(list(p.tests))
            setups.append(p.setup_code)
            where.append(i)
    flat = run_tests(codes, tests, setups, pool=pool, limits=_limits(timeout))
    out: list[list[CodeOutcome]] = [[] for _ in problems]
    for i, o in zip(where, flat):
        out[i].append(o)
    return out


def check_code_grader(names: list[str], data_dir: str | Path = "", limit: int = 0, humaneval_file: str = "",
                      pool=None, isolation: str = "auto", workers: int | None = None, timeout: float = 30.0,
                      show: int = 20) -> dict[str, dict]:
    """Run each benchmark's reference solutions (every task, all splits) against its own tests.

    ``timeout`` is generous (30 s): the slowest MBPP reference (task 123, amicable numbers below 10,000 in
    O(n^2)) takes about 4 s alone and 12 s on a 2-core machine at load average 14.

    Returns ``{name: {"n", "passed", "pass_rate", "failures": [{"task_id", "outcome", "error"}], "wall_s",
    "programs_per_s", "isolation", "workers"}}``.
    """
    pool = _pool(pool, isolation, workers)
    report = {}
    for name in names:
        split = "all" if name.startswith("mbpp") else "test"
        probs = load_code_benchmark(name, data_dir, limit, humaneval_file, split=split)
        t0 = time.perf_counter()
        outs = grade_completions(probs, [[p.solution] for p in probs], pool, timeout)
        wall = time.perf_counter() - t0
        fails = [{"task_id": p.task_id, "outcome": o[0].outcome, "error": o[0].error}
                 for p, o in zip(probs, outs) if o[0].outcome != "passed"]
        report[name] = {"n": len(probs), "passed": len(probs) - len(fails),
                        "pass_rate": (len(probs) - len(fails)) / max(len(probs), 1), "failures": fails[:show],
                        "n_failures": len(fails), "wall_s": wall, "programs_per_s": len(probs) / wall,
                        "isolation": pool.isolation.describe(), "workers": pool.workers}
    return report


def run_code_eval(model, tokenizer, names: list[str], *, data_dir: str | Path = "", limit: int = 0,
                  humaneval_file: str = "", max_new_tokens: int = 512, template: str = "chat",
                  system_prompt: str = "", samples: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                  seed: int = 0, batch_size: int = 32, engine=None, bf16: bool = False,
                  records_path: str | Path | None = None, timeout: float = 10.0, pool=None,
                  isolation: str = "auto", workers: int | None = None, progress: bool = False) -> dict:
    """Evaluate ``model`` on code benchmarks; the report has ``benchmarks`` ({name: {"n", "pass@1" or
    "mean@K" and "pass@k"}}), ``outcomes`` (counts per benchmark), ``average``, ``settings``, ``timing``
    and ``sandbox`` (the isolation used). Per-problem records are appended to ``records_path`` (jsonl) after
    each batch; problems already recorded there with the same settings are not generated again (resume: the
    report covers them too; ``timing`` covers this call's problems only)."""
    from gmpo.data.prompts import PromptEncoder
    from gmpo.eval.runner import generate
    from gmpo.rollout import SamplingParams, make_engine

    unknown = [n for n in names if n not in CODE_BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown code benchmark(s) {', '.join(unknown)}; choose {', '.join(CODE_BENCHMARKS)}")
    if samples < 1 or (samples > 1 and temperature <= 0):
        raise ValueError(f"samples={samples} needs samples >= 1 and, when > 1, a temperature > 0")
    pool = _pool(pool, isolation, workers)
    engine = engine or make_engine("engine", model, tokenizer, bf16=bf16)
    encoder = PromptEncoder(tokenizer, template, system_prompt)
    settings = {"template": template, "system_prompt": system_prompt, "max_new_tokens": max_new_tokens,
                "samples": samples, "temperature": temperature, "top_p": top_p, "seed": seed, "timeout": timeout}
    path = Path(records_path) if records_path else None
    done = read_records(path, settings, lambda r: (r["benchmark"], str(r["task_id"]))) if path else {}
    out = open_append(path) if path else None
    t_start, gen_s, run_s, tokens, resumed = time.perf_counter(), 0.0, 0.0, 0, 0
    per_bench, counts = {}, {}
    try:
        for name in names:
            probs = load_code_benchmark(name, data_dir, limit, humaneval_file)
            verdicts, tally = [], {}
            for p in probs:  # resumed problems count as recorded
                rec = done.get((name, str(p.task_id)))
                if rec is not None:
                    verdicts.append(list(rec["correct"]))
                    for o in rec["outcomes"]:
                        tally[o] = tally.get(o, 0) + 1
            resumed += len(verdicts)
            todo = [(i, p) for i, p in enumerate(probs) if (name, str(p.task_id)) not in done]
            for start in range(0, len(todo), batch_size):
                batch = [p for _, p in todo[start:start + batch_size]]
                params = SamplingParams(n=samples, max_new_tokens=max_new_tokens, temperature=temperature,
                                        top_p=top_p, seed=seed + todo[start][0])
                t0 = time.perf_counter()
                texts, roll = generate(engine, encoder, [p.prompt for p in batch], params)  # gmpo eval's one path
                gen_s += time.perf_counter() - t0
                tokens += int(sum(roll.lengths.tolist()))
                comps = [roll.texts[i * samples:(i + 1) * samples] for i in range(len(batch))]
                t0 = time.perf_counter()
                outs = grade_completions(batch, comps, pool, timeout)
                run_s += time.perf_counter() - t0
                for p, text, c, o in zip(batch, texts, comps, outs):
                    verdicts.append([x.outcome == "passed" for x in o])
                    for x in o:
                        tally[x.outcome] = tally.get(x.outcome, 0) + 1
                    if out:
                        out.write(json.dumps({"benchmark": name, "task_id": p.task_id, "settings": settings, "prompt": text,
                                              "completions": c, "outcomes": [x.outcome for x in o],
                                              "errors": [x.error for x in o], "correct": verdicts[-1]}) + "\n")
                if out:
                    out.flush()
                if progress:
                    print(f"  {name}: {len(verdicts)}/{len(probs)} problems, pass so far "
                          f"{sum(map(any, verdicts))}", flush=True)
            per_bench[name] = {"n": len(verdicts), **summarize(verdicts, samples)}
            counts[name] = tally
    finally:
        if out:
            out.close()
    metrics_only = {k: {m: v for m, v in d.items() if m != "n"} for k, d in per_bench.items()}
    return {"benchmarks": per_bench, "outcomes": counts, "average": average(metrics_only) if per_bench else {},
            "primary_metric": primary_metric(samples),
            "settings": {"benchmarks": names, "limit": limit, **settings},
            "timing": {"wall_s": time.perf_counter() - t_start, "generate_s": gen_s, "sandbox_s": run_s,
                       "generated_tokens": tokens, "tokens_per_s": tokens / gen_s if gen_s else 0.0,
                       "resumed_problems": resumed},
            "sandbox": pool.isolation.describe()}
