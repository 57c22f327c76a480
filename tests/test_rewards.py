"""Reward functions on hand cases, the registry, and RewardRunner weights / errors / column passing."""
import math

import pytest
import torch

from gmpo.config import RewardSpec
from gmpo.rewards import (
    RewardError,
    RewardRunner,
    arithmetic_answer,
    format_reward,
    get_reward,
    gsm8k_answer,
    math_answer,
    numeric_answer,
    register_reward,
)
from gmpo.rewards.builtin import numbers, single_number


def _score(fn, completions, gold, **kw):
    return fn(["Q?"] * len(completions), completions, answer=[gold] * len(completions), **kw)


# ----------------------------------------------------------------------------------------------
# number extraction

def test_numbers_commas_negatives_decimals():
    assert numbers("5 - 12 = -7") == [5.0, 12.0, -7.0]
    assert numbers("10-3") == [10.0, 3.0]  # binary minus, not -3
    assert numbers("$1,234.50 and 1,2,3") == [1234.5, 1.0, 2.0, 3.0]
    assert numbers("\u22124 degrees") == [-4.0]  # unicode minus
    assert single_number("x = 5") == 5.0 and single_number("\\frac{1}{2}") is None and single_number(None) is None


# ----------------------------------------------------------------------------------------------
# gsm8k_answer

GSM_GOLD = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"


def test_gsm8k_answer_hand_cases():
    completions = [
        "She sold 48 + 24 = 72 clips.",  # last number
        "So the total is \\boxed{72}.",  # boxed
        "The answer is 72.00",  # decimal form of the integer
        "48+24=72\n#### 72",
        "The answer is 71.",
        "72? No wait, it is 70",  # last number is what counts
        "",
    ]
    assert _score(gsm8k_answer, completions, GSM_GOLD) == [1, 1, 1, 1, 0, 0, 0]


def test_gsm8k_answer_commas_negative_decimal_and_symbolic():
    assert _score(gsm8k_answer, ["The answer is $1,000.", "\\boxed{1000}", "1,001"], "#### 1,000") == [1, 1, 0]
    assert _score(gsm8k_answer, ["\\boxed{-3}", "\\boxed{3}", "it drops to -3 degrees"], "#### -3") == [1, 0, 1]
    assert _score(gsm8k_answer, ["2.50", "2.6", "\\boxed{\\frac{5}{2}}"], "#### 2.5") == [1, 0, 1]


def test_gsm8k_answer_bad_gold_is_an_error():
    with pytest.raises(ValueError, match="gsm8k_answer: gold answer .*not a single number"):
        _score(gsm8k_answer, ["5"], "#### five")


# ----------------------------------------------------------------------------------------------
# numeric_answer / arithmetic

def test_numeric_answer_exact_with_tolerance():
    assert _score(numeric_answer, ["72", "The answer is 1,234.", "1234.5"], "1234") == [0, 1, 0]
    assert _score(numeric_answer, ["the answer is -4", "4"], "-4") == [1, 0]
    assert _score(numeric_answer, ["0.5000001", "0.50001", "\\boxed{\\frac{1}{2}}"], 0.5) == [1, 0, 0]
    assert _score(numeric_answer, ["3", "4", "5"], ["3", "4"]) == [1, 1, 0]  # list gold: any of
    assert _score(numeric_answer, ["18"], GSM_GOLD.replace("72", "18")) == [1]  # '#### 18' gold
    with pytest.raises(ValueError, match="numeric_answer: gold answer '1/2' is not a single number"):
        _score(numeric_answer, ["0.5"], "1/2")


def test_arithmetic_requires_final_number_to_be_the_answer():
    got = _score(arithmetic_answer, [
        "20", "13 + 7 = 20", "The answer is 20.", "\\boxed{20}, or maybe 21", "20 5",
        "The answer is 20. Check: 13+7", "21", "",
    ], "20")
    assert got == [1, 1, 1, 0, 0, 0, 0, 0]
    assert _score(arithmetic_answer, ["-7", "5 - 12 = -7", "5 - 12 = 7"], "-7") == [1, 1, 0]


# ----------------------------------------------------------------------------------------------
# math_answer and format

def test_math_answer_equivalence_float_and_list_golds():
    assert _score(math_answer, ["so \\boxed{\\frac{1}{2}}", "\\boxed{0.5}", "\\boxed{3}"], "\\frac12") == [1, 1, 0]
    assert _score(math_answer, ["\\boxed{27}", "The answer is 27", "\\boxed{28}"], 27.0) == [1, 1, 0]
    assert _score(math_answer, ["\\boxed{9.6}", "\\boxed{9.7}"], ["9.6\n"]) == [1, 0]


