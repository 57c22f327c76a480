"""Code benchmarks: MBPP / HumanEval loading, the reference-solution check through the sandbox, `gmpo eval`."""
from __future__ import annotations

import gzip
import json

import pytest
import torch

from gmpo.cli import main
from gmpo.eval.code import (CODE_BENCHMARKS, code_dataset, humaneval_from_rows, is_code_source, load_code_benchmark,
                            load_humaneval, load_mbpp)
from gmpo.eval.code_eval import check_code_grader, run_code_eval
from gmpo.rollout.base import Rollout
from gmpo.sandbox import SandboxPool

HE_ROWS = [
    {"task_id": "HumanEval/0", "entry_point": "total",
     "prompt": "from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    \"\"\"Sum of xs.\"\"\"\n",
     "canonical_solution": "    return sum(xs)\n",
     "test": "def check(candidate):\n    assert candidate([1, 2, 3]) == 6\n    assert candidate([]) == 0\n"},
    {"task_id": "HumanEval/1", "entry_point": "shout",
     "prompt": "def shout(s: str) -> str:\n    \"\"\"Upper case and '!'.\"\"\"\n",
     "canonical_solution": "    return s.upper() + '!'\n",
     "test": "def check(candidate):\n    assert candidate('hi') == 'HI!'\n"},
]


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2) as p:
        yield p


def test_mbpp_splits_follow_task_ids(shared_data):
    sizes = {s: len(load_mbpp(split=s, data_dir=shared_data)) for s in ("prompt", "test", "validation", "train", "all")}
    assert sizes == {"prompt": 10, "test": 500, "validation": 90, "train": 374, "all": 974}
    test = load_mbpp(split="test", data_dir=shared_data)
    assert (test[0].task_id, test[-1].task_id) == ("11", "510")
    assert test[0].entry_point == "remove_Occ" and 'assert remove_Occ("hello","l") == "heo"' in test[0].prompt
    assert all(p.entry_point for p in load_mbpp(split="all", data_dir=shared_data))
    san = load_mbpp(split="test", sanitized=True, data_dir=shared_data)
    assert len(san) == 257 and all(11 <= int(p.task_id) <= 510 for p in san)
    with pytest.raises(ValueError, match="unknown MBPP split"):
        load_mbpp(split="dev", data_dir=shared_data)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_mbpp(data_dir=shared_data / "nowhere")


def test_humaneval_format(tmp_path):
    path = tmp_path / "HumanEval.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in HE_ROWS))
    probs = load_humaneval(str(path))
    assert [p.entry_point for p in probs] == ["total", "shout"]
    p = probs[0]
    # a continuation joins the prompt; a complete function keeps the prompt's imports
    assert p.program("    return sum(xs)\n") == HE_ROWS[0]["prompt"] + "    return sum(xs)\n"
    full = p.program("def total(xs: List[int]) -> int:\n    return sum(xs)\n")
    assert full.startswith("from typing import List\n") and "def total" in full
    assert load_code_benchmark("humaneval", data_dir=tmp_path) == probs
    with pytest.raises(KeyError, match="entry_point"):
        humaneval_from_rows([{"task_id": "x", "prompt": "", "test": ""}])


def test_check_grader_passes_references_and_catches_a_broken_one(shared_data, tmp_path, pool):
    report = check_code_grader(["mbpp", "mbpp_sanitized"], shared_data, limit=8, pool=pool)
    assert {k: (r["n"], r["passed"]) for k, r in report.items()} == {"mbpp": (8, 8), "mbpp_sanitized": (8, 8)}
    assert report["mbpp"]["programs_per_s"] > 0 and report["mbpp"]["isolation"] == pool.isolation.describe()
    broken = [dict(HE_ROWS[0]), dict(HE_ROWS[1], canonical_solution="    return s\n")]
    path = tmp_path / "he.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in broken))
    he = check_code_grader(["humaneval"], humaneval_file=str(path), pool=pool)["humaneval"]
    assert (he["n"], he["passed"]) == (2, 1)
    assert he["failures"] == [{"task_id": "HumanEval/1", "outcome": "wrong_answer", "error": "AssertionError: "}]


class ScriptedEngine:
    """Returns fixed completions (as a policy would) so pass@k has known values; the grading is real."""

    def __init__(self, texts_per_prompt: list[list[str]]):
        self.script, self.calls = list(texts_per_prompt), 0

    def generate(self, prompts, params):
        texts = []
        for _ in prompts:
            texts += self.script[self.calls][:params.n]
            self.calls += 1
        n = len(texts)
        return Rollout(prompt_ids=prompts, completion_ids=torch.zeros(n, 1, dtype=torch.long),
                       completion_mask=torch.ones(n, 1), logprobs=torch.zeros(n, 1),
                       truncated=torch.zeros(n, dtype=torch.bool), texts=texts, n=params.n)


def test_pass_at_k_and_records(tmp_path, tok, pool):
    path = tmp_path / "he.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in HE_ROWS))
    good0 = "```python\ndef total(xs: List[int]) -> int:\n    return sum(xs)\n```"
    bad1, good1 = "```python\ndef shout(s):\n    return s\n```", "    return s.upper() + '!'\n"
    engine = ScriptedEngine([[good0, good0, good0, good0], [bad1, bad1, bad1, good1]])
    records = tmp_path / "rec.jsonl"
    rep = run_code_eval(None, tok, ["humaneval"], humaneval_file=str(path), samples=4, temperature=1.0,
                        engine=engine, pool=pool, records_path=records)
    m = rep["benchmarks"]["humaneval"]
    # problem 0: 4/4 correct; problem 1: 1/4 -> pass@1 = (1 + 1/4) / 2, pass@2 = (1 + 1/2) / 2, pass@4 = 1
    assert m["n"] == 2 and m["mean@4"] == pytest.approx(5 / 8)
    assert (m["pass@1"], m["pass@2"], m["pass@4"]) == pytest.approx((5 / 8, 3 / 4, 1.0))
    assert rep["outcomes"]["humaneval"] == {"passed": 5, "wrong_answer": 3}
    lines = [json.loads(x) for x in records.read_text().splitlines()]
    assert [r["task_id"] for r in lines] == ["HumanEval/0", "HumanEval/1"]
    assert lines[1]["outcomes"] == ["wrong_answer"] * 3 + ["passed"] and lines[1]["correct"] == [False] * 3 + [True]


