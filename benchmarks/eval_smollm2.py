"""Evaluate SmolLM2-135M-Instruct on GSM8K (first 200) and MATH500 (first 100), greedy, chat template.

One command:  .venv/bin/python benchmarks/eval_smollm2.py
Measures accuracy (Pass@1), generated tokens/s and wall time per benchmark with gmpo's KV-cache rollout
engine, then appends a dated section (figures, command, machine) to benchmarks/RESULTS.md. Per-problem
records go to runs/eval_smollm2/<benchmark>.problems.jsonl (a rerun with the same settings resumes from
them; pass --fresh to regenerate).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    """CPU model, cores, torch/transformers versions, threads."""
    import torch
    import transformers

    from gmpo.perf import cpu_name

    cpu = cpu_name()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"transformers {transformers.__version__}, Python {platform.python_version()}; load average at "
            f"start {load}")


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and append it to RESULTS.md."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--gsm8k-limit", type=int, default=200)
    p.add_argument("--math500-limit", type=int, default=100)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--template", default="chat")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per generate call")
    p.add_argument("--bf16", choices=["auto", "true", "false"], default="auto")
    p.add_argument("--fallback", choices=["auto", "last-number", "none"], default="auto",
                   help="last-number grading fallback (see gmpo eval --help)")
    p.add_argument("--out-dir", default=str(ROOT / "runs" / "eval_smollm2"))
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    p.add_argument("--fresh", action="store_true", help="delete earlier per-problem records first")
    args = p.parse_args(argv)

    from gmpo.eval import run_eval
    from gmpo.models import bf16_supported, load_model
    from gmpo.rollout import make_engine

    t0 = time.perf_counter()
    host = machine()
    bf16 = bf16_supported("cpu") if args.bf16 == "auto" else args.bf16 == "true"
    model, tok = load_model(args.model)
    load_s = time.perf_counter() - t0
    engine = make_engine("engine", model, tok, bf16=bf16, decode_batch_size=args.batch_size)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    rows = []
    for name, limit in (("gsm8k", args.gsm8k_limit), ("math500", args.math500_limit)):
        records = out_dir / f"{name}.problems.jsonl"
        if args.fresh and records.exists():
            records.unlink()
        rep = run_eval(model, tok, [name], data_dir=args.data_dir, limit=limit, max_new_tokens=args.max_new_tokens,
                       template=args.template, batch_size=args.batch_size, engine=engine, bf16=bf16,
                       records_path=records, progress=True, fallback=args.fallback)
        (out_dir / f"{name}.json").write_text(json.dumps(rep, indent=2))
        recs = [json.loads(x) for x in records.read_text().splitlines() if x.strip()]
        lens = [r["n_tokens"][0] for r in recs]
        t = rep["timing"]
        rows.append({
            "name": name, "n": rep["benchmarks"][name]["n"], "acc": rep["benchmarks"][name]["pass@1"],
            "tokens": t["generated_tokens"], "tok_s": t["tokens_per_s"], "gen_s": t["generate_s"],
            "grade_s": t["grade_s"], "wall_s": t["wall_s"], "resumed": t["resumed_problems"],
            "mean_len": sum(lens) / len(lens), "truncated": sum(r["truncated"][0] for r in recs) / len(recs),
            "boxed": sum("\\boxed" in r["completions"][0] for r in recs) / len(recs),
            "timeouts": rep["grader"]["timeouts"],
        })
        print(json.dumps(rows[-1]), flush=True)

    total = time.perf_counter() - t0
    cmd = " ".join([".venv/bin/python", "benchmarks/eval_smollm2.py", *map(shlex.quote, argv or sys.argv[1:])])
    lines = [
        "",
        f"## Evaluation: SmolLM2-135M-Instruct on GSM8K / MATH500 ({dt.date.today().isoformat()})",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {host}  ",
        f"Settings: model `{args.model}`, greedy (temperature 0, Pass@1), template `{args.template}`, "
        f"max_new_tokens {args.max_new_tokens}, gmpo KV-cache engine, batch {args.batch_size} prompts, "
        f"bf16 autocast {bf16}; grading `gmpo.grading.grade` (final answer, math-verify; last-number fallback "
        f"`{args.fallback}`: auto = GSM8K only, never for truncated completions). Model load "
        f"{load_s:.1f} s; total {total:.0f} s.",
        "",
        "| benchmark | problems | Pass@1 | generated tokens | tokens/s | generate s | grade s | wall s | "
        "mean completion tokens | hit max_new_tokens | has \\boxed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} (first {r['n']}) | {r['n']} | {100 * r['acc']:.1f}% | {r['tokens']} | "
                     f"{r['tok_s']:.1f} | {r['gen_s']:.0f} | {r['grade_s']:.1f} | {r['wall_s']:.0f} | "
                     f"{r['mean_len']:.0f} | {100 * r['truncated']:.0f}% | {100 * r['boxed']:.0f}% |")
    if any(r["resumed"] for r in rows):
        lines.append("")
        lines.append("Note: " + ", ".join(f"{r['name']} resumed {r['resumed']} problems from earlier records"
                                          for r in rows if r["resumed"]) + " (their tokens are not in the timing).")
    lines.append("")
    with open(args.results, "a", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
