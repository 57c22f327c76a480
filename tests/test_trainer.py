"""Trainer: micro-batch invariance of the gradient, the lean old-logp path, hooks (skip, snapshot/restore),
dynamic sampling, the learning-rate schedule. Tiny random-init model, fp32, a few seconds each."""
import math

import pytest
import torch

from gmpo.algo import presets as algorithms
from gmpo.config import AlgorithmConfig, from_dict
from gmpo.runs import checkpoint
from gmpo.runs.files import read_jsonl
from gmpo.telemetry.collector import Reducer
from gmpo.testing import tiny_model
from gmpo.train import GMPOTrainer
from gmpo.train.collect import rollout_seed
from gmpo.train.forward import micro_batch
from gmpo.train.hooks import Hook, Restore
from gmpo.train.optimize import LRSchedule
from gmpo.train.prepare import prepare
from gmpo.train.update import OldLogp, accumulate_minibatch, no_grad_logp



pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, restored after


def varied_reward(prompts, completions, **columns):
    """Test reward with signal inside groups: 1 when the character codes of the completion sum to an even number."""
    return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


def constant_reward(prompts, completions, **columns):
    """Test reward with no signal: every completion scores 0.5."""
    return [0.5] * len(completions)


def make_cfg(tmp_path, reward="varied_reward", **sections):
    data = {
        "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 8, "truncated_reward": "keep"},
        "train": {"steps": 2, "micro_batch_size": 8, "output_dir": str(tmp_path / "run"), "bf16": "false", "threads": 1, "seed": 3},
        "optim": {"lr": 1e-2},
        "rewards": [{"name": f"{__file__}:{reward}"}],
        "data": {"eval_size": 4},
        "eval": {"at_start": False, "at_end": False},  # held-out evaluation has its own tests
        "log": {"progress": False, "print_every": 0, "samples_per_step": 2},
        "guard": {"enabled": False},
    }
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    return from_dict(data)


