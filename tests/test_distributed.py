"""Data-parallel training (issue 14) with gloo on CPU: 2 ranks of the tiny model against one process.

The 2-rank side runs once under torchrun (tests/test_distributed_worker.py: every scenario in the same two
processes); each rank saves the batch it trained on. One process then trains on the union of the ranks'
batches (the same global batch) and must reach the same weights (float tolerance: only the summation order
differs) for gmpo, grpo token-mean and dapo, and with zero-advantage skipping (rank 0's groups all inert,
compared with a reference that runs every row). A NaN on one rank skips the update on both; a 2-rank
checkpoint resumed on one process continues like an uninterrupted one-process run on the same batches; a
killed or hung rank makes the other exit with a clear error within ``train.dist_timeout``.

The same under ``train.parallel=fsdp2`` (FSDP2 sharding): the four cases again (with skipping, rank 0 runs
only padding micro-batches in lockstep with rank 1), a sharded DCP checkpoint resumed on one plain process,
on 2-rank ddp, and a ddp checkpoint resumed under fsdp2, its HF export equal to the trained weights, an
in-memory snapshot restored, and one process under fsdp2 (a group of one rank).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from gmpo.batch import concat
from gmpo.config import from_dict
from gmpo.runs.checkpoint import checkpoint_dirs
from gmpo.runs.files import read_alerts, read_metrics

sys.path.insert(0, str(Path(__file__).parent))
import test_distributed_worker as W  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ATOL = 1e-6  # weights after lr=1e-2 AdamW steps (adam_eps 1e-4); 2 ranks vs 1 differ only in float summation order


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]), **extra)
    return env


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, tiny_model_dir) -> Path:
    """Run every 2-rank scenario under torchrun once; the output directory."""
    out = tmp_path_factory.mktemp("two_ranks")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(W.WORKER), str(out), str(tiny_model_dir)]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-6000:]
    return out


def _replaying(trainer, *dirs: Path, world: int = 2) -> None:
    """trainer.collect returns the union (rank order) of the ranks' batches of each recorded step (from the
    first of `dirs` that recorded it); it still runs the real collect first, so the prompt loader advances
    as it did on the ranks."""
    collect = trainer.collect

    def replay(step, attempt=0):
        batch, seen, st = collect(step, attempt)
        found = [d for d in dirs if (d / f"batch_r0_s{step}.pt").exists()]
        if not found:
            return batch, seen, st
        union = concat([torch.load(found[0] / f"batch_r{r}_s{step}.pt", weights_only=False) for r in range(world)])
        st.groups = len(union.items)
        return union, [union], st

    trainer.collect = replay


def _one_process(cfg: dict):
    from gmpo.train import GMPOTrainer

    assert "WORLD_SIZE" not in os.environ
    return GMPOTrainer(config=from_dict(cfg))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("case", list(W.CASES))
def test_two_ranks_equal_one_process_on_the_same_global_batch(two_ranks, tiny_model_dir, tmp_path, case):
    out = two_ranks / case
    w0 = torch.load(out / "weights_r0.pt")
    w1 = torch.load(out / "weights_r1.pt")
    assert _max_diff(w0, w1) == 0.0  # replicated: every rank took the same optimizer steps
    rep = json.loads((out / "report_r0.json").read_text())
    assert rep["world"] == 2
    algo, train = W.CASES[case]
    base = case.removeprefix("fsdp_")  # the fsdp2 cases check what their ddp counterparts check
    # the reference runs every row (skip_zero_advantage false): skipping inert rows on the ranks is exact too
    ref_train = {k: v for k, v in train.items() if k not in ("skip_zero_advantage", "parallel")}  # one plain process
    reward = "rank0_flat_reward" if base == "gmpo_skip" else "parity_reward"
    t = _one_process(W.config_dict(tiny_model_dir, tmp_path / "ref", algo, ref_train, reward=reward))
    init = W.weights(t.model)
    _replaying(t, out)
    t.start()
    m = t.step()
    t.close(finish=False)
    ref = W.weights(t.model)
    moved = _max_diff(init, ref)
    assert moved > 1e-3  # the step really moved the weights
    print(case, "max |w_2ranks - w_1process|", _max_diff(ref, w0), "moved", moved)
    assert _max_diff(ref, w0) < ATOL, (case, _max_diff(ref, w0), moved)
    dm = rep["metrics"]
    for key in ("loss/value", "grad/norm"):
        assert dm[key] == pytest.approx(m[key], rel=1e-5, abs=1e-7), key
    assert dm["rollout/groups_kept"] == 4
    if base != "dapo":  # reward/* cover every completion sampled; dapo's ranks also sampled groups they dropped
        assert dm["reward/mean"] == m["reward/mean"]
    if base != "gmpo_skip":  # token metrics cover the rows that ran: with skipping, fewer than the reference's
        for key in ("ratio/token_max", "ratio/token_p99", "clip/frac_low", "policy/kl", "policy/entropy"):
            assert dm[key] == pytest.approx(m[key], rel=1e-4, abs=1e-6), key
        assert dm["ratio/log_hist"] == m["ratio/log_hist"]  # every rank's token ratios, in the same bins
    if case in W.EVAL_CASES:  # held-out accuracy sharded over 2 ranks == one process on the same weights
        with torch.no_grad():
            for n, p in t.model.named_parameters():
                p.copy_(w0[n])
        t.engine.sync_weights(t.model)
        assert 0 < rep["eval"] < 1 and rep["eval"] == t.evaluate()
    if base == "gmpo_skip":
        assert dm["perf/rows_trained_frac"] == 0.5  # rank 0's rows were all inert and ran no forward
        assert m["perf/rows_trained_frac"] == 1.0


def test_nan_on_one_rank_skips_the_update_on_both(two_ranks):
    out = two_ranks / "guard"
    r0, r1 = (json.loads((out / f"report_r{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert r["unchanged_after_step1"] and r["moved_in_step2"]
        assert r["step1"]["optim/skipped"] == 1.0 and r["step2"]["optim/skipped"] == 0.0
        assert r["events"] == 2  # one per mini-batch of step 1, counted on both ranks
    assert _max_diff(torch.load(out / "weights_r0.pt"), torch.load(out / "weights_r1.pt")) == 0.0
    alerts = read_alerts(out / "run")
    assert [(a["step"], a["detector"], a["action"]) for a in alerts] == [(1, "nonfinite", "skip")] * 2  # rank 0 alone wrote
    rows = read_metrics(out / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]  # one writer: each step logged once


@pytest.mark.parametrize("scenario", ["resume", "resume_fsdp"])
def test_two_rank_checkpoint_resumes_on_one_process(two_ranks, tiny_model_dir, tmp_path, scenario):
    """A 2-rank checkpoint (ddp: HF safetensors + trainer_state.pt; fsdp2: sharded DCP + HF export) resumed
    by one plain process continues like an uninterrupted one-process run."""
    out = two_ranks / scenario
    ckpt = Path(json.loads((out / "report_r0.json").read_text())["checkpoint"])
    assert ckpt.name == "step_000002" and (ckpt / "meta.json").is_file()
    assert (ckpt / "dcp" / ".metadata").is_file() == (scenario == "resume_fsdp")
    for r in (0, 1):  # restoring an in-memory snapshot of step 1 gave step 1's weights back on each rank
        assert json.loads((out / f"report_r{r}.json").read_text())["restored"]
    # uninterrupted: one process trains steps 1-2 on the ranks' global batches, then step 3 on its own
    ref = _one_process(W.config_dict(tiny_model_dir, tmp_path / "ref", {"loss": "gmpo"}, {"steps": 3}))
    _replaying(ref, out)
    ref_summary = ref.train()
    # resumed: one process picks the 2-rank checkpoint up at step 2 and trains step 3
    res = _one_process(W.config_dict(tiny_model_dir, tmp_path / "res", {"loss": "gmpo"}, {"steps": 3, "resume": str(ckpt)}))
    assert res.global_step == 2
    res_summary = res.train()
    assert ref_summary["steps"] == res_summary["steps"] == 3
    a, b = read_metrics(tmp_path / "ref" / "metrics.jsonl")[-1], read_metrics(tmp_path / "res" / "metrics.jsonl")[-1]
    assert a["step"] == b["step"] == 3
    assert a["reward/mean"] == b["reward/mean"]  # same prompts, same sampling seed, same (up to rounding) weights
    for key in ("loss/value", "grad/norm", "ratio/token_max"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert _max_diff(W.weights(ref.model), W.weights(res.model)) < ATOL
    sa, sb = ref.optimizer.state_dict()["state"], res.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and sa[0]["step"] == sb[0]["step"] == 6  # 3 rollout steps x 2 mini-batches
    assert max(float((sa[i]["exp_avg_sq"] - sb[i]["exp_avg_sq"]).abs().max()) for i in sa) < 1e-8  # moments came back


def test_fsdp2_checkpoint_has_an_hf_export_equal_to_the_trained_weights(two_ranks):
    from transformers import AutoModelForCausalLM

    out = two_ranks / "resume_fsdp"
    ckpt = Path(json.loads((out / "report_r0.json").read_text())["checkpoint"])
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["sharded"] == "dcp" and meta["world"] == 2 and meta["step"] == 2
    assert sorted(p.name for p in (ckpt / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # a shard per rank
    assert "optimizer" not in torch.load(ckpt / "trainer_state.pt", weights_only=False)  # it is in dcp/
    trained = torch.load(out / "weights_r0.pt")
    assert _max_diff(trained, torch.load(out / "weights_r1.pt")) == 0.0
    hf = AutoModelForCausalLM.from_pretrained(ckpt)
    exported = {n: p.detach() for n, p in hf.named_parameters()}
    assert _max_diff(trained, exported) == 0.0  # the gathered full weights, bit for bit
    assert hf.lm_head.weight is hf.model.embed_tokens.weight  # tied embeddings stay tied
    assert (ckpt / "tokenizer.json").is_file()
    from gmpo.runs.store import model_files  # what `gmpo registry add` copies (and `gmpo serve` then loads)

    kept = {p.name for p in model_files(ckpt)}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= kept and "trainer_state.pt" not in kept


@pytest.mark.parametrize("scenario,source", [("fsdp_to_ddp", "resume_fsdp"), ("ddp_to_fsdp", "resume")])
def test_checkpoint_resumes_across_parallel_modes(two_ranks, tiny_model_dir, tmp_path, scenario, source):
    """A 2-rank fsdp2 checkpoint resumed by 2-rank ddp, and a ddp checkpoint resumed by 2-rank fsdp2, train
    step 3 like one uninterrupted process on the same global batches."""
    out = two_ranks / scenario
    r0, r1 = (json.loads((out / f"report_r{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1 == {"resumed_at": 2, "steps": 3}
    w0 = torch.load(out / "weights_r0.pt")
    assert _max_diff(w0, torch.load(out / "weights_r1.pt")) == 0.0
    ref = _one_process(W.config_dict(tiny_model_dir, tmp_path / "ref", {"loss": "gmpo"}, {"steps": 3}))
    _replaying(ref, two_ranks / source, out)  # steps 1-2 as the source run sampled them, step 3 as the resumed run
    ref.train()
    assert _max_diff(W.weights(ref.model), w0) < ATOL
    last = read_metrics(out / "run" / "metrics.jsonl")[-1]
    mine = read_metrics(tmp_path / "ref" / "metrics.jsonl")[-1]
    assert last["step"] == mine["step"] == 3
    for key in ("loss/value", "grad/norm"):
        assert last[key] == pytest.approx(mine[key], rel=1e-4, abs=1e-6), key
    final = checkpoint_dirs(out / "run" / "checkpoints")[-1]  # the resumed run's own final checkpoint
    assert final.name == "step_000003" and (final / "dcp").is_dir() == (scenario == "ddp_to_fsdp")


def test_fsdp2_no_grad_forwards_with_uneven_counts(two_ranks):
    """Old-log-prob recomputation / reference pass under FSDP2 when one rank has no rows: no hang (the count is
    agreed before any forward), and the other rank's log-probs equal the unsharded model's."""
    r0, r1 = (json.loads((two_ranks / "uneven_no_grad" / f"report_r{r}.json").read_text()) for r in (0, 1))
    assert r0 == {"tokens": 0, "max_diff": 0.0, "nonzero": 0}
    assert r1["tokens"] > 0 and r1["nonzero"] > 0 and r1["max_diff"] < 1e-5


def test_one_process_fsdp2_equals_two_fsdp2_ranks(two_ranks, tiny_model_dir, tmp_path):
    """One process with train.parallel=fsdp2 (a process group of one rank, the 1-GPU path) on the union of
    the 2 fsdp2 ranks' batches reaches their weights; it also writes a one-shard DCP checkpoint."""
    from gmpo.train import dist as D

    out = two_ranks / "fsdp_gmpo"
    algo, train = W.CASES["fsdp_gmpo"]
    try:
        t = _one_process(W.config_dict(tiny_model_dir, tmp_path / "one", algo, train))
        assert t.dist is not None and t.dist.world == 1 and t.dist.sharded and t.replica is not None
        _replaying(t, out)
        t.start()
        t.step()
        assert _max_diff(W.weights(t.model), torch.load(out / "weights_r0.pt")) < ATOL
        ckpt = t.save_checkpoint()
        t.close(finish=False)
        assert [p.name for p in (ckpt / "dcp").glob("*.distcp")] == ["__0_0.distcp"]
    finally:
        D.teardown()  # leave no process group behind for the other tests of this process


