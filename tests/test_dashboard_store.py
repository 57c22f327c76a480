"""The dashboard's data side without a server: incremental tailing, step semantics, downsampling, the
heat-map, Wilson intervals, clip ranges, headline numbers, the comparison table and the sample filters."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from gmpo.dashboard.series import CHARTS, align, clip_range, heatmap, minmax_downsample, to_json_list, wilson
from gmpo.dashboard.store import RunStore
from gmpo.dashboard.synthetic import log_hist, write_run
from gmpo.dashboard.views import chart_payload, compare_payload, samples_payload, training_headline
from gmpo.runs.files import truncate_jsonl


def _append(path, *recs, raw=""):
    with open(path, "a", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
        f.write(raw)


def _snapshot(d):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.rglob("*"))}


def test_dashboard_modules_never_import_torch(tmp_path):
    """Everything `gmpo dashboard` loads: the verb's parser (through the CLI dispatcher), the app built on a run."""
    run = write_run(tmp_path / "gmpo-s0", 5)
    code = ("import sys, gmpo.dashboard.app, gmpo.dashboard.views, gmpo.dashboard.serving, gmpo.dashboard.synthetic, "
            "gmpo.dashboard.__main__, gmpo.commands.dashboard, uvicorn\n"
            "from gmpo.cli import build_parser\n"
            "build_parser().parse_args(['dashboard', sys.argv[1]])\n"
            "state = gmpo.dashboard.app.DashboardState([sys.argv[1]]); state.refresh()\n"
            "gmpo.dashboard.app.create_app(state)\n"
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"the dashboard loaded {r.stdout.strip()} {r.stderr[-500:]}"


def test_minmax_downsample_keeps_every_bucket_envelope():
    x = np.arange(1, 1001)  # steps 1..1000
    y = np.sin(x / 30.0)
    y[500] = 50.0  # a one-step spike
    z = np.where(x % 7 == 0, np.nan, x * 1.0)  # a series with holes
    xs, (ys, zs), width = minmax_downsample(x, [y, z], 100)
    assert width == 20.0 and len(xs) == 100  # 50 buckets of 20 steps, two points each
    assert xs[:4].tolist() == [1, 20, 21, 40]
    assert ys.max() == 50.0 and ys[::2].tolist() == [y[i:i + 20].min() for i in range(0, 1000, 20)]
    assert ys[1::2].tolist() == [y[i:i + 20].max() for i in range(0, 1000, 20)]
    assert zs[0] == 1.0 and zs[1] == 20.0 and not np.isnan(zs).any()
    same = minmax_downsample(x[:60], [y[:60]], 100)
    assert len(same[0]) == 60 and same[1][0].tolist() == y[:60].tolist() and same[2] == 0.0
    with pytest.raises(ValueError, match="points must be >= 2"):
        minmax_downsample(x, [y], 1)


def test_minmax_downsample_sparse_buckets_and_all_nan():
    x = np.array([0, 1, 2, 3, 100, 200, 201, 202])
    y = np.array([1.0, 5.0, 2.0, 3.0, 7.0, np.nan, np.nan, np.nan])
    xs, (ys,), w = minmax_downsample(x, [y], 6)  # 3 buckets of width 67.67: {0,1,2,3}, {100}, {200,201,202}
    assert xs.tolist() == [0, 3, 100, 200, 202] and ys[:3].tolist() == [1.0, 5.0, 7.0] and np.isnan(ys[3:]).all()


def test_align_puts_runs_on_the_union_of_steps():
    x, (a, b) = align([np.array([1, 2, 3]), np.array([2, 4])], [np.array([1.0, 2.0, 3.0]), np.array([20.0, 40.0])])
    assert x.tolist() == [1, 2, 3, 4]
    assert to_json_list(a) == [1.0, 2.0, 3.0, None] and to_json_list(b) == [None, 20.0, None, 40.0]


def test_to_json_list_rounds_to_significant_digits():
    assert to_json_list(np.array([1 / 3, 123456789.0, -2e-9, 0.0, np.inf])) == [0.333333, 123457000.0, -2e-09, 0.0, None]


def test_heatmap_fractions_and_buckets():
    steps = np.arange(1, 11)
    h = np.zeros((10, 42))
    h[:, 21] = 3  # bin [0, 0.05)
    h[:, 0] = 1  # underflow
    exact = heatmap(steps, h, 20)
    assert len(exact["z"]) == 10 and exact["z"][0][21] == 0.75 and exact["z"][0][0] == 0.25 and exact["bucket"] == 0.0
    grouped = heatmap(steps, h, 4)  # width 10/4 = 2.5 from step 1: {1,2,3}, {4,5}, {6,7,8}, {9,10}
    assert grouped["x0"] == [1, 4, 6, 9] and grouped["x1"] == [3, 5, 8, 10] and grouped["tokens"] == [12, 8, 12, 8]
    assert grouped["z"][1][21] == 0.75
    with pytest.raises(ValueError, match=r"hist must be \(10, 42\)"):
        heatmap(steps, h[:, :40], 4)


def test_log_hist_bins_like_the_trainer():
    """The synthetic runs bin exactly as the trainer's telemetry does (right-closed bins, contract edges)."""
    import torch

    from gmpo.telemetry.bins import LOG_RATIO_EDGES
    from gmpo.telemetry.collector import log_ratio_histogram

    from gmpo.dashboard.series import HIST_BINS, HIST_HI, HIST_LO
    assert (HIST_LO, HIST_HI, HIST_BINS + 1) == (LOG_RATIO_EDGES[0], LOG_RATIO_EDGES[-1], len(LOG_RATIO_EDGES))
    values = np.array([-1.5, -1.0, -0.96, -0.95, 0.0, 0.049, 0.05, 0.06, 0.99, 1.0, 1.2, 3.0])
    counts = log_hist(values)
    assert counts == log_ratio_histogram(torch.tensor(values)).tolist()
    assert len(counts) == 42 and sum(counts) == 12 and counts[0] == 2 and counts[41] == 2  # <= -1, > 1
    assert counts[1] == 2 and counts[20] == 1 and counts[21] == 2 and counts[22] == 1 and counts[40] == 2


def test_wilson_matches_hand_values():
    lo, hi = wilson(np.array([0.5, 0.0, 1.0]), 100)
    assert lo[0] == pytest.approx(0.40383, abs=1e-5) and hi[0] == pytest.approx(0.59617, abs=1e-5)
    assert lo[1] == pytest.approx(0.0, abs=1e-12) and hi[1] == pytest.approx(0.036995, abs=1e-6)  # 3.8416/103.8416
    assert hi[2] == pytest.approx(1.0) and lo[2] == pytest.approx(1 - 0.036995, abs=1e-6)
    with pytest.raises(ValueError):
        wilson(np.array([0.5]), 0)


def test_clip_range_per_algorithm():
    assert clip_range("gmpo", None, None)["lo"] == -0.4 and clip_range("gmpo", None, None)["hi"] == 0.4
    g = clip_range("grpo", None, None)
    assert g["lo"] == pytest.approx(math.log(0.8)) and g["hi"] == pytest.approx(math.log(1.2)) and g["space"] == "ratio"
    assert clip_range("dapo", None, None)["hi"] == pytest.approx(math.log(1.28))
    assert clip_range("gmpo", 0.2, 0.3)["lo"] == -0.2 and "sequence" in clip_range("gspo", None, None)["note"]
    assert clip_range("mystery", None, None)["lo"] is None


def test_tailing_partial_lines_restarts_and_rollbacks(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    m = d / "metrics.jsonl"
    st = RunStore(d, 0)
    assert not st.refresh() and st.last_step() is None  # nothing written yet
    _append(m, {"step": 1, "reward/mean": 0.1}, {"step": 2, "reward/mean": 0.2}, raw='{"step": 3, "rew')
    assert st.refresh() and st.last_step() == 2  # the torn line waits
    _append(m, raw='ard/mean": 0.3}\n')
    st.refresh()
    assert st.series("reward/mean")[1].tolist() == [0.1, 0.2, 0.3]
    _append(m, {"step": 3, "eval/accuracy": 0.5})  # the trainer's separate final-eval record: merged into step 3
    _append(m, {"step": 4, "reward/mean": 0.4, "note": "text", "ratio/log_hist": [1] * 41})  # junk kept out
    st.refresh()
    assert st.series("eval/accuracy")[0].tolist() == [3] and st.series("reward/mean")[1].tolist()[-2:] == [0.3, 0.4]
    assert "note" not in st.table.cols and not st.has_hist()
    _append(m, {"step": 3, "reward/mean": 0.33}, {"step": 4, "reward/mean": 0.44})  # a rollback re-logs from step 3
    st.refresh()
    assert st.series("reward/mean")[0].tolist() == [1, 2, 3, 4] and st.series("reward/mean")[1].tolist()[-2:] == [0.33, 0.44]
    assert st.series("eval/accuracy")[0].tolist() == []  # the dropped row took its eval with it
    assert st.info()["algo"] is None
    (d / "config.yaml").write_text("algorithm: {loss: grpo}\ntrain: {seed: 7}\n")  # written after we started
    st.refresh()
    assert (st.info()["algo"], st.info()["seed"]) == ("grpo", 7)
    truncate_jsonl(m, 2)  # resume from a step-2 checkpoint: the file is replaced
    st.refresh()
    assert st.restarts == 1 and st.series("reward/mean")[0].tolist() == [1, 2]
    assert st.status()["rows"] == 2 and st.version >= 5


def test_memory_bounds(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    _append(d / "metrics.jsonl", *({"step": s, "x": float(s)} for s in range(1, 1001)))
    _append(d / "samples.jsonl", *({"step": s, "reward": 1.0, "completion": "y" * 10_000} for s in range(1, 101)))
    st = RunStore(d, 0, max_rows=300, max_samples=40)
    st.refresh()
    assert st.table.n <= 300 and st.last_step() == 1000
    steps = st.series("x")[0]
    assert (np.diff(steps) > 0).all() and steps[0] == 1 and np.diff(steps)[-1] == 1  # newest rows exact
    assert len(st.samples) == 40 and st.n_samples_seen == 100 and st.samples[0]["step"] == 61
    assert len(st.samples[0]["completion"]) < 4100  # long text cut
    assert st.table.nbytes() < 300 * 2 * 8 * 4


def test_store_never_writes_to_the_run(tmp_path):
    d = write_run(tmp_path / "gmpo-s0", 30, alerts={10: "warn"})
    before = _snapshot(d)
    st = RunStore(d, 0)
    st.refresh()
    chart_payload([st], CHARTS[0], None, None, 50), training_headline(st), samples_payload(st), compare_payload([st], 0.5, 1)
    assert _snapshot(d) == before


def test_chart_payload_counts_and_wilson_band(tmp_path):
    a = write_run(tmp_path / "gmpo-s0", 60, eval_every=10, eval_size=100)
    b = write_run(tmp_path / "grpo-s1", 40, algo="grpo", seed=1, eval_every=20)
    stores = [RunStore(a, 0), RunStore(b, 1)]
    for s in stores:
        s.refresh()
    reward = chart_payload(stores, CHARTS[0], None, None, 600)
    assert len(reward["x"]) == 60 and [len([v for v in s["data"] if v is not None]) for s in reward["series"]] == [60, 40]
    acc = chart_payload(stores, CHARTS[1], None, None, 600)
    assert acc["x"] == [0, 10, 20, 30, 40, 50, 60] and [s["role"] for s in acc["series"]] == ["line", "lo", "hi"] * 2
    line, lo, hi = (acc["series"][i]["data"] for i in range(3))
    assert lo[0] == pytest.approx(wilson(np.array([0.3]), 100)[0][0], abs=1e-6) and lo[0] < line[0] < hi[0]
    _append(a / "metrics.jsonl", {"step": 60, "eval/gsm8k": 0.25})  # a benchmark eval beside the held-out one
    stores[0].refresh()
    acc = chart_payload(stores, CHARTS[1], None, None, 600)
    assert [s["metric"] for s in acc["series"] if s["run"] == 0] == ["eval/accuracy", "eval/accuracy:lo",
                                                                     "eval/accuracy:hi", "eval/gsm8k"]
    assert acc["series"][3]["data"][-1] == 0.25
    window = chart_payload(stores, CHARTS[0], 10, 19, 600)
    assert window["x"] == list(range(10, 20))
    small = chart_payload(stores, CHARTS[0], None, None, 20)
    assert len(small["x"]) == 20 and small["bucket"] == 6.0


def test_headline_numbers(tmp_path):
    d = write_run(tmp_path / "gmpo-s0", 150, eval_every=50, alerts={120: "warn", 130: "skip", 140: "skip"})
    st = RunStore(d, 0)
    st.refresh()
    h = training_headline(st)
    acc = [json.loads(line) for line in open(d / "metrics.jsonl")]
    evals = [r["eval/accuracy"] for r in acc if "eval/accuracy" in r]
    assert h["accuracy"]["value"] == evals[-1] and h["accuracy"]["change"] == pytest.approx(evals[-1] - evals[-2])
    assert h["accuracy"]["step"] == 150 and h["accuracy"]["prev_step"] == 100
    assert h["stability"] == {"score": 97.0, "window": 100, "clean": 97}  # 3 guard events in steps 51..150
    tps = [r["perf/tokens_per_s"] for r in acc[-20:]]
    assert h["throughput"]["tokens_per_s"] == pytest.approx(sum(tps) / 20)


def test_compare_table_is_the_report_table(tmp_path):
    from gmpo.report.table import build_table, load_run

    dirs = [write_run(tmp_path / f"{a}-s{s}", 40, algo=a, seed=s, alerts={5: "skip"} if a == "grpo" else None)
            for a in ("gmpo", "grpo") for s in (0, 1)]
    stores = [RunStore(d, i) for i, d in enumerate(dirs)]
    for s in stores:
        s.refresh()
    got = compare_payload(stores, 0.5, 3)
    want = build_table([load_run(d) for d in dirs], 0.5, 3)
    assert [r["algo"] for r in got["rows"]] == want.algos == ["gmpo", "grpo"]
    assert {r["algo"]: r["cells"] for r in got["rows"]} == want.cells
    assert got["runs"][2]["stats"]["interventions"] == 1.0 and got["runs"][0]["seed"] == 0


def test_sample_filters(tmp_path):
    d = write_run(tmp_path / "gmpo-s0", 50, samples_per_step=4)
    st = RunStore(d, 0)
    st.refresh()
    rows = [json.loads(line) for line in open(d / "samples.jsonl")]
    want = [r for r in rows if 10 <= r["step"] <= 12 and r["reward"] >= 1.0]
    got = samples_payload(st, step_min=10, step_max=12, reward_min=1.0, limit=500)
    assert got["total"] == len(want) > 0 and all(10 <= s["step"] <= 12 and s["reward"] == 1.0 for s in got["samples"])
    assert got["samples"][0]["step"] == 12  # newest first
    one = samples_payload(st, text="(#7.3)")
    assert one["total"] == 1 and one["samples"][0]["prompt"].endswith("(#7.3)")
    page = samples_payload(st, limit=10, offset=195)
    assert page["total"] == 200 and len(page["samples"]) == 5
    _append(d / "samples.jsonl", raw='{"step": 51, "reward": NaN, "advantage": Infinity, "rewards": {"m": NaN}}\n')
    st.refresh()
    row = samples_payload(st, limit=1)["samples"][0]
    assert (row["step"], row["reward"], row["advantage"], row["rewards"]) == (51, None, None, {"m": None})
    json.dumps(row, allow_nan=False)  # what the web stack's JSON encoder demands


def test_odd_configs_still_show_the_run(tmp_path):
    d = write_run(tmp_path / "dapo-s2", 3)
    (d / "config.yaml").write_text("algorithm: {loss: gmpo, eps_low: wide}\ntrain: [1, 2]\ndata: 7\n")
    info = RunStore(d, 0).info()
    assert info["algo"] == "gmpo" and info["clip"]["lo"] is None and "could not convert" in info["clip"]["note"]
    assert info["seed"] == 2 and info["eval_n"] is None  # the seed from the '<algo>-s<seed>' name
    (d / "config.yaml").write_text(": not yaml : [")
    assert RunStore(d, 0).info()["algo"] == "dapo"


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        RunStore(tmp_path / "nope", 0)
    assert os.listdir(tmp_path) == []