def make_trainer(tmp_path, tok, hooks=None, reward="varied_reward", **sections):
    cfg = make_cfg(tmp_path, reward, **sections)
    return GMPOTrainer(tiny_model(tok, seed=0), tok, cfg, hooks=hooks)


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("algo", [{"loss": "gmpo"}, {"loss": "grpo", "reduction": "token-mean"}])
def test_microbatch_invariance(tmp_path, tok, algo):
    """The same mini-batch cut 1, 2 and 4 ways gives the same gradient (off-policy ratios, clipping active)."""
    tr = make_trainer(tmp_path, tok)
    spec = algorithms.resolve(AlgorithmConfig(**algo), 8)
    batch, _, _ = tr.collect(1)
    N = batch.n
    assert N == 8
    batch.lengths = torch.tensor([8, 3, 5, 1, 7, 2, 6, 4])  # ragged completions: padding must not matter
    batch.mask = (torch.arange(batch.mask.shape[1])[None] < batch.lengths[:, None]).float()
    batch.completion_ids = torch.where(batch.mask.bool(), batch.completion_ids, tok.pad_token_id)
    g = torch.Generator().manual_seed(0)
    batch.advantages = torch.randn(N, generator=g)
    cur = torch.zeros_like(batch.rollout_logp)
    no_grad_logp(tr.model, tr.forward, batch, torch.arange(N), N, cur)
    old_values = cur + 0.5 * torch.randn(cur.shape, generator=g)  # ratios far from 1: some tokens clipped
    rows = torch.randperm(N, generator=g)
    grads, losses = [], []
    for micro in (N, N // 2, N // 4):
        tr.model.zero_grad(set_to_none=True)
        old = OldLogp(old_values, batch.mask, "never")
        old.policy_moved = True
        red = Reducer()
        loss, _, _ = accumulate_minibatch(tr.model, tr.forward, batch, rows, micro, spec.loss_fn, spec.loss_kwargs,
                                          spec.reduction, spec.norm_len, old, None, red, want_entropy=False)
        grads.append(torch.cat([p.grad.reshape(-1) for p in tr.params]))
        losses.append(loss)
        assert float(red.results()["clip/frac_low"]) + float(red.results()["clip/frac_high"]) > 0
    assert grads[0].abs().sum() > 0
    for gr, lo in zip(grads[1:], losses[1:]):
        torch.testing.assert_close(gr, grads[0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(lo, losses[0], rtol=1e-5, atol=1e-6)


def test_one_update_per_batch_is_on_policy(tmp_path, tok):
    """One optimizer step per rollout batch: old_logp = current logp (no extra forward), every ratio is 1,
    and the GMPO loss equals -mean(A) = 0 for group-normalised advantages."""
    tr = make_trainer(tmp_path, tok)
    calls = []
    orig = tr.forward.__call__
    tr.forward = lambda model, mb, entropy=False: (calls.append(mb.rows.numel()), orig(model, mb, entropy))[1]
    m = tr.step()  # rollout step 1 through the public step API
    assert sum(calls) == 8  # exactly one forward per completion: no old-logp or reference forward
    for k in ("ratio/token_min", "ratio/token_max", "ratio/seq_min", "ratio/seq_max", "ratio/token_p01", "ratio/token_p99"):
        assert m[k] == 1.0, k
    assert m["clip/frac_low"] == 0 and m["clip/frac_high"] == 0
    assert abs(m["loss/value"]) < 1e-6
    assert m["grad/norm"] > 0
    assert m["rollout/logp_gap_max"] < 1e-3  # fp32 engine and training forward agree


@pytest.mark.parametrize("mode,forwards", [("auto", 16), ("always", 24), ("never", 16)])
def test_old_logp_modes(tmp_path, tok, mode, forwards):
    """Two optimizer steps per batch: 'auto' reuses the rollout log-probs when they agree (fp32 here),
    'always' adds one no-grad forward over the batch, 'never' never recomputes."""
    tr = make_trainer(tmp_path, tok, train={"mini_batch_size": 4, "micro_batch_size": 4, "ppo_epochs": 2,
                                            "recompute_old_logp": mode})
    assert tr.updates.updates_per_batch == 4
    calls = []
    orig = tr.forward.__call__
    tr.forward = lambda model, mb, entropy=False: (calls.append(mb.rows.numel()), orig(model, mb, entropy))[1]
    m = tr.step()  # rollout step 1 through the public step API
    assert sum(calls) == forwards  # 2 epochs x 8 rows (+ 8 for 'always')
    assert m["ratio/token_max"] > 1.0 or m["ratio/token_min"] < 1.0  # later mini-batches are off-policy
    assert math.isfinite(m["loss/value"])


class SkipHook(Hook):
    def __init__(self):
        self.stats = []

    def before_optimizer_step(self, trainer, step, stats):
        self.stats.append(dict(stats))
        return "skip"


def test_skip_hook_leaves_weights_unchanged(tmp_path, tok):
    hook = SkipHook()
    tr = make_trainer(tmp_path, tok, hooks=[hook])
    before = weights(tr.model)
    opt_state = len(tr.optimizer.state)
    tr.train()
    after = weights(tr.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(tr.optimizer.state) == opt_state == 0  # no optimizer step ever ran
    assert len(hook.stats) == 2
    assert set(hook.stats[0]) >= {"loss", "grad_norm", "nonfinite", "ratio/token_max", "ratio/token_min"}
    assert hook.stats[0]["nonfinite"] == 0.0 and hook.stats[0]["grad_norm"] > 0


def test_snapshot_restore_is_exact(tmp_path, tok):
    """snapshot() then gmpo.runs.checkpoint.restore (what the trainer does with a Restore verdict) puts back
    weights, optimizer, schedule, learning rate, data position, RNG and step; replaying step 2 from there (same
    attempt count, so the same rollout seed) gives the same numbers."""
    tr = make_trainer(tmp_path, tok)
    tr.step()
    assert tr.global_step == 1
    snap = tr.snapshot()
    w1, opt1 = weights(tr.model), {k: {n: t.clone() for n, t in v.items()} for k, v in tr.optimizer.state.items()}
    lr1, data1, rng1 = tr.scheduler.state_dict(), tr.loader.state_dict(), torch.get_rng_state()
    m2 = tr.step()
    assert tr.global_step == 2
    for g in tr.optimizer.param_groups:
        g["lr"] *= 0.5
    assert not torch.equal(weights(tr.model)["model.embed_tokens.weight"], w1["model.embed_tokens.weight"])
    checkpoint.restore(tr, snap)
    tr.engine.sync_weights(tr.model)
    assert tr.global_step == 1
    assert all(torch.equal(w1[k], v) for k, v in weights(tr.model).items())
    for k, v in tr.optimizer.state.items():
        for n, t in v.items():
            assert torch.equal(t, opt1[k][n]), n
    assert tr.scheduler.state_dict() == lr1 and tr.loader.state_dict() == data1
    assert torch.equal(torch.get_rng_state(), rng1)
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)  # the lr change undone by the restore
    m2b = tr.step()  # replaying step 2 from the snapshot gives the same numbers
    assert tr.global_step == 2
    for k in m2:
        if not k.startswith("perf/"):
            assert m2b[k] == m2[k], k


class RestoreOnce(Hook):
    """Returns a Restore to the start-of-training snapshot from step `at`'s end, once, with lr factor `f`."""

    def __init__(self, at: int, f: float):
        self.at, self.f, self.snap, self.done = at, f, None, False

    def on_train_start(self, trainer):
        self.snap = trainer.snapshot()

    def on_step_end(self, trainer, step, metrics):
        if step == self.at and not self.done:
            self.done = True
            return Restore(self.snap, self.f, "start")
        return None


def test_restore_lr_factor_persists_through_schedule(tmp_path, tok):
    """A Restore's lr factor scales the schedule's base, so warm-up goes on from the scaled value."""
    tr = make_trainer(tmp_path, tok, hooks=[RestoreOnce(1, 0.1)], optim={"warmup_steps": 4})
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 / 4)
    tr.step()  # step 1 is rolled back to the start, lr x 0.1
    assert tr.global_step == 0 and tr.rollbacks == 1
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 4)
    m = tr.step()  # the retried step 1: one optimizer step, one scheduler step
    assert tr.global_step == 1
    assert m["optim/lr"] == tr.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 2 / 4)


