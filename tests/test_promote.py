"""Eval-gated promotion on the tiny model: a good candidate (trained to answer with a digit) is promoted, a
candidate trained from it with the inverted reward is rejected and nothing moves, rollback restores the
previous version; the paired statistics against hand-computed values; kill -9 during `gmpo promote`."""
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from gmpo.runs.gate import GateError, bootstrap_lower, decide, mcnemar_noninferiority, paired_counts, parse_gate
from gmpo.runs.model_registry import ModelRegistry, RegistryError
from test_model_registry import ROOT, verb_cmd

DIGIT, NOT_DIGIT = "^[0-9]", "^[^0-9]"


def write_task(d: Path) -> tuple[Path, Path]:
    """(training file, gate YAML): 'Say one: i' prompts; correct = the completion starts with a digit."""
    d.mkdir(parents=True, exist_ok=True)
    train = d / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"Say one: {i}", "answer": "1"}) + "\n" for i in range(64)))
    held = d / "heldout.jsonl"
    held.write_text("".join(json.dumps({"prompt": f"Say one: {i}", "answer": "1"}) + "\n" for i in range(500, 532)))
    gate = d / "gate.yaml"
    gate.write_text(yaml.safe_dump({
        "sets": {"digits": {"source": str(held), "reward": {"name": "format", "kwargs": {"pattern": DIGIT}}, "size": 32}},
        "decoding": {"max_new_tokens": 4, "batch_size": 32}, "floors": {"digits": 0.5},
        "non_inferiority": {"delta": 0.05, "test": "bootstrap", "alpha": 0.05, "n_boot": 2000}}))
    return train, gate


def train_tiny(model: str, out: Path, data: Path, pattern: str, steps: int) -> Path:
    """Train the tiny model with the format reward `pattern` (lr 0.03: it learns in ~10 steps); final checkpoint."""
    from gmpo.config import make_config
    from gmpo.runs.checkpoint import checkpoint_dirs
    from gmpo.train import GMPOTrainer

    cfg = make_config(overrides={
        "model.name_or_path": model, "data.dataset": str(data), "data.eval_dataset": str(data),
        "rewards": [{"name": "format", "kwargs": {"pattern": pattern}}], "rollout.max_new_tokens": 4,
        "optim.lr": 0.03, "train.steps": steps, "train.output_dir": str(out), "train.bf16": "false",
        "log.progress": False, "log.print_every": 100, "eval.at_start": False, "eval.at_end": False})
    GMPOTrainer(config=cfg).train()
    return checkpoint_dirs(out / "checkpoints")[-1]


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory):
    """Registry with v1 = random tiny model (production), v2 = trained to answer with a digit, v3 = v2 trained
    further with the inverted reward (rewarding non-digit answers)."""
    import torch

    from gmpo.testing import save_tiny

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("lifecycle")
    train, gate = write_task(d)
    base = save_tiny(d / "base")
    good = train_tiny(str(base), d / "good", train, DIGIT, 11)
    bad = train_tiny(str(good), d / "bad", train, NOT_DIGIT, 8)
    reg = ModelRegistry(d / "reg.db")
    reg.add(base, "tiny", alias="production")
    reg.add(good, "tiny", parent=1)
    reg.add(bad, "tiny", parent=2)
    reg.close()
    return d / "reg.db", gate


