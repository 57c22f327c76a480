"""Model registry: round trip, copies verified by sha256, alias moves and history, two processes moving one
alias concurrently, kill -9 during `add` at named points and at varied delays (issue 11)."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gmpo.runs.model_registry import AliasConflict, ModelRegistry, RegistryError, parse_ref

ROOT = Path(__file__).resolve().parents[1]
# runs one verb's module directly: `gmpo --help` imports every verb (some import torch: seconds per process)
VERB = "import argparse, importlib, sys; m = importlib.import_module('gmpo.commands.' + sys.argv[1]); " \
       "p = argparse.ArgumentParser(); m.add_arguments(p); sys.exit(m.run(p.parse_args(sys.argv[2:])))"


def verb_cmd(verb: str, *args) -> list[str]:
    """argv running `gmpo VERB ARGS...` in a fresh process."""
    return [sys.executable, "-c", VERB, verb, *map(str, args)]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def reg(tmp_path):
    r = ModelRegistry(tmp_path / "reg.db")
    yield r
    r.close()


def test_round_trip(reg, tiny_model_dir, tmp_path):
    v1 = reg.add(tiny_model_dir, "tiny", alias="production")
    assert (v1.name, v1.version, v1.aliases) == ("tiny", 1, ["production"])
    assert v1.sha256 == _sha(Path(tiny_model_dir) / "model.safetensors")
    assert Path(v1.path).parent.parent == reg.root / "models"  # a copy in the registry-owned store
    assert set(v1.files) >= {"config.json", "model.safetensors", "tokenizer.json"}
    v2 = reg.add(tiny_model_dir, "tiny", parent=1, run_dir="runs/x", config={"optim": {"lr": 1e-5}},
                 data_fingerprint="abc", eval_results={"acc": 0.5})
    again = ModelRegistry(reg.path).resolve("tiny@2")  # a fresh connection reads everything back
    assert (again.parent, again.run_dir, again.config, again.data_fingerprint, again.eval_results) == \
        (1, "runs/x", {"optim": {"lr": 1e-5}}, "abc", {"acc": 0.5})
    assert again.path != v1.path and again.created >= v1.created and again.created_by
    for ref, want in [("tiny", 1), ("tiny@production", 1), ("tiny@2", 2), ("tiny@v2", 2)]:
        assert reg.resolve(ref).version == want
    reg.set_alias("tiny", "production", 2, "manual")
    reg.set_alias("tiny", "staging", 1)
    reg.set_alias("tiny", "staging", None)
    assert reg.aliases("tiny") == {"production": 2}
    moves = [(h["alias"], h["old_version"], h["new_version"]) for h in reg.history("tiny")]
    assert moves == [("production", None, 1), ("production", 1, 2), ("staging", None, 1), ("staging", 1, None)]
    assert [v.version for v in reg.versions("tiny")] == [1, 2] and reg.names() == ["tiny"]
    assert reg.check() == {"problems": [], "orphans": []}
    # compare-and-swap: a promotion evaluated against production 1 must not move it now that it is 2
    with pytest.raises(AliasConflict, match="production is 2, expected 1"):
        reg.move_aliases("tiny", {"production": 1, "previous": 2}, "stale promotion", expect={"production": 1})
    assert reg.aliases("tiny") == {"production": 2} and len(reg.history("tiny")) == 4


def test_errors_name_the_problem(reg, tiny_model_dir, tmp_path):
    reg.add(tiny_model_dir, "tiny")
    with pytest.raises(RegistryError, match="no version 7 .*versions: 1"):
        reg.resolve("tiny@7")
    with pytest.raises(RegistryError, match="no alias 'production'"):
        reg.resolve("tiny")
    with pytest.raises(RegistryError, match="no model named 'other'.*known: tiny"):
        reg.resolve("other@production")
    with pytest.raises(RegistryError, match="no version 9"):
        reg.set_alias("tiny", "production", 9)
    with pytest.raises(RegistryError, match="invalid model name"):
        parse_ref("bad name@x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="no config.json"):
        reg.add(tmp_path / "empty", "tiny")
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(RegistryError, match="no \\*.safetensors"):
        reg.add(tmp_path / "empty", "tiny")
    half = tmp_path / "run" / "checkpoints" / "step_000003"  # a checkpoint without meta.json is incomplete
    half.mkdir(parents=True)
    for f in Path(tiny_model_dir).iterdir():
        (half / f.name).write_bytes(f.read_bytes())
    with pytest.raises(RegistryError, match="without meta.json"):
        reg.add(half, "tiny")
    (half / "meta.json").write_text("{}")
    (half / "trainer_state.pt").write_bytes(b"optimizer state")
    from gmpo.cli import main

    assert main(["registry", "--registry", str(reg.path), "add", str(tmp_path / "run"), "--name", "tiny"]) == 0
    mv = reg.resolve("tiny@2")  # the run directory's newest complete checkpoint, its run directory recorded
    assert mv.source == str(half) and mv.run_dir == str(tmp_path / "run")
    assert "trainer_state.pt" not in mv.files and "meta.json" not in mv.files


def test_copy_survives_source_and_damage_is_detected(reg, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from gmpo.models import resolve_model_ref
    from gmpo.testing import save_tiny

    src = save_tiny(tmp_path / "src")
    mv = reg.add(src, "tiny", alias="production")
    for f in Path(src).iterdir():
        f.unlink()  # the run directory rotated its checkpoints away: the registry's copy remains
    monkeypatch.setenv("GMPO_REGISTRY", str(reg.path))
    path = resolve_model_ref("registry:tiny@production")
    assert path == mv.path and AutoModelForCausalLM.from_pretrained(path).config.hidden_size == 64
    assert resolve_model_ref("some/hub-name") == "some/hub-name"
    with open(Path(mv.path) / "model.safetensors", "r+b") as f:  # flip one byte: same size, other digest
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 1]))
    assert any("sha256 differs" in p for p in reg.check()["problems"])
    with open(Path(mv.path) / "model.safetensors", "ab") as f:
        f.write(b"x")
    with pytest.raises(RegistryError, match="damaged.*bytes"):
        resolve_model_ref("registry:tiny")


_MOVER = textwrap.dedent("""
    import sys, time
    from gmpo.runs.model_registry import ModelRegistry
    reg = ModelRegistry(sys.argv[1], actor=sys.argv[2])
    start = float(sys.argv[3])
    while time.time() < start:
        time.sleep(0.001)
    for i in range(int(sys.argv[4])):
        reg.set_alias("tiny", "production", 1 + (i + int(sys.argv[5])) % 3, f"{sys.argv[2]} move {i}")
