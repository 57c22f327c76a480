"""Math-benchmark evaluation: benchmark registry, metrics, and the runner behind ``gmpo eval``.

``evaluate(model, tokenizer, ["math500"], data_dir=..., limit=...) -> {"math500": accuracy}`` is the
trainer's entry point; ``run_eval`` gives the full report; ``check_grader`` grades the benchmarks' own
reference solutions.
"""
from gmpo.eval.benchmarks import BENCHMARKS, GROUPS, Benchmark, Problem, load_benchmark, resolve_names
from gmpo.eval.metrics import markdown_table, pass_at_k, summarize
from gmpo.eval.runner import EvalSettings, check_grader, evaluate, run_eval

__all__ = ["BENCHMARKS", "GROUPS", "Benchmark", "EvalSettings", "Problem", "check_grader", "evaluate",
           "load_benchmark", "markdown_table", "pass_at_k", "resolve_names", "run_eval", "summarize"]