def test_gate_promotes_good_rejects_inverted_then_rollback(lifecycle, monkeypatch):
    from gmpo.cli import main
    from gmpo.models import load_model, resolve_model_ref

    reg_path, gate = lifecycle
    reg = ModelRegistry(reg_path)
    dry = ["promote", "tiny", "--candidate", "2", "--gate", str(gate), "--registry", str(reg_path), "--dry-run"]
    assert main(dry) == 0 and reg.aliases("tiny") == {"production": 1}  # passes, moves nothing
    assert [(r["passed"], r["applied"]) for r in reg.reports("tiny")] == [(1, 0)]
    assert main(["promote", "tiny", "--candidate", "2", "--gate", str(gate), "--registry", str(reg_path)]) == 0
    assert reg.aliases("tiny") == {"production": 2, "previous": 1}
    good = json.loads(Path(reg.reports("tiny")[-1]["json_path"]).read_text())
    row = good["sets"][0]
    assert good["passed"] and good["applied"] and row["n"] == 32
    assert row["candidate"] >= 0.9 and row["production"] <= 0.1 and row["lower"] > 0.5

    # the inverted-reward candidate: rejected, nothing moves, the report says why
    assert main(["promote", "tiny", "--candidate", "3", "--gate", str(gate), "--registry", str(reg_path)]) == 3
    assert reg.aliases("tiny") == {"production": 2, "previous": 1}
    rep = reg.reports("tiny")[-1]
    bad = json.loads(Path(rep["json_path"]).read_text())
    assert (rep["passed"], rep["applied"], rep["candidate"], rep["production"]) == (0, 0, 3, 2)
    assert bad["sets"][0]["candidate"] <= 0.1 and bad["sets"][0]["production"] >= 0.9
    assert any("floor" in r for r in bad["reasons"]) and any("not non-inferior" in r for r in bad["reasons"])
    md = Path(rep["md_path"]).read_text()
    assert "**FAIL** (nothing moved)" in md and "| digits | 32 |" in md

    # rollback: production <- previous, recorded; registry refs load the restored version
    assert main(["rollback", "tiny", "--registry", str(reg_path)]) == 0
    assert reg.aliases("tiny") == {"production": 1}
    last = reg.history("tiny")[-2:]
    assert [(h["alias"], h["old_version"], h["new_version"]) for h in last] == [("production", 2, 1), ("previous", 1, None)]
    assert main(["rollback", "tiny", "--registry", str(reg_path)]) == 1  # no previous left: a clear error
    monkeypatch.setenv("GMPO_REGISTRY", str(reg_path))
    assert resolve_model_ref("registry:tiny@production") == reg.get("tiny", 1).path
    model, _ = load_model("registry:tiny")
    assert model.config.hidden_size == 64
    with pytest.raises(RegistryError, match="already production"):
        from gmpo.runs.promotion import promote

        promote(reg, "tiny", 1, gate)
    reg.close()


def test_paired_statistics_by_hand():
    cand = [True] * 2 + [False] * 10 + [True] * 50 + [False] * 38  # c=2 only-candidate, b=10 only-production
    prod = [False] * 2 + [True] * 10 + [True] * 50 + [False] * 38
    t = paired_counts(cand, prod)
    assert t == {"n": 100, "both": 50, "prod_only": 10, "cand_only": 2, "neither": 38}
    m = mcnemar_noninferiority(t, delta=0.05, alpha=0.05)
    # d = -0.08, se^2 = (0.12 - 0.0064) / 100, z = (-0.08 + 0.05) / 0.0337 = -0.890; exact McNemar p =
    # 2 * P(Binom(12, 1/2) <= 2) = 2 * 79 / 4096
    assert m["z"] == pytest.approx(-0.8901, abs=1e-3) and not m["passed"]
    assert m["p_equal"] == pytest.approx(2 * 79 / 4096, rel=1e-6)
    lower = bootstrap_lower(t, 0.05, 20000, 0)
    assert lower == pytest.approx(-0.08 - 1.645 * 0.0337, abs=0.01)  # ~ the normal approximation
    same = paired_counts([True, False] * 50, [True, False] * 50)
    assert bootstrap_lower(same, 0.05, 1000, 0) == 0.0 and mcnemar_noninferiority(same, 0.05, 0.05)["passed"]
    for floor, n_reasons in [(0.5, 1), (0.6, 2)]:  # candidate accuracy 0.52: above one floor, below the other
        gate = parse_gate({"sets": {"s": {"source": "x.jsonl"}}, "floors": {"s": floor},
                           "non_inferiority": {"test": "mcnemar"}})
        verdict = decide(gate, {"s": cand}, {"s": prod})
        assert not verdict["passed"] and len(verdict["reasons"]) == n_reasons
        assert verdict["sets"][0]["candidate"] == 0.52 and "not non-inferior: mcnemar" in verdict["reasons"][-1]


