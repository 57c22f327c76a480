"""gmpo tune end to end on the tiny model: pruning a clearly worse trial, failed trials with their reasons,
resume after a kill, parallel subprocess trials with a crash, a two-objective study.

Every trial is a real training run (a few steps of the tiny model). The reward is the parity of the
completion's character codes times ``scale``: held-out accuracy counts verdicts > 0.5, so a trial with
``scale: 0.4`` has accuracy exactly 0 at every evaluation while ``scale: 1.0`` trials score about 1: the
clearly worse trial the pruner must stop. ``crash`` makes the reward raise or segfault.
"""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gmpo.cli import main
from gmpo.config import load_config
from gmpo.tune import TuneSettings, run_study

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


def parity_reward(prompts, completions, scale=1.0, crash="", **columns):
    """scale x (1 if the completion's character codes sum to an even number); crash: '' | raise | segv."""
    if crash == "raise":
        raise RuntimeError("deliberate reward failure")
    if crash == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    return [scale * float(sum(map(ord, c)) % 2 == 0) for c in completions]


def _recipe(tmp_path, tiny_model_dir, steps=4, **extra) -> Path:
    cfg = {
        "model": {"name_or_path": str(tiny_model_dir)},
        "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 6, "truncated_reward": "keep"},
        "optim": {"lr": 3e-3},
        "rewards": [{"name": f"{__file__}:parity_reward", "kwargs": {"scale": 1.0, "crash": ""}}],
        "train": {"steps": steps, "mini_batch_size": 4, "micro_batch_size": 4, "bf16": "false", "seed": 0},
        "data": {"eval_size": 4},
        "eval": {"every": 2, "at_start": False},
        "log": {"progress": False, "print_every": 0},
        "guard": {"length_action": "off"},
    }
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _space(tmp_path, space: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


SPACE = {"optim.lr": {"log_uniform": [1e-3, 1e-2]}, "rewards.0.kwargs.scale": {"categorical": [1.0, 0.4]}}


def _trials(out: Path) -> list[dict]:
    return json.loads((out / "summary.json").read_text())["trials"]


def test_study_prunes_the_clearly_worse_trial(tmp_path, tiny_model_dir, capsys):
    """4 trials, median pruner after 2 complete ones: the reward-scale-0.4 trial (accuracy 0) is pruned at its
    first evaluation; the best config is a ready-to-run YAML; the report works offline; SQLite storage."""
    out, db = tmp_path / "out", tmp_path / "study.db"
    args = ["tune", str(_recipe(tmp_path, tiny_model_dir)), "--space", str(_space(tmp_path, SPACE)), "--trials", "4",
            "--executor", "inprocess", "--threads", "1", "--pruner-startup", "2", "--out", str(out),
            "--storage", f"sqlite:///{db}", "--study", "prune",
            "--enqueue", "optim.lr=0.003,rewards.0.kwargs.scale=1.0", "--enqueue", "optim.lr=0.006,rewards.0.kwargs.scale=1.0",
            "--enqueue", "optim.lr=0.004,rewards.0.kwargs.scale=0.4"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    trials = _trials(out)
    assert [t["state"] for t in trials[:3]] == ["COMPLETE", "COMPLETE", "PRUNED"]
    bad = trials[2]
    assert bad["pruned_step"] == 2 and bad["steps"] == 2 and bad["values"] is None
    assert "pruned at step 2" in bad["reason"]
    assert trials[0]["accuracy"] > 0.5 and trials[1]["accuracy"] > 0.5
    for t in trials:
        if t["state"] == "COMPLETE":
            assert t["values"][0] == pytest.approx(0.7 * t["accuracy"] + 0.3 * t["stability"])
            assert 0 < t["stability"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    best = max((t for t in trials if t["state"] == "COMPLETE"), key=lambda t: t["values"][0])
    assert summary["best_trial"] == best["number"] and summary["best_run_dir"] == best["run_dir"]
    assert f"best trial's run directory: {best['run_dir']}" in printed
    # the study is a real SQLite database with the four trials
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*) from trials").fetchone()[0] == 4
    # best config: the recipe + the best parameters, loadable and runnable
    cfg = load_config(out / "best_config.yaml")
    assert cfg.optim.lr == pytest.approx(best["params"]["optim.lr"])
    assert cfg.rewards[0].kwargs["scale"] == best["params"]["rewards.0.kwargs.scale"]
    assert cfg.train.output_dir == str(out / "best_run")
    assert main(["train", str(out / "best_config.yaml"), "--dry-run"]) == 0
    # only the best trial keeps its checkpoint
    assert (Path(best["run_dir"]) / "checkpoints").is_dir()
    assert not any((Path(t["run_dir"]) / "checkpoints").exists() for t in trials if t["number"] != best["number"])
    # report: table, figures, an offline page
    rep = out / "report"
    table = (rep / "trials.md").read_text()
    assert table.count("\n") == 2 + 4 and "| 2 | pruned |" in table
    for name in ("history.png", "intermediate.png", "slice.png", "importances.png"):
        assert (rep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (rep / "index.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.count("data:image/png;base64,") == 4


def test_failed_trials_keep_their_reasons(tmp_path, tiny_model_dir):
    """A NaN run (lr 1e30: the guard skips the updates, the gradient norm is NaN), a raising reward and a
    guard stop are failures with their reasons, never scores; a healthy trial still completes."""
    space = {"optim.lr": {"categorical": [3e-3, 1e30]}, "rewards.0.kwargs.crash": {"categorical": ["", "raise"]},
             "guard.nonfinite_action": {"categorical": ["skip", "stop"]}}
    plan = [{"optim.lr": 1e30, "rewards.0.kwargs.crash": "", "guard.nonfinite_action": "skip"},
            {"optim.lr": 3e-3, "rewards.0.kwargs.crash": "raise", "guard.nonfinite_action": "skip"},
            {"optim.lr": 1e30, "rewards.0.kwargs.crash": "", "guard.nonfinite_action": "stop"},
            {"optim.lr": 3e-3, "rewards.0.kwargs.crash": "", "guard.nonfinite_action": "skip"}]
    s = TuneSettings(config=str(_recipe(tmp_path, tiny_model_dir, steps=2)), space=str(_space(tmp_path, space)),
                     trials=4, executor="inprocess", threads=1, pruner="none", out=str(tmp_path / "out"), enqueue=plan)
    res = run_study(s)
    trials = _trials(tmp_path / "out")
    assert [t["state"] for t in trials] == ["FAIL", "FAIL", "FAIL", "COMPLETE"]
    assert "grad/norm was nan at step 1" in trials[0]["reason"]
    assert "RewardError" in trials[1]["reason"] and "deliberate reward failure" in trials[1]["reason"]
    assert "guard stopped the run at step 1: nonfinite" in trials[2]["reason"]
    assert all(t["values"] is None for t in trials[:3])
    assert res.best_number == 3


def test_resume_after_a_kill_does_not_rerun_finished_trials(tmp_path, tiny_model_dir):
    """Kill `gmpo tune` while trial 1 trains; running it again keeps trial 0, retries trial 1's parameters
    and samples one new trial (no repeated draw)."""
    recipe, space, out = _recipe(tmp_path, tiny_model_dir, steps=4), _space(tmp_path, SPACE), tmp_path / "out"
    args = [str(recipe), "--space", str(space), "--trials", "3", "--executor", "inprocess", "--threads", "1",
            "--pruner", "none", "--sampler", "random", "--seed", "3", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from gmpo.cli import main; sys.exit(main())", "tune",
                             *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics1 = out / "trials" / "trial_0001" / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics1.exists() and metrics1.read_text().strip()) and time.time() < deadline:
        assert proc.poll() is None, "gmpo tune ended before it could be interrupted"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    m0 = out / "trials" / "trial_0000" / "metrics.jsonl"
    before = (m0.read_text(), m0.stat().st_mtime_ns)
    res = run_study(TuneSettings(config=str(recipe), space=str(space), trials=3, executor="inprocess", threads=1,
                                 pruner="none", sampler="random", seed=3, out=str(out)))
    trials = _trials(out)
    assert [t["state"] for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert "interrupted" in trials[1]["reason"]
    assert trials[2]["params"] == trials[1]["params"] and "retry of trial 1" in trials[2]["reason"]
    assert trials[3]["params"] not in (trials[0]["params"], trials[1]["params"])
    assert (m0.read_text(), m0.stat().st_mtime_ns) == before  # trial 0 was not run again
    assert res.counts == {"complete": 3, "fail": 1}
    # a third invocation has nothing left to do
    again = run_study(TuneSettings(config=str(recipe), space=str(space), trials=3, executor="inprocess", threads=1,
                                   pruner="none", sampler="random", seed=3, out=str(out)))
    assert again.counts == res.counts
    # resuming with another space is refused
    with pytest.raises(Exception, match="different space"):
        run_study(TuneSettings(config=str(recipe), space={"optim.lr": {"log_uniform": [1e-4, 1e-2]}}, trials=3,
                               executor="inprocess", out=str(out)))


def test_parallel_subprocess_trials_survive_a_segfault(tmp_path, tiny_model_dir):
    """--workers 2 --threads 2: two `gmpo train` children with one thread each run at once; the one whose reward
    segfaults is a failed trial with the signal named, the other completes (journal-file storage)."""
    space = {"optim.lr": {"log_uniform": [1e-3, 1e-2]}, "rewards.0.kwargs.crash": {"categorical": ["", "segv"]}}
    out = tmp_path / "out"
    s = TuneSettings(config=str(_recipe(tmp_path, tiny_model_dir, steps=2)), space=str(_space(tmp_path, space)),
                     trials=2, workers=2, threads=2, executor="subprocess", pruner="none", out=str(out),
                     enqueue=[{"optim.lr": 3e-3, "rewards.0.kwargs.crash": ""},
                              {"optim.lr": 4e-3, "rewards.0.kwargs.crash": "segv"}])
    res = run_study(s)
    trials = sorted(_trials(out), key=lambda t: t["number"])
    by_crash = {t["params"]["optim.lr"]: t for t in trials}
    assert by_crash[4e-3]["state"] == "FAIL" and "killed by SIGSEGV" in by_crash[4e-3]["reason"]
    assert by_crash[3e-3]["state"] == "COMPLETE" and by_crash[3e-3]["accuracy"] is not None
    assert res.counts == {"complete": 1, "fail": 1} and res.best_number == by_crash[3e-3]["number"]
    for t in trials:
        assert load_config(Path(t["run_dir"]) / "tune_trial.yaml").train.threads == 1
    import optuna

    from gmpo.tune.study import make_storage

    study = optuna.load_study(study_name="recipe", storage=make_storage(str(out / "study.journal")))
    t0, t1 = study.trials[0].user_attrs, study.trials[1].user_attrs
    assert t0["started"] < t1["finished"] and t1["started"] < t0["finished"]  # the two ran at the same time


def test_multi_objective_reports_the_pareto_front(tmp_path, tiny_model_dir):
    s = TuneSettings(config=str(_recipe(tmp_path, tiny_model_dir, steps=2)), space=str(_space(tmp_path, SPACE)),
                     trials=2, executor="inprocess", threads=1, multi_objective=True, out=str(tmp_path / "out"),
                     enqueue=[{"optim.lr": 3e-3, "rewards.0.kwargs.scale": 1.0},
                              {"optim.lr": 3e-3, "rewards.0.kwargs.scale": 0.4}])
    res = run_study(s)
    trials = _trials(tmp_path / "out")
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"]  # no pruning in a two-objective study
    assert trials[0]["values"] == [trials[0]["accuracy"], trials[0]["stability"]]
    assert trials[1]["accuracy"] == 0.0 and trials[0]["accuracy"] > 0.5
    front = [t["number"] for t in trials if not any(
        o["values"][0] >= t["values"][0] and o["values"][1] >= t["values"][1] and o["values"] != t["values"]
        for o in trials)]
    assert res.pareto == sorted(front)
    for n in res.pareto:
        assert load_config(tmp_path / "out" / "pareto" / f"trial_{n}.yaml")
    assert "Pareto front" in (tmp_path / "out" / "report" / "index.html").read_text()
