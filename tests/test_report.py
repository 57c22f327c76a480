"""Report: table numbers from synthetic metrics.jsonl files checked by hand, figures, offline HTML, screenshot."""
import json
import math
from pathlib import Path

import pytest
import yaml

from gmpo.report import write_report
from gmpo.report.html import find_chromium, screenshot
from gmpo.report.table import build_table, load_run, moving_average, run_stats, steps_to_target
from gmpo.runs.files import read_metrics


def write_run(d: Path, recs, alerts=(), config=None):
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    if alerts:
        (d / "alerts.jsonl").write_text("".join(json.dumps(a) + "\n" for a in alerts))
    if config is not None:
        (d / "config.yaml").write_text(yaml.safe_dump(config))
    return d


def rec(step, loss, gn, hi, lo, rew, **extra):
    return {"step": step, "loss/value": loss, "grad/norm": gn, "ratio/token_max": hi, "ratio/token_min": lo,
            "reward/mean": rew, "policy/entropy": 1.0 - 0.1 * step, "policy/kl": 0.01 * step, **extra}


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    a = write_run(root / "gmpo-s0", [
        {"step": 0, "eval/accuracy": 0.1},
        rec(1, 1.0, 1.0, 1.1, 0.9, 0.1), rec(2, 2.0, 1.0, 1.2, 0.8, 0.3),
        rec(3, 3.0, 1.0, 1.3, 0.95, 0.6), rec(4, 4.0, 1.0, 1.2, 0.9, 0.7, **{"eval/accuracy": 0.4})],
        alerts=[{"step": 2, "detector": "entropy_collapse", "action": "warn"},
                {"step": 3, "detector": "nonfinite", "action": "skip"}])
    b = write_run(root / "gmpo-s1", [
        rec(1, 2.0, 1.0, 2.0, 0.5, 0.5), rec(2, 2.0, 3.0, 1.0, 1.0, 0.6),
        rec(3, 2.0, 1.0, 1.0, 1.0, 0.6), rec(4, 2.0, 3.0, 1.0, 1.0, 0.6, **{"eval/accuracy": 0.6})])
    # grpo seed 0 was rolled back after step 3 to step 1: the abandoned steps 2-3 come first in the file
    c = write_run(root / "grpo-s0", [
        rec(1, 1.0, 2.0, 3.0, 0.5, 0.0), rec(2, 50.0, 90.0, 99.0, 0.01, 0.0), rec(3, 70.0, 90.0, 99.0, 0.01, 0.0),
        rec(2, 3.0, 2.0, 3.0, 0.5, 0.2), rec(3, 5.0, 2.0, 3.0, 0.5, 0.4), rec(4, 7.0, 2.0, 3.0, 0.5, 0.6)],
        alerts=[{"step": 3, "detector": "grad_spike", "action": "rollback"}])
    # a directory name that says nothing: algorithm and seed come from config.yaml
    d = write_run(root / "whatever", [
        rec(1, 0.0, 4.0, 4.0, 0.25, 0.0), rec(2, 0.0, 4.0, 4.0, 0.25, 0.1)],
        config={"algorithm": {"loss": "grpo"}, "train": {"seed": 1}})
    return [a, b, c, d]


