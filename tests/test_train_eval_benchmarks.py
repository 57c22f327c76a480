"""Issue 4 item 4: math benchmarks evaluated during training (start, every N steps, end) as eval/<name>."""
import json

import torch
import yaml

from gmpo.cli import main


def test_benchmarks_logged_during_training(tmp_path, tiny_model_dir, shared_data):
    threads = torch.get_num_threads()
    cfg = {
        "model": {"name_or_path": str(tiny_model_dir)},
        "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4, "truncated_reward": "keep"},
        "rewards": [{"name": "arithmetic"}],
        "train": {"steps": 2, "micro_batch_size": 4, "bf16": "false", "threads": 1, "output_dir": str(tmp_path / "run")},
        "data": {"eval_size": 2},
        "eval": {"every": 1, "benchmarks": ["gsm8k", "math500"], "data_dir": str(shared_data), "limit": 2,
                 "max_new_tokens": 4},
        "log": {"progress": False},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        assert main(["train", str(path)]) == 0
    finally:
        torch.set_num_threads(threads)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in records}
    for step in (0, 1, 2):  # before training, after every step (eval.every=1), at the end
        for name in ("eval/gsm8k", "eval/math500", "eval/accuracy"):
            assert name in by_step[step], (step, name)
            assert 0.0 <= by_step[step][name] <= 1.0
    # A random 4-token policy cannot solve GSM8K or MATH500: the graders must not credit it.
    assert by_step[2]["eval/gsm8k"] == 0.0 and by_step[2]["eval/math500"] == 0.0