def test_fsdp2_with_lora_is_a_config_error(tiny_model_dir, tmp_path):
    from gmpo.config import ConfigError

    cfg = W.config_dict(tiny_model_dir, tmp_path, {"loss": "gmpo"}, {"parallel": "fsdp2"}, model={"lora": {"enabled": True}})
    with pytest.raises(ConfigError, match="fsdp2 does not support LoRA"):
        from_dict(cfg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fail_config(tmp_path: Path, tiny_model_dir) -> Path:
    cfg = W.config_dict(tiny_model_dir, tmp_path / "run", {"loss": "gmpo"}, {"steps": 3, "dist_timeout": 5},
                        reward="fail_at_step2_reward")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _wait_for_mark(mark: Path, procs: list, limit: float = 240) -> float:
    t0 = time.time()
    while not mark.exists():
        assert time.time() - t0 < limit, "rank 1 never reached step 2"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.2)
    time.sleep(0.1)
    return float(mark.read_text())


def test_killed_rank_makes_the_other_exit_with_an_error(tmp_path, tiny_model_dir):
    """Ranks launched by hand (as torchrun would, without its agent): rank 1 is killed with SIGKILL in step 2."""
    cfg, mark, port = _fail_config(tmp_path, tiny_model_dir), tmp_path / "mark", str(_free_port())
    procs = []
    for rank in (0, 1):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   GMPO_TEST_MARK=str(mark), GMPO_TEST_FAIL="kill")
        procs.append(subprocess.Popen([sys.executable, "-m", "gmpo", "train", str(cfg)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        t_fail = _wait_for_mark(mark, procs)
        _, err = procs[0].communicate(timeout=5 + 30)
        elapsed = time.time() - t_fail
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[1].wait() == -signal.SIGKILL
    assert procs[0].returncode == 1, err[-3000:]
    assert "gmpo train: error: rank 0/2: collective" in err and "train.dist_timeout=5" in err, err[-3000:]
    assert elapsed < 5 + 20, elapsed
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1]


def test_hung_rank_fails_the_run_within_the_timeout_via_gmpo_train_nproc(tmp_path, tiny_model_dir):
    """`gmpo train --nproc 2` (torchrun underneath): rank 1 hangs in step 2; rank 0 must give up after
    train.dist_timeout with a clear message, and the launcher must then end the whole run with an error."""
    cfg, mark = _fail_config(tmp_path, tiny_model_dir), tmp_path / "mark"
    env = _env(GMPO_TEST_MARK=str(mark), GMPO_TEST_FAIL="hang")
    p = subprocess.Popen([sys.executable, "-m", "gmpo", "train", "--nproc", "2", str(cfg)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        t_fail = _wait_for_mark(mark, [p])
        _, err = p.communicate(timeout=5 + 60)
        elapsed = time.time() - t_fail
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode != 0
    assert "rank 0/2: collective" in err and "hung longer than train.dist_timeout=5 s" in err, err[-3000:]
    assert 5 <= elapsed < 5 + 40, elapsed
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1]


def test_communication_errors_outside_dist_become_rank_failures():
    """FSDP2's own collectives and DCP raise torch.distributed.DistError subclasses, not RankFailure: `gmpo
    train` maps them to the same clear error (and exit 1); anything else is not a rank failure."""
    import torch.distributed as td

    from gmpo.train.dist import RankFailure, rank_failure

    e = rank_failure(td.DistBackendError("[gloo] Connection closed by peer [127.0.0.1]:29500\nmore"), 0, 2)
    assert isinstance(e, RankFailure)
    assert str(e).startswith("rank 0/2: a collective inside the model or checkpoint failed")
    assert "DistBackendError: [gloo] Connection closed by peer" in str(e) and "more" not in str(e)
    assert isinstance(rank_failure(td.DistNetworkError("reset"), 1, 2), RankFailure)
    own = RankFailure("rank 1/2: collective 'x' failed")
    assert rank_failure(own) is own
    assert rank_failure(RuntimeError("CUDA out of memory")) is None
    assert rank_failure(ValueError("bad config")) is None