def test_lr_schedule_values():
    s = LRSchedule(warmup=2, total=6, kind="cosine", min_ratio=0.1)
    assert [s(0), s(1)] == [0.5, 1.0]
    assert s(2) == pytest.approx(1.0)  # start of the cosine
    assert s(4) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way
    assert s(6) == pytest.approx(0.1)
    assert LRSchedule(0, 10)(7) == 1.0


def test_dynamic_sampling_cap_is_logged(tmp_path, tok):
    """No group is ever informative: sampling stops after 1 + max_sampling_rounds rounds and trains anyway."""
    tr = make_trainer(tmp_path, tok, reward="constant_reward",
                      rollout={"dynamic_sampling": True, "max_sampling_rounds": 2})
    m = tr.step()  # rollout step 1 through the public step API
    assert m["rollout/sampling_rounds"] == 3
    assert m["reward/frac_zero_std"] == 1.0
    assert tr.loader.state_dict()["position"] == 6  # three rounds of two prompts


def test_dynamic_sampling_keeps_informative_groups(tmp_path, tok):
    tr = make_trainer(tmp_path, tok, rollout={"dynamic_sampling": True, "max_sampling_rounds": 6})
    batch, seen, roll = tr.collect(1)
    assert roll.groups == 2 and len(batch.items) == 2
    assert bool(algorithms.informative_groups(batch.rewards, 4).all())
    assert roll.rounds == len(seen) >= 1


