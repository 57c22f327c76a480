"""pass@k against a brute-force count over all k-subsets; mean@K; the markdown table."""
import itertools
import math

import pytest

from gmpo.eval.metrics import average, ks_for, markdown_table, pass_at_k, primary_metric, summarize


def brute_pass_at_k(verdicts, k):
    subsets = list(itertools.combinations(range(len(verdicts)), k))
    return sum(any(verdicts[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_pass_at_k_equals_brute_force(n):
    for c in range(n + 1):
        verdicts = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(verdicts, k), abs=1e-12)


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)  # 1 - C(2,2)/C(4,2)
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(200, 10, 100) == pytest.approx(1 - math.comb(190, 100) / math.comb(200, 100))
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_ks_and_primary_metric():
    assert ks_for(1) == [1]
    assert ks_for(8) == [1, 2, 4, 8]
    assert ks_for(6) == [1, 2, 4]
    assert primary_metric(1) == "pass@1" and primary_metric(8) == "mean@8"


def test_summarize_greedy_and_sampled():
    assert summarize([[True], [False], [True], [True]], 1) == {"pass@1": 0.75}
    v = [[True, False, False, False], [True, True, False, False], [False] * 4]
    m = summarize(v, 4)
    assert m["mean@4"] == pytest.approx(3 / 12)
    assert m["pass@1"] == pytest.approx(3 / 12)  # unbiased pass@1 is the mean
    assert m["pass@2"] == pytest.approx((0.5 + 5 / 6 + 0) / 3)
    assert m["pass@4"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="expected 4 verdicts"):
        summarize([[True]], 4)


def test_table_and_average():
    per = {"gsm8k": {"pass@1": 0.25}, "math500": {"pass@1": 0.5}}
    assert average(per) == {"pass@1": 0.375}
    table = markdown_table(per, {"gsm8k": 4, "math500": 2})
    assert table.splitlines() == [
        "| benchmark | n | pass@1 |",
        "|---|---:|---:|",
        "| gsm8k | 4 | 25.0 |",
        "| math500 | 2 | 50.0 |",
        "| **average** | 6 | 37.5 |",
    ]
