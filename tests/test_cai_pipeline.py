"""The whole Constitutional-AI pipeline offline on the tiny model, through the shipped recipes:
gmpo cai generate -> gmpo sft configs/cai_sft.yaml -> gmpo train configs/cai_rlaif_gmpo.yaml (2 GMPO steps)."""
import json
from pathlib import Path

from gmpo.cli import main
from gmpo.runs.files import METRICS, read_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_generate_sft_rlaif_offline(tmp_path, tiny_model_dir, shared_data, one_thread):
    data, sft, rl = tmp_path / "data", tmp_path / "sft", tmp_path / "rlaif"
    common = ["train.device=cpu", "train.threads=1", "log.progress=false"]
    assert main(["cai", "generate", "--prompts", str(shared_data / "redteam_prompts.jsonl"), "--model",
                 str(tiny_model_dir), "--out", str(data), "--limit", "6", "--batch-size", "6",
                 "--max-new-tokens", "12", "--threads", "1", "--device", "cpu"]) == 0
    assert len((data / "sft.jsonl").read_text().splitlines()) == 6
    assert len((data / "prompts" / "eval.jsonl").read_text().splitlines()) == 200
    assert main(["sft", str(CONFIGS / "cai_sft.yaml"), f"model.name_or_path={tiny_model_dir}",
                 f"sft.dataset={data / 'sft.jsonl'}", "sft.eval_size=2", "sft.batch_size=2", "train.micro_batch_size=2",
                 "train.steps=2", f"train.output_dir={sft}", "optim.warmup_steps=0", *common]) == 0
    assert (sft / "final" / "model.safetensors").is_file()
    judge = json.dumps([{"name": "constitution_judge", "kwargs": {"judge": str(tiny_model_dir), "mode": "pairwise"}}])
    assert main(["train", str(CONFIGS / "cai_rlaif_gmpo.yaml"), f"model.name_or_path={sft / 'final'}",
                 f"data.dataset={data / 'prompts' / 'train.jsonl'}", f"data.eval_dataset={data / 'prompts' / 'eval.jsonl'}",
                 f"rewards={judge}", "data.eval_size=4", "data.max_prompt_tokens=2048", "rollout.prompts_per_step=2",
                 "rollout.max_new_tokens=12", "eval.max_new_tokens=12", "algorithm.overlong.buffer=4", "train.steps=2",
                 f"train.output_dir={rl}", *common]) == 0
    ms = read_metrics(rl / METRICS)
    steps = [m for m in ms if "reward/mean" in m]
    assert len(steps) == 2 and "eval/accuracy" in ms[0] and "eval/accuracy" in ms[-1]
    samples = [json.loads(x) for x in (rl / "samples.jsonl").read_text().splitlines()]
    judged = [s["rewards"]["constitution_judge"] for s in samples]
    assert judged and all(0.0 <= r <= 1.0 for r in judged)
    assert (rl / "checkpoints").is_dir()