def test_kl_reference_only_with_beta(tmp_path, tok):
    tr = make_trainer(tmp_path, tok)
    assert tr.ref_model is None
    tr2 = make_trainer(tmp_path, tok, algorithm={"beta": 0.1, "kl_in": "reward"})
    assert tr2.ref_model is not None and not any(p.requires_grad for p in tr2.ref_model.parameters())
    m = tr2.step()
    assert m["reward/kl_penalty"] == pytest.approx(0.0, abs=1e-5)  # the policy is still the reference
    assert m["policy/kl"] == pytest.approx(0.0, abs=1e-5)


def _grad_of_first_update(tr):
    batch, _, _ = tr.collect(1)
    prepare(batch, tr.spec, tr.model, tr.ref_model, tr.forward, tr.cfg.train.micro_batch_size, tr.n_params, tr.device)
    tr.model.train()
    old = OldLogp(batch.rollout_logp, batch.mask, "auto")
    accumulate_minibatch(tr.model, tr.forward, batch, torch.arange(batch.n), 4, tr.spec.loss_fn, tr.spec.loss_kwargs,
                         tr.spec.reduction, tr.spec.norm_len, old, None, Reducer(), want_entropy=True)
    return torch.cat([p.grad.reshape(-1) for p in tr.params])


def test_gradient_checkpointing_gives_the_same_gradient(tmp_path, tok):
    plain = _grad_of_first_update(make_trainer(tmp_path, tok))
    ckpt = _grad_of_first_update(make_trainer(tmp_path, tok, model={"gradient_checkpointing": True}))
    assert plain.abs().sum() > 0
    torch.testing.assert_close(ckpt, plain, rtol=1e-4, atol=1e-7)


def test_bf16_autocast_step_runs(tmp_path, tok):
    tr = make_trainer(tmp_path, tok, train={"bf16": "true"})
    assert tr.bf16 and tr.forward.bf16
    before = weights(tr.model)
    m = tr.step()  # rollout step 1 through the public step API
    assert math.isfinite(m["loss/value"]) and m["grad/norm"] > 0
    assert next(tr.model.parameters()).dtype == torch.float32  # master weights stay fp32
    assert any(not torch.equal(before[k], v) for k, v in weights(tr.model).items())


def test_lora_trains_only_adapters(tmp_path, tok):
    tr = make_trainer(tmp_path, tok, model={"lora": {"enabled": True, "r": 4, "target_modules": ["q_proj", "v_proj"]}},
                      algorithm={"beta": 0.05})
    assert tr.ref_model is None  # the reference is the base model with adapters disabled
    frozen = {n: p.detach().clone() for n, p in tr.model.named_parameters() if not p.requires_grad}
    lora_b = {n: p.detach().clone() for n, p in tr.model.named_parameters() if "lora_B" in n}
    m = tr.step()  # rollout step 1 through the public step API
    assert m["policy/kl"] == pytest.approx(0.0, abs=1e-6)  # lora_B starts at 0: policy == reference
    assert all(torch.equal(frozen[n], p) for n, p in tr.model.named_parameters() if n in frozen)
    assert any(not torch.equal(lora_b[n], p) for n, p in tr.model.named_parameters() if n in lora_b)


class RollbackHook(Hook):
    """Asks for a Restore to the start-of-training snapshot during step 2's optimizer step, once, halving the
    lr; counts it as an event."""

    def __init__(self):
        self.snap, self.done, self.ends = None, False, []

    def on_train_start(self, trainer):
        self.snap = trainer.snapshot()

    def before_optimizer_step(self, trainer, step, stats):
        if step == 2 and not self.done:
            self.done = True
            trainer.events += 1
            return Restore(self.snap, 0.5, "start")
        return "ok"

    def on_step_end(self, trainer, step, metrics):
        self.ends.append((step, trainer.global_step))


