"""code_tests / code_format: extraction, real sandboxed runs, hacks that must not score, step metrics."""
from __future__ import annotations

import json

import pytest

from gmpo.rewards import RewardRunner, get_reward
from gmpo.rewards.code import OUTCOMES, code_blocks, code_format, code_tests, extract_code

FENCE = "```"


def fenced(code: str, lang: str = "python") -> str:
    return f"Here is my solution:\n{FENCE}{lang}\n{code}\n{FENCE}\nIt works."


ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"]


def test_extract_code_picks_blocks():
    two = f"{FENCE}python\ndef helper():\n    pass\n{FENCE}\ntext\n{FENCE}\ndef add(a, b):\n    return a + b\n{FENCE}"
    assert extract_code(two) == "def add(a, b):\n    return a + b\n"
    assert extract_code(two, block="first") == "def helper():\n    pass\n"
    assert "helper" in extract_code(two, block="all") and "add" in extract_code(two, block="all")
    # the block defining the task's function wins over a later usage example
    usage = f"{FENCE}python\ndef add(a, b):\n    return a + b\n{FENCE}\nUsage:\n{FENCE}python\nprint(add(1, 2))\n{FENCE}"
    assert extract_code(usage, entry_point="add").startswith("def add")
    assert extract_code(usage).startswith("print")
    # other languages are not programs; an unclosed fence (truncated completion) runs to the end
    assert code_blocks(f"{FENCE}bash\nrm -rf /\n{FENCE}") == []
    assert extract_code(f"{FENCE}python\ndef add(a, b):\n    return a + b") == "def add(a, b):\n    return a + b"
    # no fence: the whole completion (HumanEval-style continuation), unless a fence is required
    assert extract_code("    return a + b\n") == "    return a + b\n"
    assert extract_code("no code here", require_fence=True) is None
    assert extract_code("   \n") is None
    with pytest.raises(ValueError, match="last, first or all"):
        extract_code("x", block="middle")


def test_code_format():
    comps = [fenced("x = 1"), f"{FENCE}python\nx = 1", "x = 1", f"{FENCE}python\n\n{FENCE}", fenced("ls", "bash")]
    assert code_format(None, comps) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert code_format(None, comps, require_closed=False) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert get_reward("code_format") is code_format and get_reward("code_tests") is code_tests


def test_code_tests_outcomes_and_metrics():
    comps = [
        fenced("def add(a, b):\n    return a + b"),  # passed
        fenced("def add(a, b):\n    return a + b if a != 10 else 0"),  # 2 of 3
        fenced("def add(a, b) return a + b"),  # compile error
        fenced("raise RuntimeError('at import')\ndef add(a, b):\n    return a + b"),  # runtime error
        fenced("def add(a, b):\n    while True:\n        pass"),  # timeout
        "I do not know.",  # no fence: the prose is the program -> compile error
        fenced("x = ' ' * (1 << 34)"),  # memory
    ]
    scores = code_tests(["p"] * len(comps), comps, test_list=[ADD_TESTS] * len(comps), timeout=2.0, memory_mb=256)
    assert scores == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    outs = [o.outcome for o in code_tests.last_outcomes]
    assert outs == ["passed", "wrong_answer", "compile_error", "runtime_error", "timeout", "compile_error", "memory"]
    assert code_tests.last_outcomes[1].passed == 2 and code_tests.last_outcomes[1].total == 3
    m = code_tests.last_metrics
    assert set(m) == {f"status/{k}" for k in OUTCOMES} | {"tests_passed_frac", "exec_s"}
    assert (m["status/passed"], m["status/wrong_answer"], m["status/compile_error"], m["status/timeout"]) == (1, 1, 2, 1)
    assert m["tests_passed_frac"] == pytest.approx(5 / 21)
    # fraction mode gives partial credit
    frac = code_tests(["p"] * 2, comps[:2], test_list=[ADD_TESTS] * 2, mode="fraction")
    assert frac == pytest.approx([1.0, 2 / 3])


def test_exit_early_and_forged_results_do_not_score():
    hacks = [
        fenced("import sys\nsys.exit(0)"),  # caught by the harness: an error at import
        fenced("import os\nos._exit(0)"),  # the harness never reports: no result
        fenced("def add(a, b):\n    return 0\nimport atexit, os\natexit.register(lambda: os._exit(0))"),
        # a forged result file without the per-run key
        fenced("import json, os\nopen('.result', 'w').write(json.dumps({'stage': 'tests', 'passed': [True] * 3, "
               "'error': ''}) + '\\n' + '0' * 64)\nos._exit(0)"),
        # rewrite the result after the harness signs it: the harness exits at once, leaving no time
        fenced("import threading, time\ndef add(a, b):\n    return a + b\n"
               "def w():\n    time.sleep(0.01)\n    open('.result', 'w').write('forged')\n"
               "threading.Thread(target=w, daemon=True).start()"),
        fenced("def add(a, b):\n    return a + b\nimport builtins\nbuiltins.AssertionError = None"),
    ]
    scores = code_tests(["p"] * len(hacks), hacks, tests=[ADD_TESTS] * len(hacks), timeout=5.0)
    outs = [o.outcome for o in code_tests.last_outcomes]
    assert scores[:4] == [0.0] * 4, outs
    assert outs[:4] == ["runtime_error", "no_result", "wrong_answer", "no_result"]
    assert outs[4] == "passed" and scores[4] == 1.0  # a correct solution with a useless thread still passes
    assert outs[5] == "passed"  # rebinding a builtin name does not change `assert` itself


