"""Checkpoints: atomic writes, pruning, resolution of train.resume, exact state round trip, LoRA adapters
with merged weights, and the guard's disk fallback."""
import pytest
import torch

from gmpo.config import from_dict
from gmpo.runs import checkpoint
from gmpo.testing import tiny_model
from gmpo.train import GMPOTrainer
from gmpo.train.hooks import Hook, Restore


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, restored after


def parity_reward(prompts, completions, **columns):
    return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


def make_trainer(tmp_path, tok, name="run", hooks=None, **sections):
    data = {
        "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 6, "truncated_reward": "keep"},
        "train": {"steps": 3, "micro_batch_size": 8, "output_dir": str(tmp_path / name), "bf16": "false", "threads": 1,
                  "keep_checkpoints": 2},
        "optim": {"lr": 1e-2},
        "rewards": [{"name": f"{__file__}:parity_reward"}],
        "data": {"eval_size": 4},
        "eval": {"at_start": False, "at_end": False},
        "log": {"progress": False, "samples_per_step": 0},
        "guard": {"enabled": False},
    }
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    return GMPOTrainer(tiny_model(tok, seed=0), tok, from_dict(data), hooks=hooks)


def step(tr):
    """One rollout step through the public step API."""
    n = tr.global_step
    tr.step()
    assert tr.global_step == n + 1


def test_save_prunes_and_leaves_no_temp(tmp_path, tok):
    tr = make_trainer(tmp_path, tok)
    root = tmp_path / "run" / "checkpoints"
    for _ in range(3):
        step(tr)
        path = tr.save_checkpoint()
        assert (path / checkpoint.META_FILE).is_file() and (path / "model.safetensors").is_file()
    assert sorted(p.name for p in root.iterdir()) == ["step_000002", "step_000003"]
    assert checkpoint.find_checkpoint("auto", tmp_path / "run") == root / "step_000003"
    assert checkpoint.find_checkpoint(str(tmp_path / "run"), tmp_path / "elsewhere") == root / "step_000003"
    assert checkpoint.find_checkpoint("", tmp_path / "run") is None
    assert checkpoint.find_checkpoint("auto", tmp_path / "empty") is None
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        checkpoint.find_checkpoint(str(tmp_path / "empty"), tmp_path / "run")


def test_failed_save_leaves_nothing(tmp_path, tok, monkeypatch):
    tr = make_trainer(tmp_path, tok)
    step(tr)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        tr.save_checkpoint()
    root = tmp_path / "run" / "checkpoints"
    assert list(root.iterdir()) == []  # neither a step_* directory nor a temporary one
    assert checkpoint.find_checkpoint("auto", tmp_path / "run") is None


def test_load_restores_every_part(tmp_path, tok):
    tr = make_trainer(tmp_path, tok)
    step(tr)
    tr.events = 3
    path = tr.save_checkpoint()
    fresh = make_trainer(tmp_path, tok, name="other", train={"resume": str(path)})
    assert fresh.resumed_from == path and fresh.global_step == 1 and fresh.events == 3
    for (n, a), (_, b) in zip(tr.model.named_parameters(), fresh.model.named_parameters()):
        assert torch.equal(a, b), n
    sa, sb = tr.optimizer.state_dict(), fresh.optimizer.state_dict()
    for k in sa["state"]:
        for n in sa["state"][k]:
            assert torch.equal(torch.as_tensor(sa["state"][k][n]), torch.as_tensor(sb["state"][k][n]))
    assert tr.scheduler.state_dict() == fresh.scheduler.state_dict()
    assert tr.loader.state_dict() == fresh.loader.state_dict()
    assert tr.tracker.state_dict() == fresh.tracker.state_dict()


def test_lora_checkpoint_has_adapter_and_merged_model(tmp_path, tok):
    from transformers import AutoModelForCausalLM

    lora = {"lora": {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}
    tr = make_trainer(tmp_path, tok, model=lora)
    n_trained = sum(p.numel() for p in tr.params)
    assert 0 < n_trained < tr.n_params / 4  # only the adapters train
    step(tr)
    path = tr.save_checkpoint()
    assert (path / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(path / "merged")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, tr.model(ids).logits, rtol=1e-4, atol=1e-5)
    fresh = make_trainer(tmp_path, tok, name="other", model=lora, train={"resume": str(path)})
    for (n, a), (_, b) in zip(tr.model.named_parameters(), fresh.model.named_parameters()):
        assert torch.equal(a, b), n


class DiskRollback(Hook):
    """At step `at`'s end: loads the newest checkpoint on disk and returns it as a Restore (the guard's fallback
    when it holds no in-memory snapshot); records what the trainer looked like right after the load."""

    def __init__(self, at: int):
        self.at, self.seen = at, None

    def on_step_end(self, trainer, step, metrics):
        if step != self.at:
            return None
        current = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        snap, path = trainer.load_last_checkpoint()
        undisturbed = all(torch.equal(current[n], p) for n, p in trainer.model.named_parameters())
        self.seen = (path.name, trainer.global_step, undisturbed)
        return Restore(snap, 1.0, f"checkpoint {path}")


def test_load_last_checkpoint_is_a_restorable_snapshot(tmp_path, tok):
    hook = DiskRollback(at=2)
    tr = make_trainer(tmp_path, tok, hooks=[hook])
    assert tr.load_last_checkpoint() is None
    step(tr)
    tr.save_checkpoint()
    saved = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.step()  # step 2 ends, the hook rolls back to the checkpoint of step 1
    assert hook.seen == ("step_000001", 2, True)  # loading it did not disturb the trainer
    assert tr.global_step == 1 and tr.rollbacks == 1
    assert all(torch.equal(saved[n], p) for n, p in tr.model.named_parameters())


class CrashMidStep(Hook):
    """Raises before the second optimizer step of rollout step 2 (its first mini-batch is already applied);
    keeps the weights as they were when step 1 ended."""

    def __init__(self):
        self.calls, self.after_step1 = 0, None

    def on_step_end(self, trainer, step, metrics):
        if step == 1:
            self.after_step1 = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    def before_optimizer_step(self, trainer, step, stats):
        if step == 2:
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("crash in the middle of step 2")
        return "ok"


def test_a_crash_mid_step_never_checkpoints_a_partial_step(tmp_path, tok):
    """train() dying inside step 2 must not leave a checkpoint named after step 1 that holds part of step 2
    (weights after one of its mini-batches, the loader past its prompts): resuming from it would be inexact."""
    hook = CrashMidStep()
    tr = make_trainer(tmp_path, tok, hooks=[hook], train={"mini_batch_size": 4, "micro_batch_size": 4})
    with pytest.raises(RuntimeError, match="middle of step 2"):
        tr.train()
    found = checkpoint.checkpoint_dirs(tmp_path / "run" / "checkpoints")
    if found:  # a checkpoint written on the way out must be the state it is named after
        assert found[-1].name == "step_000001"
        fresh = make_trainer(tmp_path, tok, name="other", train={"resume": str(found[-1]), "mini_batch_size": 4,
                                                                 "micro_batch_size": 4})
        assert all(torch.equal(hook.after_step1[n], p) for n, p in fresh.model.named_parameters())