def test_load_keeps_last_record_per_step_and_labels(runs, tmp_path):
    recs = read_metrics(runs[2] / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert [r["loss/value"] for r in recs] == [1.0, 3.0, 5.0, 7.0]
    r = load_run(runs[3])
    assert (r.algo, r.seed) == ("grpo", 1)
    r = load_run(runs[0])
    assert (r.algo, r.seed, r.n_alerts, r.alerts_by_action) == ("gmpo", 0, 2, {"warn": 1, "skip": 1})
    with open(runs[1] / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss/va')  # a torn last line is ignored
    assert len(read_metrics(runs[1] / "metrics.jsonl")) == 4
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        load_run(tmp_path)


def test_per_run_stats_by_hand(runs):
    s = run_stats(load_run(runs[0]), target=0.5)
    assert s["loss_var"] == pytest.approx(1.25)  # 1,2,3,4 -> mean 2.5, squared deviations 2.25+.25+.25+2.25 / 4
    assert s["grad_norm_std"] == 0.0
    assert s["ratio_range"] == pytest.approx(1.3 / 0.8)
    assert s["steps_to_target"] == 3
    assert (s["guard_events"], s["interventions"], s["final_accuracy"]) == (2.0, 1.0, 0.4)
    s = run_stats(load_run(runs[2]), target=0.5)
    assert s["loss_var"] == pytest.approx(5.0)  # 1,3,5,7 after the rollback dedupe
    assert s["ratio_range"] == pytest.approx(6.0)  # the abandoned 99 / 0.01 steps are not on the trajectory
    assert s["steps_to_target"] == 4 and s["final_accuracy"] is None
    # smoothing: rewards .1 .3 .6 .7 -> 2-step trailing means .1 .2 .45 .65 -> target .5 first at step 4
    assert moving_average([0.1, 0.3, 0.6, 0.7], 2) == pytest.approx([0.1, 0.2, 0.45, 0.65])
    assert steps_to_target(load_run(runs[0]), 0.5, smooth=2) == 4


def test_table_mean_std_over_seeds(runs):
    t = build_table([load_run(r) for r in runs], target=0.5)
    assert t.algos == ["gmpo", "grpo"] and t.seeds == {"gmpo": [0, 1], "grpo": [0, 1]}
    g = t.cells["gmpo"]
    # loss var 1.25 and 0 -> mean .625, sample std .625 * sqrt(2) = .884
    assert g["loss_var"] == "0.625 ± 0.884"
    assert g["grad_norm_std"] == "0.5 ± 0.707"  # 0 and 1
    assert g["ratio_range"] == "2.81 ± 1.68"  # 1.625 and 4 -> mean 2.8125, std 1.679
    assert g["steps_to_target"] == "2.0 ± 1.4"  # 3 and 1
    assert g["guard_events"] == "1.0 ± 1.4" and g["interventions"] == "0.5 ± 0.7"
    assert g["final_accuracy"] == "0.500 ± 0.141"
    r = t.cells["grpo"]
    assert r["steps_to_target"] == "4.0 (1/2 reached)"  # seed 1 never reaches .5: said, not hidden
    assert r["final_accuracy"] == "n/a"
    t2 = build_table([load_run(runs[3])], target=0.5)
    assert t2.cells["grpo"]["steps_to_target"] == "not reached (0/1)"
    assert t2.cells["grpo"]["ratio_range"] == "16"  # one seed: no ± part
    assert math.isclose(t.stats["grpo"]["loss_var"][1], 0.0)


def test_write_report_files_offline_html(runs, tmp_path):
    out = tmp_path / "report"
    p = write_report(runs, out, target_reward=0.5, notes=["synthetic data"])
    names = sorted(f.name for f in p.figures)
    assert names == ["accuracy.png", "entropy.png", "grad_norm.png", "kl.png", "loss.png", "ratio.png", "reward.png"]
    for f in p.figures:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = p.markdown.read_text()
    assert "| gmpo | 2 | 0.625 ± 0.884 | 0.5 ± 0.707 | 2.81 ± 1.68 | 2.0 ± 1.4 |" in md
    assert "![Held-out accuracy](figures/accuracy.png)" in md and "synthetic data" in md
    page = p.html.read_text()
    assert page.count("data:image/png;base64,") == 7
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "4.0 (1/2 reached)" in page and "<style>" in page


def test_report_without_optional_metrics(tmp_path):
    d = write_run(tmp_path / "gmpo-s0", [{"step": 1, "reward/mean": 0.2}, {"step": 2, "reward/mean": 0.3}])
    p = write_report([d], tmp_path / "rep", target_reward=0.9)
    assert [f.name for f in p.figures] == ["reward.png"]
    assert "not reached (0/1)" in p.markdown.read_text()
    with pytest.raises(ValueError, match="no run"):
        write_report([], tmp_path / "x")


@pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed")
def test_screenshot(runs, tmp_path):
    p = write_report(runs, tmp_path / "report", target_reward=0.5)
    png = screenshot(p.html, width=1280, height=1600)
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == (1280, 1600)
        # not a blank page: many distinct colours (text, table, plots)
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 50
