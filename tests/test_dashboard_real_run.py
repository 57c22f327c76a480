"""The dashboard reads what the real trainer writes: a 3-step `gmpo train` run of the tiny model (evaluations
before and after, the guard warning every step) through the store and every view."""
import json

import pytest
import yaml

from gmpo.cli import main
from gmpo.dashboard.series import CHARTS, HIST_LEN
from gmpo.dashboard.store import RunStore
from gmpo.runs.files import read_alerts
from gmpo.dashboard.views import (alerts_payload, chart_payload, compare_payload, heatmap_payload, samples_payload,
                                  training_headline)

pytestmark = pytest.mark.usefixtures("one_thread")


def parity_reward(prompts, completions, **columns):
    """1 when the completion's character codes sum to an even number: signal inside every group."""
    return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("dash_real")
    cfg = {
        "model": {"name_or_path": str(tiny_model_dir)},
        "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 8, "truncated_reward": "keep"},
        "algorithm": {"loss": "gmpo"},
        "optim": {"lr": 1e-2},
        "rewards": [{"name": f"{__file__}:parity_reward"}],
        "train": {"steps": 3, "mini_batch_size": 4, "bf16": "false", "threads": 1, "seed": 5,
                  "output_dir": str(tmp / "gmpo-s5")},
        "data": {"eval_size": 4},
        "eval": {"at_start": True, "at_end": True},
        "guard": {"enabled": True, "entropy_floor": 100.0, "entropy_action": "warn"},  # fires every step
        "log": {"progress": False, "print_every": 0},
    }
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp / "cfg.yaml")]) == 0
    return tmp / "gmpo-s5"


def test_views_of_a_real_run(real_run):
    st = RunStore(real_run, 0)
    assert st.refresh()
    info = st.info()
    assert (info["algo"], info["seed"], info["eval_n"]) == ("gmpo", 5, 4) and info["clip"]["lo"] == -0.4
    assert st.table.steps[: st.table.n].tolist() == [0, 1, 2, 3]
    assert st.series("eval/accuracy")[0].tolist() == [0, 3]  # before training and the final evaluation
    charts = {c.id: chart_payload([st], c, None, None, 600) for c in CHARTS}
    missing = [c for c, p in charts.items() if c != "accuracy" and len(p["x"]) != 3]
    assert missing == [], f"charts without the 3 training steps: {missing}"
    assert len(charts["accuracy"]["x"]) == 2 and [s["role"] for s in charts["accuracy"]["series"]] == ["line", "lo", "hi"]
    heat = heatmap_payload(st, None, None, 600)
    assert heat["has_hist"] and len(heat["z"]) == 3 and all(len(col) == HIST_LEN for col in heat["z"])
    recs = [json.loads(x) for x in open(real_run / "metrics.jsonl")]
    assert heat["tokens"] == [sum(r["ratio/log_hist"]) for r in recs if "ratio/log_hist" in r]
    assert all(abs(sum(col) - 1.0) < 1e-3 for col in heat["z"])
    alerts = alerts_payload([st], None, None)
    written = read_alerts(real_run)  # a warning fires once while its condition holds: step 1 here
    assert [(a["step"], a["detector"], a["message"]) for a in alerts] == [(a["step"], a["detector"], a["message"]) for a in written]
    assert ("entropy_collapse", "warn") in {(a["detector"], a["action"]) for a in alerts}
    head = training_headline(st)
    clean = 3 - len({a["step"] for a in written})
    assert head["stability"] == {"score": pytest.approx(100 * clean / 3), "window": 3, "clean": clean}
    assert head["accuracy"]["step"] == 3
    assert samples_payload(st)["total"] == len(open(real_run / "samples.jsonl").readlines()) > 0
    table = compare_payload([st], 0.5, 1)
    assert table["rows"][0]["algo"] == "gmpo" and table["runs"][0]["stats"]["guard_events"] == len(written)