def test_format_styles_and_patterns():
    assert _score(format_reward, ["\\boxed{5}", "\\boxed{}", "no box", "\\boxed{5"], "") == [1, 0, 0, 0]
    r1 = ["reasoning </think> <answer> 5 </answer>", "</think><answer></answer>", "<answer>5</answer>"]
    assert _score(format_reward, r1, "", style="think_answer") == [1, 0, 0]
    assert _score(format_reward, ["42", "42 apples"], "", pattern=r"^\d+$") == [1, 0]
    with pytest.raises(ValueError, match="unknown style 'xml'"):
        _score(format_reward, ["x"], "", style="xml")
    with pytest.raises(ValueError, match="either pattern or style"):
        _score(format_reward, ["x"], "", style="boxed", pattern="x")
    with pytest.raises(ValueError, match="invalid regex"):
        _score(format_reward, ["x"], "", pattern="(")


def test_conversational_completions_accepted():
    msgs = [[{"role": "assistant", "content": "\\boxed{20}"}]]
    assert arithmetic_answer([[{"role": "user", "content": "What is 13 + 7?"}]], msgs, answer=["20"]) == [1.0]


# ----------------------------------------------------------------------------------------------
# registry

def test_get_reward_builtins_and_errors():
    assert get_reward("arithmetic") is arithmetic_answer and get_reward("format") is format_reward
    with pytest.raises(ValueError, match="unknown reward 'formt' \\(did you mean 'format'\\?\\).*module:function"):
        get_reward("formt")
    with pytest.raises(ValueError, match="cannot import module 'no_such_mod_xyz'.*ModuleNotFoundError"):
        get_reward("no_such_mod_xyz:f")


