"""gmpo compare end to end on the tiny model (2 algorithms x 1 seed x 2 steps), resumability, CLI errors."""
import json

import pytest

from gmpo.cli import main
from gmpo.compare import DONE_FILE, parse_algos, parse_seeds, run_compare
from gmpo.config import ConfigError
from gmpo.report.html import find_chromium
from gmpo.rewards.runner import REWARDS, register_reward
from gmpo.train.hooks import Hook


def _char_reward(prompts, completions, **columns):
    return [sum(ch in "aeiou0123456789" for ch in c) / max(1, len(c)) for c in completions]


if "test_chars" not in REWARDS:
    register_reward("test_chars", _char_reward)


def tiny_overrides(model_dir, steps=2):
    return [f"model.name_or_path={model_dir}", "rollout.prompts_per_step=2", "rollout.group_size=4",
            "rollout.max_new_tokens=4", "rollout.truncated_reward=keep", f"train.steps={steps}", "log.progress=false",
            "log.samples_per_step=2", "train.device=cpu", 'train.bf16="false"', "data.arithmetic.n_train=32",
            "data.arithmetic.n_eval=4", "data.eval_size=2", "optim.lr=1e-2", "rewards=[{name: test_chars}]",
            "guard.length_action=off", "eval.at_start=false"]


def test_parse_algos_and_seeds():
    assert parse_algos("gmpo, grpo,gmpo") == ["gmpo", "grpo"]
    with pytest.raises(ConfigError, match="unknown algorithm 'ppo'"):
        parse_algos("gmpo,ppo")
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds(2, base=5) == [5, 6] and parse_seeds("0,7") == [0, 7]
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds("three")
    with pytest.raises(ConfigError, match=">= 1"):
        parse_seeds("0")


def test_compare_cli_end_to_end(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "cmp"
    ov = tiny_overrides(tiny_model_dir)
    # options before, between and after the overrides (the documented `gmpo compare CONFIG --algos ... k=v` form)
    args = ["compare", "--algos", "gmpo,grpo", *ov[:3], "--seeds", "1", "--out", str(out), "--target-reward", "0.2",
            *ov[3:], "--smooth", "1"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "| gmpo | 1 |" in text and "| grpo | 1 |" in text and "[compare 2/2] grpo-s0: training" in text
    assert "warning: one optimizer step per rollout batch" in text  # on-policy: GMPO and GRPO gradients coincide
    for name in ("gmpo-s0", "grpo-s0"):
        rd = out / "runs" / name
        done = json.loads((rd / DONE_FILE).read_text())
        assert done["steps"] == 2 and done["algo"] == name.split("-")[0]
        steps = [json.loads(l)["step"] for l in (rd / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2]
    # identical data: for the same seed both algorithms were given the same prompts
    prompts = [[json.loads(l)["prompt"] for l in (out / "runs" / n / "samples.jsonl").read_text().splitlines()]
               for n in ("gmpo-s0", "grpo-s0")]
    assert prompts[0] and prompts[0] == prompts[1]
    rep = out / "report"
    assert (rep / "report.md").is_file() and (rep / "index.html").is_file()
    figs = sorted(p.name for p in (rep / "figures").iterdir())
    assert {"reward.png", "accuracy.png", "ratio.png", "entropy.png", "kl.png", "grad_norm.png"} <= set(figs)
    md = (rep / "report.md").read_text()
    assert "final held-out accuracy" in md and "gmpo-s0" in md
    # a second invocation trains nothing and rebuilds the report (with a screenshot where Chromium exists)
    assert main(args + ["--screenshot"]) == 0
    text = capsys.readouterr().out
    assert "gmpo-s0: finished earlier (2 steps), skipped" in text and "training" not in text
    if find_chromium():
        assert "screenshot:" in text and (rep / "screenshot.png").stat().st_size > 10_000
    else:
        assert "screenshot skipped: Chromium is not installed" in text
    # the same --out with another config is refused
    assert main(args + ["train.steps=3"]) == 2
    assert "different config" in capsys.readouterr().err


class Interrupt(Hook):
    def on_step_end(self, trainer, step, metrics):
        if step == 2:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_from_checkpoint(tmp_path, tiny_model_dir):
    from gmpo.train import GMPOTrainer

    out = tmp_path / "cmp"
    ov = tiny_overrides(tiny_model_dir, steps=3) + ["train.save_every=1", "eval.at_end=false"]

    def interrupted(cfg):
        return GMPOTrainer(config=cfg, hooks=[Interrupt()]).train()

    with pytest.raises(KeyboardInterrupt):
        run_compare(None, ["gmpo"], [0], out, ov, train_fn=interrupted, log=lambda s: None)
    rd = out / "runs" / "gmpo-s0"
    assert not (rd / DONE_FILE).exists() and (rd / "checkpoints" / "step_000001").is_dir()
    resumed = []

    def train(cfg):
        t = GMPOTrainer(config=cfg)
        resumed.append(t.resumed_from)
        return t.train()

    res = run_compare(None, ["gmpo"], [0], out, ov, train_fn=train, log=lambda s: None)
    assert res.trained == ["gmpo-s0"] and resumed[0].name == "step_000001"
    steps = [json.loads(l)["step"] for l in (rd / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # the interrupted step 2 was dropped and re-run; step 1 kept
    assert json.loads((rd / DONE_FILE).read_text())["steps"] == 3


def test_bad_arguments(tmp_path, capsys):
    assert main(["compare", "--algos", "ppo", "--out", str(tmp_path)]) == 2
    assert "unknown algorithm" in capsys.readouterr().err
    assert main(["compare", "--out", str(tmp_path), "train.stepz=3"]) == 2
    assert "did you mean 'train.steps'" in capsys.readouterr().err
    assert main(["compare", "--report-only", "--seeds", "1", "--out", str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["compare", "--help"], ["compare", "my.yaml", "--seeds", "2", "--help"]])
def test_help_documents_every_option(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    text = capsys.readouterr().out
    for opt in ("--algos", "--seeds", "--out", "--target-reward", "--smooth", "--title", "--screenshot", "--report-only",
                "key=value", "Resumable", "every token ratio is 1"):
        assert opt in text
