"""End to end through the real entry point `gmpo train` on the tiny model: two steps, metrics, samples,
config, a loadable checkpoint, exact resume; CLI errors, --help and --print-config."""
import json
import math

import pytest
import torch
import yaml

from gmpo.cli import main
from gmpo.config import load_config

SECTION4 = [
    "reward/mean", "reward/std", "reward/frac_zero_std", "rollout/len_mean", "rollout/len_min", "rollout/len_max",
    "rollout/truncated_frac", "policy/entropy", "policy/kl", "ratio/token_min", "ratio/token_max", "ratio/token_p01",
    "ratio/token_p99", "ratio/seq_min", "ratio/seq_max", "clip/frac_low", "clip/frac_high", "loss/value", "grad/norm",
    "stability/loss_var", "stability/grad_norm_std", "stability/ratio_range", "guard/events", "perf/step_s",
    "perf/rollout_s", "perf/train_s", "perf/tokens_per_s", "perf/mfu",
]



pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, restored after


def parity_reward(prompts, completions, **columns):
    """1 when the completion's character codes sum to an even number: signal inside every group."""
    return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


@pytest.fixture
def recipe(tmp_path, tiny_model_dir):
    cfg = {
        "model": {"name_or_path": str(tiny_model_dir)},
        "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 6, "truncated_reward": "keep"},
        "algorithm": {"loss": "gmpo"},
        "optim": {"lr": 1e-2},
        "rewards": [{"name": f"{__file__}:parity_reward"}, {"name": "arithmetic", "weight": 0.5}],
        "train": {"steps": 2, "micro_batch_size": 4, "bf16": "false", "threads": 1, "seed": 7, "save_every": 1,
                  "output_dir": str(tmp_path / "run1")},
        "data": {"eval_size": 4},
        "log": {"progress": False, "samples_per_step": 3},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_end_to_end_and_exact_resume(tmp_path, recipe, capsys):
    from transformers import AutoModelForCausalLM

    assert main(["train", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy: before " in out and " -> after " in out
    run = tmp_path / "run1"
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]
    assert "eval/accuracy" in records[0] and "eval/accuracy" in records[2]
    for r in records[1:]:
        missing = [k for k in SECTION4 if k not in r]
        assert not missing, missing
        assert "reward/parity_reward/mean" in r and "reward/arithmetic/mean" in r
        assert math.isfinite(r["loss/value"]) and r["grad/norm"] > 0
    # samples and the resolved config
    samples = read_jsonl(run / "samples.jsonl")
    assert [s["step"] for s in samples] == [1, 1, 1, 2, 2, 2]
    assert set(samples[0]) >= {"prompt", "completion", "rewards", "advantage", "reward"}
    assert set(samples[0]["rewards"]) == {"parity_reward", "arithmetic"}
    assert load_config(run / "config.yaml").train.steps == 2
    # checkpoints: loadable by transformers, weights changed by training
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step_000001", "step_000002"]
    model = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step_000002")
    from gmpo.testing import tiny_model, tiny_tokenizer

    start = tiny_model(tiny_tokenizer(), seed=0).state_dict()
    trained = model.state_dict()
    assert any(not torch.equal(start[k], trained[k]) for k in start if k in trained)
    # resume from step 1 into a fresh directory: step 2 is reproduced exactly
    assert main(["train", str(recipe), f"train.resume={run}/checkpoints/step_000001",
                 f"train.output_dir={tmp_path / 'run2'}"]) == 0
    again = read_jsonl(tmp_path / "run2" / "metrics.jsonl")
    assert [r["step"] for r in again] == [2]
    a, b = records[2], again[0]
    keys = [k for k in a if not k.startswith("perf/")]
    assert keys == [k for k in b if not k.startswith("perf/")]
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert "before " + f"{records[0]['eval/accuracy']:.3f}" in capsys.readouterr().out


def test_resume_auto_continues_in_place(tmp_path, recipe):
    run = tmp_path / "run1"
    assert main(["train", str(recipe), "train.steps=1", "eval.at_start=false", "log.samples_per_step=1"]) == 0
    assert main(["train", str(recipe), "train.steps=2", "train.resume=auto", "eval.at_start=false",
                 "log.samples_per_step=1"]) == 0
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    assert [s["step"] for s in read_jsonl(run / "samples.jsonl")] == [1, 2]


def test_config_typo_is_a_one_line_error(recipe, capsys):
    assert main(["train", str(recipe), "train.stepz=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "train.stepz" in err and "did you mean 'train.steps'" in err


def test_bad_value_and_missing_file(recipe, tmp_path, capsys):
    assert main(["train", str(recipe), "algorithm.loss=ppo"]) == 2
    assert "algorithm.loss" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    from gmpo.config import describe

    for key, default, _ in describe():
        assert key in text, key
    assert "completions per prompt (G)" in text


def test_print_config(recipe, capsys):
    assert main(["train", str(recipe), "rollout.group_size=2", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["rollout"]["group_size"] == 2 and cfg["train"]["steps"] == 2
