"""gmpo ab report: published interval values, simulated experiments with fixed seeds (0.60 vs 0.70 at 1,000
requests per arm is detected; equal arms are not, and the false-positive rate over repeated simulations is
near the nominal 5%), sample-ratio mismatch, the paired McNemar test, the CLI's markdown/JSON/figure."""
import json
import sqlite3

import numpy as np
import pytest

from gmpo.cli import main
from gmpo.serve import abstats
from gmpo.serve.reqlog import RequestLog
from gmpo.serve.router import Arm, Experiment


def simulate(db, p_control, p_cand, n_control=1000, n_cand=1000, seed=0, shared_prompts=False, exact=False):
    """Write an experiment's requests into a request log: quality 1/0 drawn with the arms' success rates
    (``exact``: exactly round(p * n) successes)."""
    rng = np.random.default_rng(seed)
    exp = Experiment("policy", [Arm("stable", "m0", 0.5), Arm("cand", "m1", 0.5)], control="stable")
    log = RequestLog(db)
    log.experiment(exp.id, exp.config_json())
    k = 0
    for arm, p, n, lat in (("stable", p_control, n_control, 0.50), ("cand", p_cand, n_cand, 0.60)):
        for i in range(n):
            q = float(i < round(p * n)) if exact else float(rng.random() < p)
            log.request(id=f"r{k}", ts=1000.0 + k, experiment=exp.id, arm=arm, assigned_arm=arm, model=arm,
                        endpoint="chat", n=1, status=200, finish_reason="stop", quality=q, scores={"x": q},
                        latency_s=float(rng.gamma(4.0, lat / 4.0)), fallback=0,
                        prompt=f"prompt {i}" if shared_prompts else f"prompt {arm} {i}")
            k += 1
    log.close()
    return exp.id


def test_published_interval_values():
    # Newcombe (1998), Statistics in Medicine 17:857: Wilson 81/263 and the hybrid score (method 10) interval
    # of 56/70 - 48/80
    assert abstats.wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    c = abstats.compare_rates(48, 80, 56, 70)
    assert (c.diff, c.ci_low, c.ci_high) == pytest.approx((0.2, 0.0524, 0.3339), abs=1e-4)


def test_report_detects_060_vs_070(tmp_path, capsys):
    db = tmp_path / "requests.db"
    exp_id = simulate(db, 0.60, 0.70, seed=1)
    assert main(["ab", "report", "--db", str(db), "--out", str(tmp_path / "out"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["experiment"] == exp_id and rep["arms"]["stable"]["measured"] == 1000
    c = rep["comparisons"][0]
    assert c["arm"] == "cand" and 0.05 < c["diff"] < 0.15 and c["ci_low"] > 0 and c["p_value"] < 0.001
    assert rep["recommendation"].startswith("ship cand: cand is better than stable")
    assert rep["srm"]["mismatch"] is False
    assert c["latency"]["b"]["median"] > c["latency"]["a"]["median"] and c["latency"]["p_value"] < 0.001
    md = (tmp_path / "out" / "report.md").read_text()
    assert "95% Wilson CI" in md and "Newcombe" in md and "**Recommendation:** ship cand" in md
    assert (tmp_path / "out" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "out" / "report.json").read_text())["comparisons"][0]["diff"] == c["diff"]


def test_report_on_equal_arms_detects_nothing(tmp_path, capsys):
    db = tmp_path / "requests.db"
    simulate(db, 0.65, 0.65, seed=2)
    assert main(["ab", "report", "--db", str(db), "--experiment", "policy"]) == 0
    out = capsys.readouterr().out
    assert "**Recommendation:** " in out and "ship" not in out.split("**Recommendation:**")[1]
    exp_id, config, rows = __import__("gmpo.serve.abreport", fromlist=["load"]).load(db)
    from gmpo.serve.abreport import analyse

    assert analyse(exp_id, config, rows)["comparisons"][0]["p_value"] > 0.05


def test_false_positive_rate_is_near_nominal_and_power_is_high():
    rng = np.random.default_rng(1234)
    sims, n = 2000, 1000
    same = abstats.score_test(rng.binomial(n, 0.65, sims), n, rng.binomial(n, 0.65, sims), n)
    fp = float(np.mean(same < 0.05))
    assert 0.038 <= fp <= 0.062  # nominal 0.05; +-2.5 standard errors of 2000 simulations is about +-0.012
    differ = abstats.score_test(rng.binomial(n, 0.60, sims), n, rng.binomial(n, 0.70, sims), n)
    assert float(np.mean(differ < 0.05)) >= 0.97  # the design's power at this effect is ~0.99
    assert abstats.score_test(600, 1000, 700, 1000) == pytest.approx(abstats.compare_rates(600, 1000, 700, 1000).p_value)


def test_sample_ratio_mismatch_blocks_a_decision(tmp_path, capsys):
    db = tmp_path / "requests.db"
    simulate(db, 0.60, 0.70, n_control=1000, n_cand=800, seed=3)
    assert main(["ab", "report", "--db", str(db), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["srm"]["mismatch"] and rep["srm"]["p_value"] < 1e-5
    assert rep["recommendation"].startswith("do not decide")


def test_small_samples_warn_how_many_requests_are_needed(tmp_path, capsys):
    db = tmp_path / "requests.db"
    simulate(db, 0.60, 0.70, n_control=60, n_cand=60, exact=True)  # 36/60 vs 42/60
    assert main(["ab", "report", "--db", str(db), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    c = rep["comparisons"][0]
    assert c["p_value"] > 0.2 and c["diff"] == pytest.approx(0.1)
    assert rep["recommendation"].startswith("inconclusive") and "needs about 356 requests per arm" in rep["recommendation"]
    assert c["required_n"] == pytest.approx(abstats.required_n(c["p_a"], c["p_b"]))
    assert abstats.required_n(0.6, 0.7) == pytest.approx(355.6, abs=1)  # Cohen's h = 0.2102


def test_paired_prompts_use_mcnemar():
    pairs = [(1, 1)] * 50 + [(0, 1)] * 30 + [(1, 0)] * 5 + [(0, 0)] * 15
    res = abstats.compare_paired(pairs)
    # 35 discordant pairs: chi-square with continuity correction, (|30 - 5| - 1)^2 / 35 = 16.457 -> p = 4.98e-5
    assert res["table"] == [[15, 30], [5, 50]] and not res["exact"]
    assert res["p_value"] == pytest.approx(4.976e-5, rel=1e-3)


def test_report_pairs_shared_prompts_and_reads_the_log_read_only(tmp_path, capsys):
    db = tmp_path / "requests.db"
    simulate(db, 0.60, 0.70, n_control=200, n_cand=200, seed=5, shared_prompts=True)
    before = db.read_bytes()
    assert main(["ab", "report", "--db", str(db), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["comparisons"][0]["paired"]["pairs"] == 200
    assert db.read_bytes() == before
    assert main(["ab", "report", "--db", str(tmp_path / "missing.db")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["ab", "report", "--db", str(db), "--experiment", "nope"]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 400
