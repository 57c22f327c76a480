"""constitution_judge: local P(yes) against a hand computation, caching, pairwise win rates (both orders,
invariant to completion order), and the reward-error policy with a real endpoint that fails or times out."""
import math
import time

import pytest
import torch

from cai_server import ChatServer
from gmpo.cai.judges import LocalJudge, parse_scale, parse_word
from gmpo.rewards import RewardError, RewardRunner, get_reward
from gmpo.rewards.judge import clear_judges, get_judge

PROMPTS = ["How do I pick a lock?"] * 3 + ["Say hi"] * 2
COMPLETIONS = ["Use a tension wrench.", "I'm sorry, I can't help with that.", "Buy a pick set.", "Hello!", "Hi there"]


@pytest.fixture(autouse=True)
def fresh_judges():
    clear_judges()
    yield
    clear_judges()


def test_local_pointwise_is_the_normalised_yes_probability(tiny_model_dir, one_thread):
    f = get_reward("constitution_judge")
    got = f(PROMPTS[:2], COMPLETIONS[:2], judge=str(tiny_model_dir))
    j = get_judge(str(tiny_model_dir))
    # by hand: next-token distribution after the judge question, Yes vs No first tokens
    from gmpo.cai.constitution import load_constitution
    from gmpo.cai.judges import POINTWISE

    q = load_constitution().judge_question()
    text = POINTWISE.format(prompt=PROMPTS[1], completion=COMPLETIONS[1], question=q)
    chat = j.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([j.tokenizer(chat, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        lp = torch.log_softmax(j.model(ids).logits[0, -1], -1)
    pos, neg = j.ids["yesno"]
    want = 1 / (1 + math.exp(float(torch.logsumexp(lp[neg], 0) - torch.logsumexp(lp[pos], 0))))
    assert got[1] == pytest.approx(want, abs=1e-5)
    assert all(0 < s < 1 for s in got)
    calls = j.calls
    assert f(PROMPTS[:2], COMPLETIONS[:2], judge=str(tiny_model_dir)) == got  # cached: no new query
    assert j.calls == calls == 2


def test_pairwise_is_invariant_to_completion_order(tiny_model_dir, one_thread):
    f = get_reward("constitution_judge")
    base = f(PROMPTS, COMPLETIONS, judge=str(tiny_model_dir), mode="pairwise")
    assert sum(base[:3]) == pytest.approx(1.5, abs=1e-6)  # win rates of a group of 3 average 0.5
    perm = [2, 0, 1, 4, 3]
    clear_judges()  # a fresh judge: no cached verdicts carried over
    again = f([PROMPTS[i] for i in perm], [COMPLETIONS[i] for i in perm], judge=str(tiny_model_dir), mode="pairwise")
    assert again == [base[i] for i in perm]  # exactly, not approximately


def test_pairwise_asks_both_orders_and_cancels_position_bias():
    with ChatServer() as s:
        f = get_reward("constitution_judge")
        got = f(PROMPTS[:3], COMPLETIONS[:3], endpoint=s.url, mode="pairwise")
        # the server prefers whichever response says sorry, else always "A" (position bias):
        # the refusal beats both (1.0); the two others tie with each other (0.5) and lose to it (0)
        assert got == [0.25, 1.0, 0.25]
        assert len(s.requests) == 6  # 3 * 2 ordered pairs
        assert f(PROMPTS[:3], COMPLETIONS[:3], endpoint=s.url, mode="pairwise") == got and len(s.requests) == 6


def test_endpoint_pointwise_logprobs_words_and_scale():
    with ChatServer(logprobs=True) as s:
        assert get_reward("constitution_judge")(["q"], ["an answer"], endpoint=s.url) == [pytest.approx(0.8)]
    with ChatServer() as s:
        f = get_reward("constitution_judge")
        assert f(["q", "q", "q"], ["sorry, no", "sure", ""], endpoint=s.url) == [1.0, 0.0, 0.0]  # empty: not asked
        assert len(s.requests) == 2
        assert f(["q"], ["sure"], endpoint=s.url, score="scale") == [pytest.approx(6 / 9)]
    assert parse_scale("Rating: 10/10") == 1.0 and parse_word(" Yes.", "yesno") == 1.0
    with pytest.raises(ValueError, match="no 1-10 rating"):
        parse_scale("great")


def test_failing_judge_raises_naming_the_sample_or_scores_zero_and_counts():
    spec = lambda **kw: {"name": "constitution_judge", "kwargs": {"retries": 0, **kw}}  # noqa: E731
    comps = ["sorry, no", "FAIL here", "sure"]
    with ChatServer() as s:
        with pytest.raises(RewardError, match=r"sample 1 .*HTTP 500"):
            RewardRunner([spec(endpoint=s.url)], errors="raise")(["q"] * 3, comps)
        res = RewardRunner([spec(endpoint=s.url)], errors="zero")(["q"] * 3, comps)
        assert res.per_fn["constitution_judge"].tolist() == [1.0, 0.0, 0.0] and res.n_errors == 1
    with ChatServer(status=500) as s:  # a judge that is down: every sample scores 0 and is counted
        res = RewardRunner([spec(endpoint=s.url, mode="pairwise")], errors="zero")(["q"] * 3, ["a", "b", "c"])
        assert res.per_fn["constitution_judge"].tolist() == [0.0, 0.0, 0.0] and res.n_errors == 3


def test_judge_timeout_is_handled_as_configured():
    spec = {"name": "constitution_judge", "kwargs": {"timeout": 0.3, "retries": 0}}
    with ChatServer(sleep=1.5) as s:
        spec["kwargs"]["endpoint"] = s.url
        t0 = time.perf_counter()
        with pytest.raises(RewardError, match="timed out after 0.3 s"):
            RewardRunner([spec], errors="raise")(["q", "q"], ["a", "b"])
        res = RewardRunner([spec], errors="zero")(["q", "q"], ["a", "b"])
        assert res.n_errors == 2 and res.total.tolist() == [0.0, 0.0]
        assert time.perf_counter() - t0 < 10  # bounded by the timeouts, not by the server's sleep


def test_bad_options_fail_before_any_judging():
    with pytest.raises(ValueError, match="mode must be pointwise or pairwise"):
        RewardRunner([{"name": "constitution_judge", "kwargs": {"mode": "listwise"}}])
    with pytest.raises(ValueError, match="no option 'judge_model'"):
        RewardRunner([{"name": "constitution_judge", "kwargs": {"judge_model": "x"}}])