def test_resume_skips_recorded_problems_and_refuses_other_settings(tmp_path, tok, pool):
    """An interrupted run (problem 0 recorded, then a line cut mid-write) resumes: only problem 1 is generated,
    the report still covers both; records made with other settings are an error, not silently mixed."""
    path = tmp_path / "he.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in HE_ROWS))
    good0 = "```python\ndef total(xs: List[int]) -> int:\n    return sum(xs)\n```"
    bad1 = "```python\ndef shout(s):\n    return s\n```"
    records = tmp_path / "rec.jsonl"
    first = run_code_eval(None, tok, ["humaneval"], humaneval_file=str(path), limit=1, engine=ScriptedEngine([[good0]]),
                          pool=pool, records_path=records)
    assert first["benchmarks"]["humaneval"]["n"] == 1
    with open(records, "a") as f:
        f.write('{"benchmark": "humaneval", "task_id": "HumanEval/1", "sett')  # killed mid-line
    engine = ScriptedEngine([[bad1]])  # would fail if asked for more than one problem
    rep = run_code_eval(None, tok, ["humaneval"], humaneval_file=str(path), engine=engine, pool=pool,
                        records_path=records)
    assert engine.calls == 1 and rep["timing"]["resumed_problems"] == 1
    assert rep["benchmarks"]["humaneval"]["n"] == 2 and rep["benchmarks"]["humaneval"]["pass@1"] == 0.5
    assert rep["outcomes"]["humaneval"] == {"passed": 1, "wrong_answer": 1}
    lines = [json.loads(x) for x in records.read_text().splitlines() if x.startswith("{") and x.endswith("}")]
    assert [r["task_id"] for r in lines] == ["HumanEval/0", "HumanEval/1"]
    with pytest.raises(ValueError, match="other settings"):
        run_code_eval(None, tok, ["humaneval"], humaneval_file=str(path), max_new_tokens=7,
                      engine=ScriptedEngine([[good0], [bad1]]), pool=pool, records_path=records)


def test_tiny_model_end_to_end(shared_data, tok, model, pool, one_thread, tmp_path):
    rep = run_code_eval(model, tok, ["mbpp"], data_dir=shared_data, limit=2, max_new_tokens=4, pool=pool,
                        records_path=tmp_path / "r.jsonl", batch_size=2)
    assert rep["benchmarks"]["mbpp"]["n"] == 2 and rep["benchmarks"]["mbpp"]["pass@1"] == 0.0
    assert sum(rep["outcomes"]["mbpp"].values()) == 2 and rep["timing"]["generated_tokens"] > 0
    recs = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in recs] == ["11", "12"] and all(len(r["outcomes"]) == 1 for r in recs)


def test_code_dataset_for_training(shared_data):
    ds = code_dataset(str(shared_data / "mbpp.jsonl"), "validation")
    assert len(ds) == 90 and set(ds.column_names) >= {"prompt", "answer", "tests", "setup_code", "entry_point"}
    assert ds[0]["task_id"] == "511" and len(ds[0]["tests"]) == 3
    assert is_code_source(str(shared_data / "mbpp.jsonl")) and is_code_source("google-research-datasets/mbpp")
    assert not is_code_source(str(shared_data / "gsm8k_train.jsonl"))


def test_cli_check_grader_and_help(shared_data, tmp_path, capsys):
    out = tmp_path / "cg.json"
    rc = main(["eval", "--check-grader", "--benchmarks", "mbpp", "--limit", "6", "--data-dir", str(shared_data),
               "--sandbox-workers", "2", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "| mbpp | 6 | 6 | 0 |" in text
    assert json.loads(out.read_text())["check_code_grader"]["mbpp"]["passed"] == 6
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(dict(HE_ROWS[1], canonical_solution="    return 1/0\n")))
    rc = main(["eval", "--check-grader", "--benchmarks", "humaneval", "--humaneval-file", str(bad), "--out", ""])
    assert rc == 1 and "task HumanEval/1: wrong_answer: ZeroDivisionError" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    helptext = capsys.readouterr().out
    assert "--humaneval-file" in helptext and "--sandbox" in helptext and set(CODE_BENCHMARKS) <= set(
        w.strip(",.():") for w in helptext.split())


def test_cli_rerun_with_other_settings_is_a_clear_error_and_keeps_the_records(shared_data, tiny_model_dir, tmp_path,
                                                                               capsys, one_thread):
    out = tmp_path / "ev.json"
    args = ["eval", "--model", str(tiny_model_dir), "--benchmarks", "mbpp", "--data-dir", str(shared_data), "--limit", "1",
            "--no-progress", "--device", "cpu", "--sandbox-workers", "1", "--out", str(out)]
    assert main(args + ["--max-new-tokens", "4"]) == 0
    records = tmp_path / "ev.code_problems.jsonl"
    before = records.read_text()
    assert main(args + ["--max-new-tokens", "5"]) == 2
    err = capsys.readouterr().err
    assert "gmpo eval: error:" in err and "other settings" in err and "--no-resume" in err
    assert "Traceback" not in err and records.read_text() == before  # nothing lost