def test_gate_file_errors():
    with pytest.raises(GateError, match="unknown key.*thresholds"):
        parse_gate({"sets": {"s": {"source": "a"}}, "thresholds": {}})
    with pytest.raises(GateError, match="exactly one of source"):
        parse_gate({"sets": {"s": {"source": "a", "benchmark": "gsm8k"}}})
    with pytest.raises(GateError, match="floors: t not among the sets"):
        parse_gate({"sets": {"s": {"source": "a"}}, "floors": {"t": 0.5}})
    with pytest.raises(GateError, match="test must be one of"):
        parse_gate({"sets": {"s": {"source": "a"}}, "non_inferiority": {"test": "ttest"}})
    with pytest.raises(GateError, match="sets.s: unknown key.*szie"):
        parse_gate({"sets": {"s": {"source": "a", "szie": 3}}})


def test_kill9_during_promote(lifecycle, tmp_path):
    """SIGKILL `gmpo promote` after the report files, inside the alias transaction and after the commit:
    production is always the old or the new version, complete and loadable."""
    from transformers import AutoModelForCausalLM

    src_reg, gate = lifecycle
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # point -> whether production has moved when the process dies there (every point before the transaction
    # behaves as promote:report_written: a report file may exist, no row, no move)
    points = {"promote:report_written": False, "aliases:moved": False, "promote:committed": True}
    src = ModelRegistry(src_reg)
    procs = {}
    for point in points:  # one registry per trial; the processes run at once
        reg = ModelRegistry(tmp_path / point.replace(":", "_") / "reg.db")
        for v in (1, 2):
            reg.add(src.get("tiny", v).path, "tiny", alias="production" if v == 1 else None)
        reg.close()
        procs[point] = subprocess.Popen(verb_cmd("promote", "tiny", "--candidate", "2", "--gate", gate, "--registry",
                                                 reg.path), env={**env, "GMPO_CRASH_AT": point}, cwd=ROOT,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    src.close()
    for point, moved in points.items():
        err = procs[point].communicate(timeout=300)[1]
        assert procs[point].returncode == -signal.SIGKILL, (point, err[-800:])
        reg = ModelRegistry(tmp_path / point.replace(":", "_") / "reg.db")
        assert reg.check()["problems"] == []
        want = {"production": 2, "previous": 1} if moved else {"production": 1}
        assert reg.aliases("tiny") == want, point
        assert len(reg.reports("tiny")) == int(moved)  # the report row commits with the moves, or not at all
        AutoModelForCausalLM.from_pretrained(reg.resolve("tiny@production").path)
        reg.close()


def test_benchmark_sets_pair_item_by_item(shared_data, tiny_model_dir):
    """A `gmpo eval` benchmark as a gate set: per-problem verdicts from its grader, and its problems count as
    gate prompts for the contamination check."""
    from gmpo.runs.gate import gate_prompts
    from gmpo.runs.promotion import evaluate_model

    gate = parse_gate({"sets": {"gsm8k": {"benchmark": "gsm8k", "data_dir": str(shared_data), "size": 3}},
                       "decoding": {"max_new_tokens": 4}})
    prompts = gate_prompts(gate)["gsm8k"]
    assert len(prompts) == 3 and any(p.startswith("janet’s ducks lay 16 eggs per day") for p in prompts)
    verdicts, extra = evaluate_model(str(tiny_model_dir), gate)
    assert verdicts == {"gsm8k": [False, False, False]}  # a random model: wrong, but graded per problem
    assert extra["examples"]["gsm8k"][0]["answer"] == "18"
