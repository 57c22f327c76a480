"""Continual learning: batch validation (every bad row reported with file, row and field, and quarantined),
contaminated data flagged, a guard event failing the safety probe, and a two-batch loop on the tiny model
killed with SIGKILL inside its promotion, then resumed: the cycle finishes once, nothing is added twice."""
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from gmpo.runs.model_registry import ModelRegistry
from gmpo.runs.validate import ValidateConfig, arithmetic_value, validate_batch
from test_model_registry import ROOT, verb_cmd
from test_promote import DIGIT, write_task


def _jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_validation_reports_and_quarantines_every_bad_row(tmp_path):
    from gmpo.runs.gate import gate_prompts, parse_gate

    gate = parse_gate({"sets": {"heldout": {"source": "arithmetic", "size": 20}}})
    gate_sets = gate_prompts(gate)
    leaked = sorted(gate_sets["heldout"])[0]  # a gate prompt, in another case and spacing
    rows = [{"prompt": "What is 1 + 2? Answer with just the number.", "answer": "3"},   # line 1 ok
            {"prompt": "What is 2 + 2? Answer with just the number.", "answer": 5},     # 2 wrong answer
            {"prompt": "  ", "answer": "1"},                                            # 3 empty prompt
            {"question": "What is 3 + 3?", "answer": "6"},                              # 4 missing prompt
            {"prompt": "What is 4 + 4? Answer with just the number.", "answer": "eight"},  # 5 not an integer
            '{"prompt": "What is 5 + 5?", "answer": ',                                   # 6 invalid JSON
            {"prompt": "what is 1 +  2? answer with just the number.", "answer": "3"},  # 7 duplicate of 1
            {"prompt": leaked.upper(), "answer": "0"},                                   # 8 contamination
            {"prompt": "What is 7 * 3 - 1? Answer with just the number.", "answer": "20"},  # 9 ok
            {"prompt": "What is 9 - 4? Answer with just the number.", "answer": ""}]    # 10 empty answer
    batch = _jsonl(tmp_path / "b.jsonl", rows)
    v = validate_batch(batch, ValidateConfig(answer_type="integer", check_arithmetic=True), gate_sets)
    got = {b["row"]: (b["field"], b["kind"]) for b in v.bad}
    assert got == {2: ("answer", "wrong_answer"), 3: ("prompt", "empty"), 4: ("prompt", "schema"),
                   5: ("answer", "schema"), 6: ("(line)", "schema"), 7: ("prompt", "duplicate"),
                   8: ("prompt", "contamination"), 10: ("answer", "empty")}
    assert all(b["file"] == str(batch) for b in v.bad)
    assert "duplicate of row 1" in next(b["reason"] for b in v.bad if b["row"] == 7)
    assert "gate's evaluation set heldout" in next(b["reason"] for b in v.bad if b["row"] == 8)
    assert [c["answer"] for c in v.clean] == ["3", "20"] and v.n_rows == 10
    assert "8 of 10 rows are bad" in v.rejected  # > max_bad_fraction 0.5: the batch is rejected whole
    assert arithmetic_value("What is 7 * 3 - 1 + 2 * 2?") == 24 and arithmetic_value("Name a color") is None
    ok = validate_batch(batch, ValidateConfig(max_bad_fraction=0.9, answer_type="text"), None)
    assert ok.rejected == "" and {b["kind"] for b in ok.bad} == {"schema", "empty", "duplicate"}


