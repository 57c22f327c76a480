"""Evaluate a model on math benchmarks: Pass@1 with greedy decoding (the GMPO paper's setting), or mean@K
and unbiased pass@k when sampling K completions per problem.

Prints a markdown table, writes the report to --out (JSON) and the per-problem records (prompt,
completions, extracted answers, gold, verdicts) to <out>.problems.jsonl beside it (code benchmarks:
<out>.code_problems.jsonl). Rerunning with the same --out and settings resumes: problems already in the
jsonl are not generated again (--no-resume starts afresh).

examples:
  gmpo eval --model smollm2-135m-instruct --benchmarks gsm8k,math500 --data-dir ../shared/data --limit 100
  gmpo eval --model runs/gmpo/checkpoint-200 --benchmarks paper --data-dir data/ --template qwen_math
  gmpo eval --model Qwen/Qwen2.5-Math-7B --benchmarks math500 --samples 8 --temperature 1.0
  gmpo eval --check-grader --data-dir ../shared/data

benchmarks: math500, aime24, amc (AMC 2023), minerva, olympiadbench, gsm8k; the GMPO / Dr. GRPO
papers' exact suite drgrpo_aime, drgrpo_amc (AMC 2022+2023, 83 problems), drgrpo_math, drgrpo_minerva,
drgrpo_olympiad_bench; groups: default (the first six), paper (the drgrpo five), all.
Code benchmarks (programs run in the sandbox, gmpo.sandbox): mbpp (test split, task ids 11-510),
mbpp_sanitized, humaneval (a local file: --humaneval-file or HumanEval.jsonl in --data-dir); per-problem
records with each completion's outcome go to <out>.code_problems.jsonl. --check-grader on them runs every
reference solution through the sandbox (all must pass):
  gmpo eval --check-grader --benchmarks mbpp --data-dir ../shared/data
  gmpo eval --benchmarks mbpp --data-dir ../shared/data --max-new-tokens 384 --limit 100
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gmpo.grading import DEFAULT_TIMEOUT


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `gmpo eval`."""
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="HF hub name, local model directory, or the packaged alias smollm2-135m-instruct (default)")
    p.add_argument("--benchmarks", default="default",
                   help="comma-separated benchmark names or groups (default: %(default)s = "
                        "math500,aime24,amc,minerva,olympiadbench,gsm8k)")
    p.add_argument("--data-dir", default="",
                   help="directory with local benchmark files (math500.jsonl, gsm8k_test.jsonl, drgrpo_eval_*.arrow, "
                        "...); empty = download each benchmark's hub dataset")
    p.add_argument("--limit", type=int, default=0, help="first N problems of each benchmark (0 = all)")
    p.add_argument("--samples", type=int, default=1,
                   help="completions per problem K; K > 1 reports mean@K and pass@k for k = 1, 2, 4, ... <= K "
                        "and needs --temperature > 0 (default 1: greedy Pass@1)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy, the paper's setting)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (1 = off)")
    p.add_argument("--max-new-tokens", type=int, default=3000,
                   help="generation budget per completion (default 3000, the paper's; lower it on a CPU)")
    p.add_argument("--template", default="chat",
                   help="prompt template: chat (the tokenizer's chat template), qwen_math (chat + 'Please reason step "
                        "by step, and put your final answer within \\boxed{}.'), r1 (R1-Zero plain text, stops at "
                        "</answer>), plain, or a custom string containing {prompt}")
    p.add_argument("--system-prompt", default="", help="system message for the chat template")
    p.add_argument("--out", default="eval_results.json",
                   help="report JSON path; per-problem records go to <out without .json>.problems.jsonl")
    p.add_argument("--batch-size", type=int, default=32, help="prompts generated together")
    p.add_argument("--bf16", choices=["auto", "true", "false"], default="auto",
                   help="bf16 autocast for generation (auto: on where the device has fast bf16)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="weight dtype")
    p.add_argument("--backend", choices=["engine", "hf"], default="engine",
                   help="rollout backend: gmpo's KV-cache engine (default) or transformers generate")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (unused when greedy)")
    p.add_argument("--fallback", choices=["auto", "last-number", "none"], default="auto",
                   help="grading of a completion with no explicit final answer (\\boxed{}, <answer>, 'the answer is', "
                        "'####'): auto = its last number on GSM8K (lm-eval's flexible extract), wrong elsewhere; "
                        "last-number / none = everywhere (truncated completions never use it)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds allowed per answer comparison, then wrong (default {DEFAULT_TIMEOUT:g}; slow ones in a batch share one timeout)")
    p.add_argument("--no-resume", action="store_true", help="start afresh: overwrite an existing per-problem jsonl")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--check-grader", action="store_true",
                   help="instead of evaluating a model, grade each benchmark's own reference solutions against its "
                        "gold answers and report the agreement (exit 1 if MATH500 agrees < 99%%); code benchmarks: "
                        "run each reference solution against its tests in the sandbox (exit 1 if any fails)")
    from gmpo.commands.eval_code import add_code_arguments

    add_code_arguments(p)


