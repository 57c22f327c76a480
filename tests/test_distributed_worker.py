"""The rank side of tests/test_distributed.py (no tests here): run as one rank of a gloo process group.

    torchrun --standalone --nproc-per-node 2 tests/test_distributed_worker.py OUT_DIR TINY_MODEL_DIR

runs every 2-rank scenario in the same two processes (one process-group start-up for all of them) and
writes, per scenario and rank, the batches each rank trained on (``batch_r{rank}_s{step}.pt``), its final
weights (``weights_r{rank}.pt``) and a JSON report (``report_r{rank}.json``). The pytest side replays the
union of the ranks' batches through one process and compares. The module also holds the configs and
reward functions both sides use (reward functions are loaded by file path, so they run in every rank).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

WORKER = Path(__file__).resolve()
CASES = {  # scenario -> algorithm section and train overrides
    "gmpo": ({"loss": "gmpo"}, {}),
    "grpo_token_mean": ({"loss": "grpo", "reduction": "token-mean"}, {}),
    "dapo": ({"loss": "dapo", "overlong": {"penalty": 0.0}}, {}),
    "gmpo_skip": ({"loss": "gmpo"}, {"skip_zero_advantage": True}),
    "grpo_batch_adv": ({"loss": "grpo", "advantage": "batch"}, {}),  # the global std over every rank's rewards
    # FSDP2 (sharded weights; gradients reduce-scattered as sums inside the backward)
    "fsdp_gmpo": ({"loss": "gmpo"}, {"parallel": "fsdp2"}),
    "fsdp_grpo_token_mean": ({"loss": "grpo", "reduction": "token-mean"}, {"parallel": "fsdp2"}),
    "fsdp_dapo": ({"loss": "dapo", "overlong": {"penalty": 0.0}}, {"parallel": "fsdp2"}),
    # rank 0 runs no micro-batch of its own: it runs padding micro-batches in lockstep with rank 1
    "fsdp_gmpo_skip": ({"loss": "gmpo"}, {"skip_zero_advantage": True, "parallel": "fsdp2"}),
}
EVAL_CASES = ("gmpo", "fsdp_gmpo")  # cases that also measure the sharded held-out accuracy


def parity_reward(prompts, completions, **columns):
    """1 when the prompt's and the completion's character codes sum to an even number: signal inside the
    groups, and a held-out accuracy strictly between 0 and 1 even when greedy completions look alike."""
    return [float((sum(map(ord, p)) + sum(map(ord, c))) % 2 == 0) for p, c in zip(prompts, completions)]


def rank0_flat_reward(prompts, completions, **columns):
    """Constant on rank 0 (its groups all have advantage 0: inert rows), parity on the other ranks."""
    if os.environ.get("RANK", "0") == "0" and os.environ.get("WORLD_SIZE", "1") != "1":
        return [1.0] * len(completions)
    return parity_reward(prompts, completions)


_CALLS = {"n": 0}


def fail_at_step2_reward(prompts, completions, **columns):
    """Parity; on rank 1 the second call (step 2) kills or hangs the process (GMPO_TEST_FAIL=kill|hang),
    after writing the time to $GMPO_TEST_MARK."""
    _CALLS["n"] += 1
    if os.environ.get("RANK") == "1" and _CALLS["n"] == 2:
        Path(os.environ["GMPO_TEST_MARK"]).write_text(repr(time.time()))
        if os.environ.get("GMPO_TEST_FAIL") == "kill":
            os.kill(os.getpid(), 9)
        time.sleep(3600)
    return parity_reward(prompts, completions)


def config_dict(tiny_dir, out_dir, algorithm: dict, train: dict | None = None, reward: str = "parity_reward",
                **sections) -> dict:
    """The tiny-model recipe of these tests: 4 prompts x 4 completions, 2 mini-batches of 8, micro-batch 2."""
    cfg = {
        "model": {"name_or_path": str(tiny_dir)},
        "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 8, "truncated_reward": "keep"},
        "algorithm": algorithm,
        "optim": {"lr": 1e-2, "adam_eps": 1e-4},  # eps >> float noise in near-zero gradients
        "rewards": [{"name": f"{WORKER}:{reward}"}],
        "train": {"steps": 1, "mini_batch_size": 8, "micro_batch_size": 2, "bf16": "false", "threads": 1,
                  "seed": 5, "output_dir": str(out_dir), "skip_zero_advantage": False, "dist_timeout": 60,
                  **(train or {})},
        "data": {"eval_size": 6},
        "eval": {"at_start": False, "at_end": False},
        "guard": {"enabled": False},
        "log": {"progress": False, "print_every": 0},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


def weights(model) -> dict:
    """A CPU copy of the trainable weights (full tensors: under FSDP2 a collective every rank calls)."""
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone()
            for n, p in model.named_parameters() if p.requires_grad}


def record_batches(trainer, out: Path, rank: int) -> None:
    """Wrap trainer.collect so every step's training batch is saved as batch_r{rank}_s{step}.pt."""
    import torch

    collect = trainer.collect

    def recording(step, attempt=0):
        batch, seen, st = collect(step, attempt)
        torch.save(batch, out / f"batch_r{rank}_s{step}.pt")
        return batch, seen, st

    trainer.collect = recording