def test_get_reward_user_module_and_file(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text(
        "def length_reward(prompts, completions, **kw):\n    return [float(len(c)) for c in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = get_reward("my_rewards_mod:length_reward")
    assert fn(["p"], ["abc"]) == [3.0]
    with pytest.raises(ValueError, match="has no 'nope' \\(functions: length_reward\\)"):
        get_reward("my_rewards_mod:nope")
    assert get_reward(f"{tmp_path / 'my_rewards_mod.py'}:length_reward")(["p"], ["ab"]) == [2.0]


def test_register_reward():
    @register_reward("test_always_one_reward")
    def one(prompts, completions, **kw):
        return [1.0] * len(completions)

    assert get_reward("test_always_one_reward") is one
    with pytest.raises(ValueError, match="already registered"):
        register_reward("test_always_one_reward", lambda p, c: [0.0])


# ----------------------------------------------------------------------------------------------
# runner

def test_runner_weighted_sum_and_per_fn():
    runner = RewardRunner([RewardSpec("arithmetic", 1.0), {"name": "format", "weight": 0.5}])
    res = runner(["What is 13 + 7?"] * 3, ["\\boxed{20}", "20", "21"], {"answer": ["20"] * 3})
    assert runner.names == ["arithmetic", "format"]
    assert res.per_fn["arithmetic"].tolist() == [1.0, 1.0, 0.0]
    assert res.per_fn["format"].tolist() == [1.0, 0.0, 0.0]
    assert res.total.dtype == torch.float32 and res.total.tolist() == [1.5, 1.0, 0.0]
    assert res.n_errors == 0


def test_runner_spec_kwargs_and_duplicate_names():
    runner = RewardRunner([RewardSpec("format"), RewardSpec("format", 2.0, {"style": "think_answer"})])
    res = runner(["q"] * 2, ["\\boxed{1}", "x </think> <answer>1</answer>"], {})
    assert runner.names == ["format", "format#2"]
    assert res.total.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="reward 'format' has no option 'patern' \\(options: pattern, style\\)"):
        RewardRunner([RewardSpec("format", 1.0, {"patern": "x"})])


def _boom(prompts, completions, **kw):
    return [1.0 if "boom" not in c else 1 / 0 for c in completions]


def test_runner_raise_names_function_sample_and_excerpt():
    runner = RewardRunner([RewardSpec("arithmetic"), {"name": _boom}])
    comps = ["20", "21", "x" * 300 + " boom"]
    with pytest.raises(RewardError, match=r"reward function '_boom' failed on sample 2 \(completion: 'xxx.*boom'\): ZeroDivisionError") as e:
        runner(["q"] * 3, comps, {"answer": ["20"] * 3})
    assert e.value.fn == "_boom" and e.value.index == 2 and e.value.excerpt.endswith("boom")


def test_runner_zero_mode_scores_zero_and_counts():
    runner = RewardRunner([{"name": _boom, "weight": 2.0}, RewardSpec("arithmetic")], errors="zero")
    res = runner(["q"] * 4, ["20", "boom 20", "21", "boom"], {"answer": ["20"] * 4})
    assert res.per_fn["_boom"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert res.total.tolist() == [3.0, 1.0, 2.0, 0.0]
    assert res.n_errors == 2 and res.errors_by_fn == {"_boom": 2, "arithmetic": 0}


def test_runner_bad_return_values():
    def short(prompts, completions, **kw):
        return [1.0]

    def none_for_second(prompts, completions, **kw):
        return [1.0, None]

    def nan_second(prompts, completions, **kw):
        return [1.0, math.nan]

    for errors in ("raise", "zero"):  # programming errors raise in both modes
        with pytest.raises(RewardError, match="'short' returned 1 scores for 2 completions"):
            RewardRunner([{"name": short}], errors=errors)(["q", "q"], ["a", "b"], {})
        with pytest.raises(RewardError, match="'none_for_second' returned NoneType None for sample 1"):
            RewardRunner([{"name": none_for_second}], errors=errors)(["q", "q"], ["a", "b"], {})
    with pytest.raises(RewardError, match="'nan_second' failed on sample 1.*non-finite reward nan"):
        RewardRunner([{"name": nan_second}])(["q", "q"], ["a", "b"], {})
    res = RewardRunner([{"name": nan_second}], errors="zero")(["q", "q"], ["a", "b"], {})
    assert res.total.tolist() == [1.0, 0.0] and res.n_errors == 1


def test_runner_passes_only_accepted_columns():
    seen = {}

    def named(prompts, completions, answer):  # no **kwargs: gets only `answer`
        seen["named"] = answer
        return [0.0] * len(completions)

    def trl_style(completions, **kwargs):  # TRL style: called by keyword, all columns plus prompts
        seen["trl"] = sorted(kwargs)
        return [float(len(c)) for c in completions]

    cols = {"answer": ["1", "2"], "level": [3, 4]}
    res = RewardRunner([{"name": named}, {"name": trl_style}])(["p1", "p2"], ["a", "bb"], cols)
    assert seen["named"] == ["1", "2"] and seen["trl"] == ["answer", "level", "prompts"]
    assert res.per_fn["trl_style"].tolist() == [1.0, 2.0]

    def needs_solution(prompts, completions, solution):
        return [0.0] * len(completions)

    with pytest.raises(RewardError, match="'needs_solution' needs column\\(s\\) solution.*columns: answer, level"):
        RewardRunner([{"name": needs_solution}])(["p1", "p2"], ["a", "b"], cols)


def test_runner_input_checks():
    with pytest.raises(ValueError, match="errors must be 'raise' or 'zero'"):
        RewardRunner([RewardSpec("format")], errors="ignore")
    with pytest.raises(ValueError, match="column 'answer' has 1 entries for 2 completions"):
        RewardRunner([RewardSpec("format")])(["q", "q"], ["a", "b"], {"answer": ["1"]})
    with pytest.raises(ValueError, match="1 prompts for 2 completions"):
        RewardRunner([RewardSpec("format")])(["q"], ["a", "b"], {})
    with pytest.raises(ValueError, match="weight must be a finite number"):
        RewardRunner([RewardSpec("format", float("nan"))])


# ----------------------------------------------------------------------------------------------
# issue 16 defect 4: the single-number shortcut is for plain numbers only

@pytest.mark.parametrize("completion,score", [
    ("\\boxed{\\sqrt{72}}", 0), ("\\boxed{72!}", 0), ("\\boxed{x^{72}}", 0), ("\\boxed{\\log 72}", 0),
    ("\\boxed{72^{2}}", 0), ("\\boxed{-72}", 0), ("\\boxed{72\\%}", 1), ("72 percent", 1),
    ("\\boxed{\\sqrt{5184}}", 1), ("\\boxed{\\frac{144}{2}}", 1), ("\\boxed{8 \\cdot 9}", 1),
    ("\\boxed{72}", 1), ("\\boxed{72.0}", 1), ("\\boxed{+72}", 1), ("\\boxed{\\$72}", 1), ("The answer is $72.", 1),
    ("\\boxed{72 \\text{ clips}}", 1), ("The answer is 72 clips.", 1), ("\\boxed{x = 72}", 1),
])
def test_gsm8k_answer_single_number_shortcut_only_for_plain_numbers(completion, score):
    assert _score(gsm8k_answer, [completion], "#### 72") == [score]


def test_plain_number():
    from gmpo.rewards.builtin import plain_number

    for text, value in [("72", 72.0), ("-3", -3.0), ("+4.5", 4.5), ("1,000", 1000.0), ("$1,200", 1200.0),
                        ("\\$18", 18.0), ("18 dollars", 18.0), ("12 km/h", 12.0), ("72 \\text{ clips}", 72.0),
                        ("x = 5", 5.0), ("\u22127", -7.0), (".5", 0.5), ("3.", 3.0),
                        ("25\\%", 25.0), ("25%", 25.0)]:
        assert plain_number(text) == value, text
    for text in ["\\sqrt{72}", "72!", "x^{72}", "\\log 72", "2 pi", "3 or 4", "1,2,3", "10^{3}", "",
                 None, "2x = 72", "72 clips and 3 pears", "\\frac{1}{2}", "e^{2}"]:
        assert plain_number(text) is None, text


def test_numeric_answer_takes_plain_numbers_only():
    got = _score(numeric_answer, ["\\boxed{\\sqrt{72}}", "\\boxed{72!}", "\\boxed{72}", "72 clips"], "72")
    assert got == [0, 0, 1, 1]


# ----------------------------------------------------------------------------------------------
# the registry: entries next to the code, with their options (issue 16 item 4)

def test_available_lists_every_builtin_with_help_and_options():
    from gmpo.rewards import available, describe

    info = available()
    assert list(info)[:5] == ["math_answer", "gsm8k_answer", "numeric_answer", "arithmetic", "format"]
    assert {"code_tests", "code_format"} <= set(info)  # registered by gmpo.rewards.code
    for name in ["math_answer", "gsm8k_answer", "numeric_answer", "arithmetic", "format", "code_tests", "code_format"]:
        entry = info[name]
        assert entry["help"] and "\n" not in entry["help"] and "``" not in entry["help"], name
    assert info["math_answer"]["options"] == {"timeout": {"default": 1.0, "help": info["math_answer"]["options"]
                                                          ["timeout"]["help"]}}
    assert "seconds" in info["math_answer"]["options"]["timeout"]["help"]
    assert set(info["format"]["options"]) == {"pattern", "style"} and info["numeric_answer"]["options"] == {}
    assert info["code_tests"]["options"]["timeout"]["default"] == 10.0  # from its reward_options marker
    assert "math_answer(timeout=1.0): 1.0 when" in describe()


def test_registered_reward_with_options_is_checked_when_the_runner_is_built():
    from gmpo.rewards import available, check_spec, reward_options

    def check(kw):
        if kw.get("target", 1) < 0:
            raise ValueError(f"target must be >= 0, got {kw['target']}")

    @register_reward("test_len_target", options={"target": "wanted length in characters"}, validate=check)
    def len_target(prompts, completions, target: int = 3, **columns):
        """1.0 when the completion has ``target`` characters."""
        return [float(len(c) == target) for c in completions]

    assert available()["test_len_target"] == {"help": "1.0 when the completion has target characters.",
                                              "options": {"target": {"default": 3,
                                                                     "help": "wanted length in characters"}}}
    assert reward_options("test_len_target") == {"target": "wanted length in characters"}
    res = RewardRunner([{"name": "test_len_target", "kwargs": {"target": 2}}])(["q"] * 2, ["ab", "abc"], {})
    assert res.total.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="reward 'test_len_target' has no option 'taget' \\(options: target\\)"):
        RewardRunner([{"name": "test_len_target", "kwargs": {"taget": 2}}])
    with pytest.raises(ValueError, match="reward 'test_len_target': target must be >= 0, got -1"):
        check_spec("test_len_target", {"target": -1})
    with pytest.raises(ValueError, match="options \\['nope'\\] are not parameters of"):
        register_reward("test_bad_options", lambda prompts, completions: [0.0], options=("nope",))
    with pytest.raises(ValueError, match="reward name must be a non-empty string without ':'"):
        register_reward("a:b", len_target)


def test_builtin_option_values_are_checked_at_config_time():
    with pytest.raises(ValueError, match="reward 'math_answer': timeout must be a positive number of seconds, got 0"):
        RewardRunner([RewardSpec("math_answer", 1.0, {"timeout": 0})])
    with pytest.raises(ValueError, match="reward 'gsm8k_answer': timeout must be a positive"):
        RewardRunner([RewardSpec("gsm8k_answer", 1.0, {"timeout": "fast"})])
    with pytest.raises(ValueError, match="reward 'format': format: invalid regex"):
        RewardRunner([RewardSpec("format", 1.0, {"pattern": "("})])
    with pytest.raises(ValueError, match="reward 'format': format: unknown style 'xml'"):
        RewardRunner([RewardSpec("format", 1.0, {"style": "xml"})])
    assert RewardRunner([RewardSpec("math_answer", 1.0, {"timeout": 0.5})]).names == ["math_answer"]


def test_listing_rewards_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, gmpo.rewards as r; names = list(r.available()); "
            "print(len(names), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    n, torch_loaded = out.stdout.split()
    assert int(n) >= 7 and torch_loaded == "False"