def test_rollback_inside_a_step_replays_from_the_snapshot(tmp_path, tok):
    hook = RollbackHook()
    tr = make_trainer(tmp_path, tok, hooks=[hook], train={"steps": 3}, eval={"at_start": False, "at_end": False})
    out = tr.train()
    assert out["steps"] == 3 and tr.global_step == 3 and out["rollbacks"] == 1
    # the abandoned step 2 ends (hooks see it with step 1 complete), then the trainer restores between steps
    assert hook.ends == [(1, 1), (2, 1), (1, 1), (2, 2), (3, 3)]
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 1, 2, 3]
    assert records[1]["optim/skipped"] == 1.0 and records[3]["optim/skipped"] == 0.0
    assert records[2]["guard/events"] == 1.0  # events stay live through the restore
    assert [r["rollout/retry"] for r in records] == [0, 0, 1, 1, 1]
    # after the rollback: the same prompts (data position restored), sampled with a fresh, recorded seed
    samples = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert [r["step"] for r in samples] == [1, 1, 2, 2, 1, 1, 2, 2, 3, 3]
    assert [r["prompt"] for r in samples[4:6]] == [r["prompt"] for r in samples[0:2]]
    assert samples[0]["seed"] == rollout_seed(3, 1, 0, 0) and samples[4]["seed"] == rollout_seed(3, 1, 0, 1)
    assert samples[4]["seed"] != samples[0]["seed"]
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-2)


def test_shared_prompt_forward_matches_plain(tmp_path, tok):
    """Running each prompt once and reusing its KV cache gives the plain forward's log-probs and gradient."""
    tr = make_trainer(tmp_path, tok, rollout={"group_size": 4, "prompts_per_step": 2})
    batch, _, _ = tr.collect(1)
    batch.lengths = torch.tensor([8, 3, 5, 1, 7, 2, 6, 4])
    batch.mask = (torch.arange(batch.mask.shape[1])[None] < batch.lengths[:, None]).float()
    batch.completion_ids = torch.where(batch.mask.bool(), batch.completion_ids, tok.pad_token_id)
    batch.advantages = torch.randn(8, generator=torch.Generator().manual_seed(1))
    spec = tr.spec
    results = []
    for share in (False, True):
        batch.share_prompt = share
        mb = micro_batch(batch, torch.arange(8))
        assert (mb.shared is not None) == share
        tr.model.zero_grad(set_to_none=True)
        logp, ent = tr.forward(tr.model, mb, entropy=True)
        out = spec.loss_fn(logp, logp.detach() - 0.1, batch.advantages, batch.mask[:, : mb.Tc], **spec.loss_kwargs)
        out.loss.backward()
        results.append((logp * batch.mask, ent * batch.mask, torch.cat([p.grad.reshape(-1) for p in tr.params])))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert mb.n_tokens < sum(len(p) for p in batch.prompt_ids) + int(batch.lengths.sum())


@pytest.mark.parametrize("algo", [
    {"loss": "grpo"}, {"loss": "gspo"}, {"loss": "dr_grpo"}, {"loss": "dapo"},
    {"loss": "gmpo", "beta": 0.05, "kl_in": "loss", "advantage": "leave_one_out"},
    {"loss": "grpo", "advantage": "batch", "overlong": {"enabled": True, "buffer": 4}},
])
def test_every_preset_trains_a_step(tmp_path, tok, algo):
    tr = make_trainer(tmp_path, tok, algorithm=algo, train={"mini_batch_size": 4, "micro_batch_size": 2})
    before = weights(tr.model)
    m = tr.step()  # rollout step 1 through the public step API
    assert math.isfinite(m["loss/value"]) and math.isfinite(m["grad/norm"])
    assert any(not torch.equal(before[k], v) for k, v in weights(tr.model).items())
