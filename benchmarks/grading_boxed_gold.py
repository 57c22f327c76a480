"""Boxed-gold grading check: box every gold answer verbatim and grade it with the ``math_answer`` reward.

Every such completion is right by construction, so the pass rate must be 100 %; anything less is a
grader defect (issue 16, defect 1: the question-echo stripper cut answers that repeat the question).
Also times a batch of pathological completions (``\\boxed{9^{9^{9}}}``, defect 7): through the
``math_answer`` reward (towers are caught as too large) and straight through the math-verify processes.

    .venv/bin/python benchmarks/grading_boxed_gold.py [--data ../shared/data] [--limit N] [--pathological 64]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def _rows(data: Path, limit: int | None) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (questions, golds) for the MATH level 3-5 train parquet and MATH500."""
    import pyarrow.parquet as pq

    t = pq.read_table(data / "math_lvl3to5_8k_train.parquet", columns=["question", "gt_answer"]).to_pydict()
    out = {"math_train": (t["question"][:limit], t["gt_answer"][:limit])}
    with open(data / "math500.jsonl") as f:
        m = [json.loads(line) for line in f][:limit]
    out["math500"] = ([r["problem"] for r in m], [r["answer"] for r in m])
    return out


def boxed_gold(questions: list[str], golds: list[str], chunk: int = 256) -> tuple[int, list[int], float]:
    """(number graded correct, indices graded wrong, wall seconds) for ``\\boxed{gold}`` completions."""
    from gmpo.rewards import math_answer

    t0 = time.perf_counter()
    scores: list[float] = []
    for i in range(0, len(golds), chunk):  # a batch of rollouts at a time, as training scores them
        g = golds[i:i + chunk]
        scores += math_answer(questions[i:i + chunk], ["\\boxed{" + x + "}" for x in g], answer=g)
    wrong = [i for i, s in enumerate(scores) if s != 1.0]
    return len(scores) - len(wrong), wrong, time.perf_counter() - t0


def pathological(n: int, timeout: float | None) -> tuple[float, list[float]]:
    """(wall seconds, scores) of one math_answer call on n distinct power towers (``\\boxed{9^{9^{9}}}``,
    ``\\boxed{10^{10^{10}}}``, ...) plus three normal answers (expected scores 1, 0, 1)."""
    from gmpo.rewards import math_answer

    comps = [f"\\boxed{{{b}^{{{b}^{{{b}}}}}}}" for b in range(9, 9 + n)]
    comps += ["\\boxed{\\frac{1}{2}}", "\\boxed{3}", "\\boxed{x^2+2x+1}"]
    golds = ["5"] * n + ["0.5", "4", "(x+1)^2"]
    kw = {} if timeout is None else {"timeout": timeout}
    math_answer(["q"], ["\\boxed{\\sqrt{4}}"], answer=["2"])  # start the grading server first (paid once)
    t0 = time.perf_counter()
    scores = math_answer(["q"] * len(comps), comps, answer=golds, **kw)
    return time.perf_counter() - t0, scores


def slow_pool(n: int, timeout: float) -> tuple[float, int, dict]:
    """(wall seconds, timeouts, the server's rounds/round_s/wall_s) of n power towers sent straight to the math-verify processes (no too-large
    check): what a flood of slow answers the check does not catch costs."""
    from gmpo.grading.pool import MathVerifyPool

    pool = MathVerifyPool()
    try:
        pool.run([("\\sqrt{4}", "2")], timeout)  # start-up
        t0 = time.perf_counter()
        pool.run([(f"{b}^{{{b}^{{{b}}}}}", "5") for b in range(9, 9 + n)], timeout)
        return time.perf_counter() - t0, pool.n_timeouts, pool.last_stats
    finally:
        pool.close()


def main() -> None:
    """Print the boxed-gold pass rates and the pathological-batch wall time."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--limit", type=int, default=None, help="first N problems of each file (default: all)")
    ap.add_argument("--pathological", type=int, default=64, help="batch size of the pathological check (0: skip)")
    ap.add_argument("--timeout", type=float, default=None, help="math_answer timeout (default: the reward's)")
    ap.add_argument("--show", type=int, default=30, help="wrongly graded golds to print")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} on {os.cpu_count()} CPUs")
    for name, (qs, gs) in _rows(args.data, args.limit).items():
        keep = [i for i, g in enumerate(gs) if str(g).strip()]  # an empty gold has nothing to box
        qs, gs, empty = [qs[i] for i in keep], [gs[i] for i in keep], len(gs) - len(keep)
        ok, wrong, wall = boxed_gold(qs, gs)
        print(f"{name}: {ok}/{len(gs)} boxed golds graded correct ({100 * ok / len(gs):.2f} %; {empty} empty golds "
              f"left out), wall {wall:.1f} s")
        for i in wrong[:args.show]:
            print(f"  wrong #{i}: gold {gs[i][:100]!r}")
    if args.pathological:
        from gmpo.grading import DEFAULT_TIMEOUT

        n, timeout = args.pathological, args.timeout or DEFAULT_TIMEOUT
        wall, scores = pathological(n, args.timeout)
        print(f"math_answer: {n} power towers + 3 normal answers in {wall:.2f} s wall at timeout {timeout} s; "
              f"tower scores sum {sum(scores[:n])}, normal scores {scores[n:]} (expected [1.0, 0.0, 1.0])")
        wall, timeouts, stats = slow_pool(n, timeout)
        print(f"math-verify processes: {n} towers sent straight to math-verify in {wall:.2f} s wall "
              f"({wall / timeout:.2f} x the {timeout} s timeout; {timeouts} timed out; {stats['rounds']} shared "
              f"round(s) of {stats['round_s']:.2f} s, the rest forks and first CPU slices)")
        print(f"load average after: {os.getloadavg()[0]:.2f}")

if __name__ == "__main__":
    main()
