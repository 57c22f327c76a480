"""The code-benchmark half of `gmpo eval` (mbpp, mbpp_sanitized, humaneval): options, grader check, model eval."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_code_arguments(p: argparse.ArgumentParser) -> None:
    """Options used by the code benchmarks."""
    p.add_argument("--humaneval-file", default="",
                   help="HumanEval-format .jsonl(.gz) for --benchmarks humaneval (default: HumanEval.jsonl in "
                        "--data-dir, else the hub dataset openai/openai_humaneval)")
    p.add_argument("--sandbox", choices=["auto", "bubblewrap", "fallback"], default="auto",
                   help="code benchmarks: isolation of the programs (auto: bubblewrap when it works, else the "
                        "fallback: session + rlimits + unprivileged uid + namespaces where permitted)")
    p.add_argument("--sandbox-workers", type=int, default=0,
                   help="code benchmarks: programs run in parallel (0 = the CPU count)")
    p.add_argument("--code-timeout", type=float, default=0.0,
                   help="code benchmarks: wall seconds allowed per program, then: timeout, scored wrong (0 = 10 s "
                        "for model completions, 30 s for --check-grader's reference solutions)")


def split_benchmarks(spec: str) -> tuple[list[str], str]:
    """(code benchmark names, the remaining math spec or '') of a --benchmarks value."""
    from gmpo.eval.code import CODE_BENCHMARKS

    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise ValueError("--benchmarks names no benchmark")
    code = [s for s in items if s in CODE_BENCHMARKS]
    return list(dict.fromkeys(code)), ",".join(s for s in items if s not in CODE_BENCHMARKS)


def _pool(args):
    from gmpo.sandbox import SandboxPool

    return SandboxPool(workers=args.sandbox_workers or None, isolation=args.sandbox)


def check_code(args, names: list[str]) -> tuple[int, dict]:
    """Run every reference solution of ``names`` through the sandbox; (exit code, report)."""
    from gmpo.eval.code_eval import check_code_grader

    with _pool(args) as pool:
        print(f"sandbox: {pool.isolation.describe()}; {pool.workers} workers", file=sys.stderr)
        report = check_code_grader(names, args.data_dir, args.limit, args.humaneval_file, pool=pool,
                                   timeout=args.code_timeout or 30.0)
    print("| benchmark | reference solutions | pass | fail | wall s | programs/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in report.items():
        print(f"| {name} | {r['n']} | {r['passed']} | {r['n_failures']} | {r['wall_s']:.1f} | {r['programs_per_s']:.1f} |")
    for name, r in report.items():
        for f in r["failures"][:10]:
            print(f"  {name} task {f['task_id']}: {f['outcome']}: {f['error'][:160]}")
    bad = sum(r["n_failures"] for r in report.values())
    if bad:
        print(f"FAIL: {bad} reference solution(s) do not pass their own tests in the sandbox", file=sys.stderr)
    return (1 if bad else 0), report


def code_records_path(out: str | Path) -> Path:
    """Where the per-problem jsonl of the code benchmarks of report ``out`` lives."""
    out = Path(out)
    stem = out.name[:-5] if out.name.endswith(".json") else out.name
    return out.with_name(stem + ".code_problems.jsonl")


def eval_code(args, names: list[str], model, tokenizer, engine, bf16: bool) -> dict:
    """Evaluate the loaded model on code benchmarks ``names``; print the table; return the report."""
    from gmpo.eval import markdown_table
    from gmpo.eval.code_eval import run_code_eval

    records = code_records_path(args.out)
    if args.no_resume and records.exists():
        records.unlink()
    with _pool(args) as pool:
        print(f"sandbox: {pool.isolation.describe()}; code records -> {records}", file=sys.stderr)
        report = run_code_eval(model, tokenizer, names, data_dir=args.data_dir, limit=args.limit,
                               humaneval_file=args.humaneval_file, max_new_tokens=args.max_new_tokens,
                               template=args.template, system_prompt=args.system_prompt, samples=args.samples,
                               temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                               batch_size=args.batch_size, engine=engine, bf16=bf16, records_path=records,
                               timeout=args.code_timeout or 10.0, pool=pool, progress=not args.no_progress)
    report["records"] = str(records)
    print(markdown_table({k: {m: v for m, v in d.items() if m != "n"} for k, d in report["benchmarks"].items()},
                         {k: d["n"] for k, d in report["benchmarks"].items()}))
    for name, tally in report["outcomes"].items():
        print(f"  {name} outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))
    t = report["timing"]
    print(f"{t['generated_tokens']} tokens in {t['generate_s']:.1f} s; sandbox {t['sandbox_s']:.1f} s; "
          f"wall {t['wall_s']:.1f} s; {t['resumed_problems']} problems resumed")
    return report


def write_report(path: str | Path, report: dict) -> None:
    """Write a report JSON (creating its directory)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2, ensure_ascii=False))