def _trainer(cfg: dict):
    from gmpo.config import from_dict
    from gmpo.train import GMPOTrainer

    return GMPOTrainer(config=from_dict(cfg))


def run_case(name: str, out: Path, tiny: Path, rank: int) -> None:
    """One step of `name` (see CASES)."""
    import torch

    import gmpo.train.dist as D

    D.BUCKET_BYTES = 4096 if name == "grpo_batch_adv" else 64 * 2**20  # many small gradient buckets once
    algo, train = CASES[name]
    reward = "rank0_flat_reward" if name.endswith("gmpo_skip") else "parity_reward"
    t = _trainer(config_dict(tiny, out / "run", algo, train, reward=reward))
    record_batches(t, out, rank)
    t.start()
    metrics = t.step()
    acc = t.evaluate() if name in EVAL_CASES else None  # sharded held-out accuracy of the trained weights
    t.close(finish=False)
    torch.save(weights(t.model), out / f"weights_r{rank}.pt")
    (out / f"report_r{rank}.json").write_text(json.dumps({"metrics": metrics, "world": t.dist.world, "eval": acc}))


def run_guard(out: Path, tiny: Path, rank: int) -> None:
    """Two steps; rank 1's training forward returns NaN log-probs in step 1: the guard must skip on both."""
    import torch

    cfg = config_dict(tiny, out / "run", {"loss": "gmpo"}, {"steps": 2},
                      guard={"enabled": True, "nonfinite_action": "skip", "grad_spike_action": "off",
                             "ratio_action": "off", "entropy_action": "off", "reward_action": "off",
                             "length_action": "off", "no_signal_action": "off"})
    t = _trainer(cfg)
    before = weights(t.model)
    forward = t.forward

    class NaNOnRank1:  # wraps the PolicyForward: NaN log-probs on rank 1 during step 1
        def __getattr__(self, k):
            return getattr(forward, k)

        def __call__(self, model, mb, entropy=False):
            logp, ent = forward(model, mb, entropy=entropy)
            if rank == 1 and t.global_step == 0:
                logp = logp * float("nan")
            return logp, ent

    t.forward = NaNOnRank1()
    t.start()
    m1 = t.step()
    after1 = weights(t.model)
    m2 = t.step()
    t.close(finish=False)
    unchanged = all(torch.equal(before[k], after1[k]) for k in before)
    moved = any(not torch.equal(after1[k], v) for k, v in weights(t.model).items())
    torch.save(weights(t.model), out / f"weights_r{rank}.pt")
    (out / f"report_r{rank}.json").write_text(json.dumps(
        {"step1": m1, "step2": m2, "unchanged_after_step1": unchanged, "moved_in_step2": moved,
         "events": t.events}, default=str))


