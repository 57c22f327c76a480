"""benchmarks/step_vs_trl.py without TRL: the gmpo side on a tiny model, its step breakdown, the TRL reward
wrapper's truncation rule, the dataset order, FLOP accounting and the report. The full TRL run is slow-marked."""
import importlib.util
import json
import mmap
import sys
from pathlib import Path

import pytest
import torch

from gmpo.perf import training_flops

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("step_vs_trl", ROOT / "benchmarks" / "step_vs_trl.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["step_vs_trl"] = mod
    spec.loader.exec_module(mod)
    return mod


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, restored after


def _side(bench, tmp_path, steps=3, extra=()):
    args = bench.parse_args(["--model", "tiny", "--measure-only", str(steps - 1), "--threads", "1",
                             "rollout.max_new_tokens=8", "rollout.prompts_per_step=2", "rollout.group_size=4", *extra])
    model, tok, _ = bench.load_policy("tiny", torch.device("cpu"))
    cfg, overrides = bench.gmpo_config(args, str(tmp_path / "gmpo"), torch.device("cpu"))
    return args, cfg, overrides, bench.GmpoSide(cfg, model, tok), tok


def test_parse_args_measure_only_and_validation(bench):
    a = bench.parse_args(["--measure-only", "6"])
    assert a.steps == 7 and a.warmup == 1  # 1 warm-up + 6 measured
    assert bench.parse_args([]).steps == 30
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", "1"])  # nothing left to measure after the warm-up


def test_gmpo_side_steps_with_a_breakdown_that_adds_up(bench, tmp_path):
    # the tiny random model rarely earns a reward, so every group would be inert (skipped): train every row
    args, cfg, overrides, side, tok = _side(bench, tmp_path, extra=["train.skip_zero_advantage=false"])
    assert "train.mini_batch_size=0" in overrides and cfg.optim.lr == 1e-5 and cfg.optim.warmup_steps == 0
    assert cfg.rollout.group_size == 4  # extra overrides apply after the reference ones
    recs = [side.step() for _ in range(2)]  # GMPOTrainer.step(), the public step API
    assert side.trainer.global_step == 2
    summary = side.close()
    assert summary["steps"] == 2 and summary["rollbacks"] == 0
    logged = [json.loads(line)["step"] for line in (tmp_path / "gmpo" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2]  # the steps went through the trainer's own logging
    for rec in recs:
        ph = rec["phases"]
        assert set(ph) == set(bench.PHASES)
        assert ph["forward"] > 0 and ph["backward"] > 0 and ph["optimizer"] > 0 and ph["rollout/prefill"] > 0
        assert sum(ph.values()) == pytest.approx(rec["s"], rel=1e-6) or ph["other"] == 0.0
        assert 0.0 <= rec["reward"] <= 1.0
        m = rec["metrics"]
        assert m["perf/mfu"] > 0  # training FLOPs / train seconds / measured peak
    # the trainer's FLOP rate is 6 x params x tokens over the training phase
    rate = recs[-1]["metrics"]["perf/mfu"] * side.trainer.peak_flops * recs[-1]["metrics"]["perf/train_s"]
    assert rate / (6 * side.trainer.n_params) == pytest.approx(round(rate / (6 * side.trainer.n_params)), rel=1e-3)


def test_breakdown_hand_values(bench):
    m = {"perf/rollout_s": 5.0, "perf/reward_s": 0.5}
    ph = bench.breakdown(10.0, m, {"rollout/prefill": 1.0, "forward": 1.5, "backward": 2.0, "optimizer": 0.25})
    assert ph == {"rollout/prefill": 1.0, "rollout/decode": 4.0, "reward": 0.5, "forward": 1.5, "backward": 2.0,
                  "optimizer": 0.25, "other": 0.75}
    no_prefill = bench.breakdown(4.0, m, {})
    assert no_prefill["rollout/decode"] == 5.0 and no_prefill["other"] == 0.0  # never negative


def test_training_flops():
    assert training_flops(100, 10) == 6000.0
    assert training_flops(100, 10, no_grad_tokens=5) == 7000.0


def test_trl_reward_zeroes_truncated_and_records_means(bench, tmp_path):
    args, cfg, _, side, tok = _side(bench, tmp_path)
    eos = tok.eos_token_id
    reward = bench.TrlReward(cfg, max_len=4, eos_ids=[eos])
    out = reward(["p"] * 4, ["7", "7", "7", "8"], completion_ids=[[1, 2], [1, 2, 3, 4], [1, 2, 3, eos], [1]],
                 answer=["7", "7", "7", "7"], question=["3 + 4", "3 + 4", "3 + 4", "3 + 4"])
    assert out == [1.0, 0.0, 1.0, 0.0]  # row 1 hit the 4-token cap without EOS; row 3 is wrong
    assert reward.means == [0.5]


def test_trl_dataset_keeps_gmpo_order_and_rendered_prompts(bench, tmp_path):
    args, cfg, _, side, tok = _side(bench, tmp_path)
    batches = bench.draw_prompts(cfg, tok, 2)
    first = side.trainer.loader.next_batch()  # the trainer's own loader draws the same prompts
    assert [it["prompt"] for it in batches[0]] == [it["prompt"] for it in first]
    ds = bench.trl_dataset(batches)
    assert len(ds) == 2 * cfg.rollout.prompts_per_step
    assert ds[0]["prompt"] == batches[0][0]["prompt_text"] and ds[0]["question"] == batches[0][0]["prompt"]
    assert ds[cfg.rollout.prompts_per_step]["answer"] == batches[1][0]["answer"]
    assert tok(ds[0]["prompt"], add_special_tokens=False)["input_ids"] == batches[0][0]["prompt_ids"]


def test_report_contains_ratio_curves_and_breakdown(bench, tmp_path):
    args = bench.parse_args(["--steps", "3"])
    ph = {p: 0.1 for p in bench.PHASES}
    gm = [{"s": s, "reward": r, "metrics": {"perf/mfu": 0.1, "perf/train_s": 1.0}, "phases": ph}
          for s, r in ((9.0, 0.1), (2.0, 0.2), (4.0, 0.3))]
    info = {"argv": ["--steps", "3"], "machine": "m", "load_start": "0", "load_end": "0", "model": "x",
            "n_params": 1e6, "device": "cpu", "overrides": ["a=b"], "gmpo_bf16": True, "trl_version": "1",
            "trl_precision": "bf16", "trl_s": [50.0, 30.0, 40.0], "trl_rewards": [0.1, 0.1, 0.2], "gmpo": gm,
            "rollout": {"engine": 500.0, "hf": 100.0, "rows": 64, "max_new": 32, "bf16": True}, "temperature": 1.0,
            "peak_flops": 1e12, "peak_dtype": "bf16", "rss_peak": 1000.0, "rss_models": 500.0}
    text = bench.report(args, info)
    assert "| median step (s) | 35.00 | 3.00 | **11.7x** |" in text  # warm-up step 1 left out of both medians
    assert "| TRL | 0.10 | 0.10 | 0.20 |" in text and "| gmpo | 0.10 | 0.20 | 0.30 |" in text
    assert "5.0x" in text  # engine vs generate
    assert "100 GFLOP/s model FLOPs" in text and "10.0% of the bf16 matmul peak" in text
    assert "not below TRL's): **yes** (too few steps" in text  # 0.2 (gmpo, last steps) >= 0.133 (TRL)


def test_peak_rss_since_reset_sees_a_new_allocation(bench):
    bench.reset_peak_rss()
    before = bench.peak_rss_since_reset_mb()
    if before != before:
        pytest.skip("no /proc/self/status")
    # A fresh anonymous mapping in 4 KB pages, every page written: the pages cannot come from memory the
    # allocator kept, and with 16384 faults the kernel's lazily synced RSS counters must catch up (with
    # transparent huge pages 64 MB is only 32 faults, below the per-task sync threshold of 64).
    size = 64 * 2**20
    block = mmap.mmap(-1, size)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        block.madvise(mmap.MADV_NOHUGEPAGE)
    for off in range(0, size, 4096):
        block[off] = 1
    assert bench.peak_rss_since_reset_mb() >= before + 60
    block.close()


@pytest.mark.slow
def test_full_benchmark_with_trl_on_the_tiny_model(bench, tmp_path, capsys):
    pytest.importorskip("trl")
    out = tmp_path / "RESULTS.md"
    assert bench.main(["--model", "tiny", "--measure-only", "1", "--threads", "1", "--gen-reps", "1",
                       "--results", str(out)]) == 0
    text = out.read_text()
    assert "## Step time vs TRL GMPOTrainer" in text and "TRL / gmpo" in text
