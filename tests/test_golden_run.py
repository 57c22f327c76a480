"""Golden run: the safety net pinned on the code before the operations-layer refactor (issue 16).

Three steps each of gmpo, grpo token-mean and dapo on the tiny model, with 2 mini-batches per rollout
batch (so off-policy updates, clipping and old-log-prob handling all run), through the real entry point
`gmpo train`. Every step's loss/value, grad/norm and reward/mean and a checksum of the final weights must
equal the values recorded in tests/golden/golden_run.json. The recorded file was written by the code as
it was before the refactor (``GMPO_WRITE_GOLDEN=1`` rewrites it: do that only for an intended change of
the numbers, and say so in the commit).

The values are exact for the library versions they were recorded with (``_recorded_with``: torch and
transformers major.minor); under other versions float rounding differs (seen: 1e-6 relative with
transformers 5.17), so there the comparison is to 1e-4 relative: the same run, not the same bits.

dapo runs with ``algorithm.overlong.penalty=0`` so that its shaped reward equals the accuracy and the
dynamic-sampling filter metric (a defect fixed in the same issue) cannot change what it keeps.
"""
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from gmpo.cli import main

GOLDEN = Path(__file__).parent / "golden" / "golden_run.json"
CASES = {
    "gmpo": {"loss": "gmpo"},
    "grpo_token_mean": {"loss": "grpo", "reduction": "token-mean"},
    "dapo": {"loss": "dapo", "overlong": {"penalty": 0.0}},
}

pytestmark = pytest.mark.usefixtures("one_thread")


def parity_reward(prompts, completions, **columns):
    """1 when the completion's character codes sum to an even number: signal inside every group."""
    return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


def _run(tmp_path, tiny_model_dir, name, algo) -> dict:
    cfg = {
        "model": {"name_or_path": str(tiny_model_dir)},
        "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 8, "truncated_reward": "keep"},
        "algorithm": algo,
        "optim": {"lr": 1e-2},
        "rewards": [{"name": f"{__file__}:parity_reward"}],
        "train": {"steps": 3, "mini_batch_size": 4, "micro_batch_size": 2, "bf16": "false", "threads": 1,
                  "seed": 11, "output_dir": str(tmp_path / name)},
        "data": {"eval_size": 4},
        "eval": {"at_start": False, "at_end": False},
        "guard": {"enabled": False},
        "log": {"progress": False, "print_every": 0},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    run = tmp_path / name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss/value" in r]
    from safetensors.torch import load_file

    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    weights = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        weights.update(load_file(f))
    flat = torch.cat([weights[k].double().reshape(-1) for k in sorted(weights)])
    return {
        "loss/value": [r["loss/value"] for r in rows],
        "grad/norm": [r["grad/norm"] for r in rows],
        "reward/mean": [r["reward/mean"] for r in rows],
        "weights_sum": float(flat.sum()),
        "weights_abs_sum": float(flat.abs().sum()),
        "weights_sq_sum": float((flat * flat).sum()),
    }


@pytest.mark.parametrize("name", list(CASES))
def test_golden_run(tmp_path, tiny_model_dir, name):
    got = _run(tmp_path, tiny_model_dir, name, CASES[name])
    if os.environ.get("GMPO_WRITE_GOLDEN") == "1":
        data = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        data[name], data["_recorded_with"] = got, _versions()
        GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        pytest.skip("golden values written")
    golden = json.loads(GOLDEN.read_text())
    want = golden[name]
    same = golden["_recorded_with"] == _versions()
    assert len(got["loss/value"]) == 3
    for key in ("loss/value", "grad/norm", "reward/mean"):
        assert got[key] == pytest.approx(want[key], rel=1e-6 if same else 1e-4, abs=1e-9), key
    for key in ("weights_sum", "weights_abs_sum", "weights_sq_sum"):
        assert got[key] == pytest.approx(want[key], rel=1e-9 if same else 1e-4, abs=1e-9), key


def _versions() -> dict:
    import transformers

    mm = lambda v: ".".join(v.split("+")[0].split(".")[:2])  # noqa: E731
    return {"torch": mm(torch.__version__), "transformers": mm(transformers.__version__)}