def run_resume(out: Path, tiny: Path, rank: int, parallel: str = "ddp") -> None:
    """Two steps of a 3-step gmpo run, then a checkpoint (resumed on one process by the test)."""
    import torch

    from gmpo.runs import checkpoint

    t = _trainer(config_dict(tiny, out / "run", {"loss": "gmpo"}, {"steps": 3, "parallel": parallel}))
    record_batches(t, out, rank)
    t.start()
    t.step()
    snap, after1 = t.snapshot(), weights(t.model)  # an in-memory snapshot (local shards under fsdp2)
    t.step()
    path = t.save_checkpoint()
    torch.save(weights(t.model), out / f"weights_r{rank}.pt")  # the weights the checkpoint holds
    checkpoint.restore(t, snap)  # back to step 1: weights, optimizer moments, step
    if t.replica is not None:  # what the trainer's restore path does: the rollout replica follows
        t.replica.refresh(t.model)
    back = weights(t.model)
    restored = all(torch.equal(after1[k], back[k]) for k in after1) and t.global_step == 1 \
        and all(torch.equal(after1[n], p.detach()) for n, p in t.rollout_model.named_parameters())
    t.close(finish=False)
    (out / f"report_r{rank}.json").write_text(json.dumps({"checkpoint": str(path), "restored": restored}))


def run_resume_fsdp(out: Path, tiny: Path, rank: int) -> None:
    """run_resume under FSDP2: a sharded (DCP) checkpoint with an HF export."""
    run_resume(out, tiny, rank, parallel="fsdp2")


def run_cross_resume(out: Path, tiny: Path, rank: int, source: str, parallel: str) -> None:
    """Resume the `source` scenario's step-2 checkpoint under `parallel` on 2 ranks and train step 3."""
    import torch

    ckpt = json.loads((out.parent / source / f"report_r{rank}.json").read_text())["checkpoint"]  # its own: no race
    t = _trainer(config_dict(tiny, out / "run", {"loss": "gmpo"}, {"steps": 3, "parallel": parallel, "resume": ckpt}))
    record_batches(t, out, rank)
    resumed_at = t.global_step
    t.train()
    torch.save(weights(t.model), out / f"weights_r{rank}.pt")
    (out / f"report_r{rank}.json").write_text(json.dumps({"resumed_at": resumed_at, "steps": t.global_step}))


def run_uneven_no_grad(out: Path, tiny: Path, rank: int) -> None:
    """FSDP2 no-grad log-prob forwards (old-log-prob recomputation, reference pass) with uneven counts: rank 0
    has no rows, rank 1 three micro-batches. Rank 0 must pad in lockstep, and the count must be agreed before
    any forward (else rank 0's all-reduce meets rank 1's in-forward all-gather: a hang, here a RankFailure
    after train.dist_timeout). Rank 1's log-probs must equal the unsharded replica's."""
    import torch

    from gmpo.train.update import no_grad_logp

    t = _trainer(config_dict(tiny, out / "run", {"loss": "gmpo"}, {"parallel": "fsdp2", "dist_timeout": 30}))
    t.start()
    batch, _, _ = t.collect(1)
    rows = torch.arange(0) if rank == 0 else torch.arange(3)
    got, want = torch.zeros(batch.mask.shape), torch.zeros(batch.mask.shape)  # (N, T) each
    tokens = no_grad_logp(t.model, t.forward, batch, rows, 1, got, t.dist)
    no_grad_logp(t.replica.module, t.forward, batch, rows, 1, want, None)  # full weights, no collectives
    t.close(finish=False)
    (out / f"report_r{rank}.json").write_text(json.dumps({"tokens": tokens, "max_diff": float((got - want).abs().max()),
                                                           "nonzero": int((got != 0).sum())}))


SCENARIOS = {  # scenario -> function(out, tiny, rank), run in this order after CASES
    "guard": run_guard,
    "resume": run_resume,
    "resume_fsdp": run_resume_fsdp,
    "fsdp_to_ddp": lambda out, tiny, rank: run_cross_resume(out, tiny, rank, "resume_fsdp", "ddp"),
    "ddp_to_fsdp": lambda out, tiny, rank: run_cross_resume(out, tiny, rank, "resume", "fsdp2"),
    "uneven_no_grad": run_uneven_no_grad,
}


def main(out: str, tiny: str) -> None:
    """Every scenario, in order, in this rank."""
    rank = int(os.environ["RANK"])
    out_dir, tiny_dir = Path(out), Path(tiny)
    for name in CASES:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        run_case(name, out_dir / name, tiny_dir, rank)
    for name, fn in SCENARIOS.items():
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        fn(out_dir / name, tiny_dir, rank)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