""")


def test_concurrent_alias_moves_serialize(reg, tiny_model_dir):
    adds = [subprocess.Popen(verb_cmd("registry", "--registry", reg.path, "add", tiny_model_dir, "--name", "tiny"))
            for _ in range(2)]  # two adds at once: distinct versions, both complete
    assert [p.wait(timeout=120) for p in adds] == [0, 0]
    reg.add(tiny_model_dir, "tiny")
    assert [v.version for v in reg.versions("tiny")] == [1, 2, 3] and reg.check()["problems"] == []
    n, start = 40, time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", _MOVER, str(reg.path), who, str(start), str(n), str(k)])
             for k, who in enumerate(["A", "B"])]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    hist = reg.history("tiny", "production")
    by = {w: [h for h in hist if h["actor"] == w] for w in "AB"}
    # every move that changed the version is recorded exactly once, and the history is one chain: each move
    # starts where the previous one ended (a lost update or interleaved read-then-write would break it)
    assert all(a["new_version"] == b["old_version"] for a, b in zip(hist, hist[1:]))
    assert len(by["A"]) > 0 and len(by["B"]) > 0 and len(hist) <= 2 * n
    assert reg.alias_version("tiny") == hist[-1]["new_version"]
    interleaved = sum(1 for a, b in zip(hist, hist[1:]) if a["actor"] != b["actor"])
    assert interleaved >= 1  # both processes really ran at the same time
    from gmpo.cli import main

    target = 1 + hist[-1]["new_version"] % 3  # a version production does not name now
    assert main(["registry", "--registry", str(reg.path), "alias", "set", "tiny@production", str(target)]) == 0
    assert reg.alias_version("tiny") == target and reg.history("tiny")[-1]["reason"] == "alias set"
    assert main(["registry", "--registry", str(reg.path), "list"]) == 0
    assert main(["registry", "--registry", str(reg.path), "history", "tiny"]) == 0
    assert main(["registry", "--registry", str(reg.path), "show", "tiny@9"]) == 1
    t0 = time.perf_counter()
    for _ in range(1000):
        reg.alias_version("tiny")
    assert (time.perf_counter() - t0) / 1000 < 0.005  # cheap enough to poll per request batch


def _big_model(path: Path) -> Path:
    from gmpo.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    tiny_model(tok, hidden=384, layers=6).save_pretrained(path)  # ~20 MB: the copy and hash take a while
    tok.save_pretrained(path)
    return path


def _add_cmd(reg_path: Path, model: Path) -> list[str]:
    return verb_cmd("registry", "--registry", reg_path, "add", model, "--name", "m")


def _assert_consistent(reg_path: Path, want_production: int) -> None:
    from transformers import AutoModelForCausalLM

    reg = ModelRegistry(reg_path)
    report = reg.check(deep=True)
    assert report["problems"] == []
    prod = reg.resolve("m@production")
    assert prod.version == want_production
    AutoModelForCausalLM.from_pretrained(prod.path)  # production weights load
    versions = [v.version for v in reg.versions("m")]
    assert versions == list(range(1, len(versions) + 1))
    reg.collect_garbage(min_age_s=0)
    assert reg.check(deep=False)["orphans"] == []
    reg.close()


def test_kill9_during_add(tmp_path):
    model = _big_model(tmp_path / "big")
    reg_path = tmp_path / "reg.db"
    ModelRegistry(reg_path).add(model, "m", alias="production")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # named points: after the copy, after the rename (before the row), inside the transaction (before commit)
    for point in ["add:copied", "add:renamed", "add:inserted"]:
        cmd = _add_cmd(reg_path, model) + ["--alias", "production"]
        r = subprocess.run(cmd, env={**env, "GMPO_CRASH_AT": point}, capture_output=True, cwd=ROOT)
        assert r.returncode == -signal.SIGKILL, (point, r.stderr[-500:])
        _assert_consistent(reg_path, want_production=1)  # nothing committed: production unchanged
    t0 = time.perf_counter()
    assert subprocess.run(_add_cmd(reg_path, model), env=env, capture_output=True, cwd=ROOT).returncode == 0
    full = time.perf_counter() - t0
    killed = 0
    for frac in [0.55, 0.7, 0.8, 0.9, 0.97]:  # varied delays across import, copy, hash and commit
        p = subprocess.Popen(_add_cmd(reg_path, model) + ["--alias", "production"], env=env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(full * frac)
        p.send_signal(signal.SIGKILL)
        killed += p.wait() == -signal.SIGKILL
        reg = ModelRegistry(reg_path)
        prod = reg.alias_version("m")
        reg.close()
        _assert_consistent(reg_path, want_production=prod)  # whichever side of the commit it died on
    assert killed >= 1


def test_registry_refs_in_train_and_eval(reg, tmp_path, monkeypatch, shared_data, one_thread):
    """`gmpo train model.name_or_path=registry:...` and `gmpo eval --model registry:...` load the aliased version."""
    from gmpo.cli import main
    from gmpo.testing import save_tiny

    reg.add(save_tiny(tmp_path / "v1"), "tiny", alias="production")
    monkeypatch.setenv("GMPO_REGISTRY", str(reg.path))
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "registry:tiny@production", "--benchmarks", "gsm8k", "--data-dir", str(shared_data),
                 "--limit", "2", "--max-new-tokens", "4", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    assert json.loads(out.read_text())["benchmarks"]["gsm8k"]["n"] == 2
    run = tmp_path / "run"
    rc = main(["train", "model.name_or_path=registry:tiny", "train.steps=1", f"train.output_dir={run}",
               "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4", "rewards=[{name: arithmetic}]",
               "eval.at_start=false", "eval.at_end=false", "log.progress=false", "train.bf16=false"])
    assert rc == 0 and (run / "checkpoints" / "step_000001" / "meta.json").is_file()
    origin = json.loads((run / "model_source.json").read_text())  # what the run started from, resolved once
    assert origin == {"ref": "registry:tiny", "name": "tiny", "version": 1, "sha256": reg.get("tiny", 1).sha256,
                      "path": reg.get("tiny", 1).path}
    reg.add(save_tiny(tmp_path / "v2"), "tiny", alias="production")  # production moves on after the run started
    assert main(["registry", "--registry", str(reg.path), "add", str(run), "--name", "tiny"]) == 0
    mv = reg.resolve("tiny@3")
    assert mv.parent == 1  # from the run directory, not from where production points now
    assert mv.run_dir == str(run) and mv.config["train"]["steps"] == 1
    assert main(["registry", "--registry", str(reg.path), "add", str(run), "--name", "other"]) == 0
    assert reg.resolve("other@1").parent is None  # another model's lineage is not guessed