def _recipe(d: Path, gate: Path, **probe) -> Path:
    cfg = {"name": "tiny", "gate": str(gate), "work_dir": str(d / "work"), "seed": 0,
           "validate": {"answer_type": "integer", "min_rows": 8, "max_bad_fraction": 0.5},
           "probe": {"steps": 2, "rows": 16, **probe},
           "train": {"overrides": {"rewards": [{"name": "format", "kwargs": {"pattern": DIGIT}}],
                                   "rollout.max_new_tokens": 4, "optim.lr": 0.03, "train.steps": 11,
                                   "train.bf16": "false", "log.print_every": 100, "train.save_every": 5}}}
    path = d / "continual.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def setup(tmp_path, one_thread):
    from gmpo.testing import save_tiny

    train, gate = write_task(tmp_path / "task")
    reg = ModelRegistry(tmp_path / "reg.db")
    reg.add(save_tiny(tmp_path / "base"), "tiny", alias="production")
    reg.close()
    incoming = tmp_path / "incoming"
    _jsonl(incoming / "b1_good.jsonl", [json.loads(line) for line in train.read_text().splitlines()])
    held = [{"prompt": f"Say one: {i}", "answer": "1"} for i in range(500, 520)]  # the gate's own prompts
    _jsonl(incoming / "b2_contaminated.jsonl", held + [{"prompt": "Say one: 9000", "answer": "1"}] * 3)
    return tmp_path, gate, incoming


def test_probe_fails_on_a_guard_stop(setup):
    from gmpo.runs.continual import ContinualLoop, load_continual

    d, gate, incoming = setup
    (incoming / "b2_contaminated.jsonl").unlink()
    # an entropy floor above any entropy: the guard's entropy-collapse detector stops the probe at step 1
    cfg = load_continual(_recipe(d, gate, overrides={"guard.entropy_action": "stop", "guard.entropy_floor": 100.0}))
    reg = ModelRegistry(d / "reg.db")
    (cycle,) = ContinualLoop(cfg, reg).run(incoming)
    assert cycle["state"] == "rejected" and "safety probe: guard entropy_collapse -> stop at step 1" in cycle["decision"]
    assert cycle["details"]["probe"]["events"] >= 1 and cycle["candidate"] is None
    assert reg.aliases("tiny") == {"production": 1} and len(reg.versions("tiny")) == 1
    reg.close()


def test_loop_killed_in_promotion_resumes_and_flags_contamination(setup):
    from gmpo.runs.continual import ContinualLoop, load_continual

    d, gate, incoming = setup
    recipe = _recipe(d, gate)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GMPO_CRASH_AT": "aliases:moved"}
    r = subprocess.run(verb_cmd("continual", recipe, "--incoming", incoming, "--registry", d / "reg.db"),
                       env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == -signal.SIGKILL, r.stderr[-1500:]
    reg = ModelRegistry(d / "reg.db")
    assert reg.check()["problems"] == [] and reg.aliases("tiny") == {"production": 1, "candidate": 2}
    loop = ContinualLoop(load_continual(recipe), reg)
    assert [c["state"] for c in loop.cycles()] == ["trained"]  # killed inside the gate's transaction

    first, second = loop.run(incoming)  # resumes: the gate again (no retraining, no second add), then batch 2
    assert first["state"] == "promoted" and first["candidate"] == 2 and first["base_version"] == 1
    assert reg.aliases("tiny") == {"production": 2, "previous": 1, "candidate": 2}
    assert [v.version for v in reg.versions("tiny")] == [1, 2]
    assert reg.get("tiny", 2).parent == 1 and reg.get("tiny", 2).data_fingerprint == first["sha256"]
    report = json.loads(Path(first["details"]["report_json"]).read_text())
    assert report["passed"] and report["sets"][0]["candidate"] >= 0.9 and report["context"].startswith("continual:")

    assert second["state"] == "rejected" and "validation" in second["decision"]
    quarantined = [json.loads(line) for line in Path(second["details"]["quarantine"]).read_text().splitlines()]
    assert len(quarantined) == 22  # 20 gate prompts + 2 duplicates, each with file, row and field
    assert sum(q["kind"] == "contamination" for q in quarantined) == 20
    assert {(q["row"], q["field"], q["kind"]) for q in quarantined if q["kind"] == "duplicate"} == \
        {(22, "prompt", "duplicate"), (23, "prompt", "duplicate")}
    assert all(q["file"].endswith("b2_contaminated.jsonl") for q in quarantined)

    again = loop.run(incoming)  # nothing new: both batches are final and skipped
    assert [c["updated"] for c in again] == [first["updated"], second["updated"]]
    assert len(reg.reports("tiny")) == 1
    reg.close()