def records_path_for(out: str | Path) -> Path:
    """Where the per-problem jsonl of report ``out`` lives: ``results.json`` -> ``results.problems.jsonl``."""
    out = Path(out)
    stem = out.name[:-5] if out.name.endswith(".json") else out.name
    return out.with_name(stem + ".problems.jsonl")


def _check_grader(args) -> int:
    from gmpo.eval import check_grader

    names = args.benchmarks if args.benchmarks != "default" else "all"
    report = check_grader(names, data_dir=args.data_dir, limit=args.limit, timeout=args.timeout)
    print("| benchmark | solutions | agree | agreement | false accepts (cross-pairs) |")
    print("|---|---:|---:|---:|---:|")
    for name, r in report.items():
        print(f"| {name} | {r['n']} | {r['agree']} | {100 * r['agreement']:.1f}% | "
              f"{r['false_accepts']} / {r['cross_pairs']} |")
    for name, r in report.items():
        for d in r["disagreements"][:5]:
            print(f"  {name}#{d['index']}: extracted {d['pred']!r:.80} vs gold {d['gold']!r:.80}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"check_grader": report}, indent=2, ensure_ascii=False))
        print(f"wrote {args.out}")
    math500 = report.get("math500")
    if math500 is not None and math500["agreement"] < 0.99:
        print(f"FAIL: MATH500 agreement {100 * math500['agreement']:.1f}% < 99%", file=sys.stderr)
        return 1
    return 0


def run(args) -> int:
    """Run `gmpo eval`; bad input (unknown benchmark, impossible settings, records written with other settings,
    a missing file) is a one-line error and exit status 2, with nothing written."""
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"gmpo eval: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from gmpo.commands.eval_code import check_code, eval_code, split_benchmarks, write_report

    code, math = split_benchmarks(args.benchmarks)
    if args.check_grader:
        rc, code_report = check_code(args, code) if code else (0, {})
        if code and not math:
            if args.out:
                write_report(args.out, {"check_code_grader": code_report})
            return rc
        args.benchmarks = math
        return _check_grader(args) | rc
    import torch

    from gmpo.eval import markdown_table, resolve_names, run_eval
    from gmpo.models import bf16_supported, load_model, resolve_device
    from gmpo.rollout import make_engine

    if math:
        resolve_names(math)  # fail on a typo before loading the model
    device = resolve_device(args.device)
    bf16 = bf16_supported(device) if args.bf16 == "auto" else args.bf16 == "true"
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=str(device))
    engine = make_engine(args.backend, model, tokenizer, bf16=bf16, decode_batch_size=max(args.batch_size * args.samples, 1))
    if not math:
        write_report(args.out, eval_code(args, code, model, tokenizer, engine, bf16))
        print(f"wrote {args.out}")
        return 0
    records = records_path_for(args.out)
    if args.no_resume and records.exists():
        records.unlink()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    print(f"model {args.model} on {device} (bf16={bf16}, threads={torch.get_num_threads()}); records -> {records}",
          file=sys.stderr)
    report = run_eval(model, tokenizer, math, data_dir=args.data_dir, limit=args.limit,
                      max_new_tokens=args.max_new_tokens, template=args.template, system_prompt=args.system_prompt,
                      samples=args.samples, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                      batch_size=args.batch_size, engine=engine, bf16=bf16, records_path=records,
                      timeout=args.timeout, progress=not args.no_progress, fallback=args.fallback)
    report["settings"].update(model=args.model, device=str(device), dtype=args.dtype, backend=args.backend)
    report["records"] = str(records)
    if code:
        report["code"] = eval_code(args, code, model, tokenizer, engine, bf16)
    Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    t = report["timing"]
    print(markdown_table({k: {m: v for m, v in d.items() if m != "n"} for k, d in report["benchmarks"].items()},
                         {k: d["n"] for k, d in report["benchmarks"].items()}))
    print(f"\n{t['generated_tokens']} tokens generated in {t['generate_s']:.1f} s ({t['tokens_per_s']:.1f} tok/s); "
          f"wall {t['wall_s']:.1f} s; {t['resumed_problems']} problems resumed; grader timeouts "
          f"{report['grader']['timeouts']}")
    print(f"wrote {args.out} and {records}")
    return 0