def test_mbpp_rows_with_setup_code(shared_data):
    rows = {json.loads(line)["task_id"]: json.loads(line) for line in open(shared_data / "mbpp.jsonl")}
    picked = [rows[2], rows[367], rows[927]]  # 367 and 927 need test_setup_code (trees built after the class)
    comps = [fenced(r["code"]) for r in picked]
    cols = {"test_list": [r["test_list"] for r in picked], "test_setup_code": [r["test_setup_code"] for r in picked]}
    assert code_tests(["p"] * 3, comps, **cols) == [1.0, 1.0, 1.0]
    # without the setup code the tree tests cannot run
    no_setup = code_tests(["p"], comps[1:2], test_list=cols["test_list"][1:2])
    assert no_setup == [0.0] and code_tests.last_outcomes[0].outcome == "wrong_answer"


def test_humaneval_columns_and_prefix():
    test = "def check(candidate):\n    assert candidate([1, 2, 3]) == 6\n    assert candidate([]) == 0\n"
    prompt = "from typing import List\n\ndef total(xs: List[int]) -> int:\n    \"\"\"Sum.\"\"\"\n"
    comps = ["    return sum(xs)\n", "    return len(xs)\n"]
    scores = code_tests([prompt] * 2, comps, test=[test] * 2, entry_point=["total"] * 2, code_prefix=[prompt] * 2)
    assert scores == [1.0, 0.0]


def test_through_the_reward_runner():
    runner = RewardRunner([{"name": "code_tests", "kwargs": {"mode": "fraction", "timeout": 5.0}},
                           {"name": "code_format", "weight": 0.5}])
    comps = [fenced("def add(a, b):\n    return a + b"), "def add(a, b): return 3"]
    res = runner(["p", "p"], comps, {"tests": [ADD_TESTS] * 2})
    assert res.per_fn["code_tests"].tolist() == pytest.approx([1.0, 1 / 3])
    assert res.total.tolist() == pytest.approx([1.5, 1 / 3])
    with pytest.raises(ValueError, match="no option 'modes'"):
        RewardRunner([{"name": "code_tests", "kwargs": {"modes": "all"}}])
    with pytest.raises(ValueError, match="needs a 'tests'"):
        code_tests(["p"], ["x"], answer=["1"])
    with pytest.raises(ValueError, match="mode must be"):
        code_tests(["p"], ["x"], tests=[ADD_TESTS], mode="some")


def test_recipe_trains_one_step_with_the_code_reward(shared_data, tok, model, one_thread, tmp_path):
    """configs/mbpp_gmpo.yaml on the tiny model: MBPP train prompts, the sandboxed reward, held-out pass@1."""
    from pathlib import Path

    from gmpo.config import load_config
    from gmpo.eval.code import code_dataset
    from gmpo.train import GMPOTrainer

    recipe = Path(__file__).resolve().parents[1] / "configs" / "mbpp_gmpo.yaml"
    cfg = load_config(recipe, ["train.steps=1", "rollout.prompts_per_step=2", "rollout.group_size=2",
                               "rollout.max_new_tokens=8", "train.micro_batch_size=4", "eval.every=0", "data.max_prompt_tokens=0",
                               "eval.at_start=false", "data.eval_size=2", "log.print_every=0",
                               f"train.output_dir={tmp_path / 'run'}", "train.save_every=0"])
    assert [r.name for r in cfg.rewards] == ["code_tests", "code_format"]
    train = code_dataset(str(shared_data / "mbpp.jsonl"), "train")
    held = code_dataset(str(shared_data / "mbpp.jsonl"), "validation")
    assert (train[0]["task_id"], len(train), len(held)) == ("601", 374, 90)
    tr = GMPOTrainer(model, tok, cfg, train_dataset=train, eval_dataset=held)
    metrics = tr.step()
    summary = tr.close()
    assert "reward/code_tests/mean" in metrics and metrics["reward/code_tests/mean"] == 0.0  # random weights
    status = {k: v for k, v in metrics.items() if k.startswith("reward/code_tests/status/")}
    assert sum(status.values()) == 4  # every completion of the step counted by outcome in the step metrics
    assert sum(v for k, v in code_tests.last_metrics.items() if k.startswith("status/")) == 2  # the 2 held-out
    assert summary["steps"] == 1 and summary["eval_after"] == 0.0


def test_code_sources_load_through_the_data_path(shared_data):
    """data.dataset may name MBPP: the one data loader routes code sources to their loader (tests as columns)."""
    from gmpo.data.sources import load_prompts

    ds = load_prompts(str(shared_data / "mbpp.jsonl"), "train")
    assert len(ds) == 374 and {"prompt", "answer", "tests", "entry_point"} <= set(ds.column_names)
