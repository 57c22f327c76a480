"""Guard on the real GMPOTrainer with the tiny model: injected NaN, gradient spike and ratio explosion trigger
their configured actions; rollbacks (in memory and from disk) restore exact weights and optimizer state and
training goes on; the webhook receives events; nothing written before the rollback point is lost."""
import copy
import http.server
import json
import threading

import pytest
import torch

from gmpo.config import load_config
from gmpo.guard import Guard, read_alerts
from gmpo.rewards.runner import REWARDS, register_reward
from gmpo.testing import tiny_model
from gmpo.train.hooks import Hook


def _char_reward(prompts, completions, **columns):
    """Varied rewards from a random model: the fraction of vowels and digits in the completion."""
    return [sum(ch in "aeiou0123456789" for ch in c) / max(1, len(c)) for c in completions]


if "test_chars" not in REWARDS:
    register_reward("test_chars", _char_reward)


def make_trainer(run_dir, tok, *overrides, hooks=()):
    from gmpo.train import GMPOTrainer

    cfg = load_config(None, [
        f"train.output_dir={run_dir}", "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=6",
        "rollout.truncated_reward=keep", "train.steps=6", "eval.at_start=false", "eval.at_end=false",
        "log.progress=false", "log.samples_per_step=0", "train.device=cpu", 'train.bf16="false"',
        "data.arithmetic.n_train=64", "data.arithmetic.n_eval=8", "data.eval_size=4", "optim.lr=1e-2",
        "rewards=[{name: test_chars}]", "guard.no_signal_action=off", "guard.length_action=off",
        "guard.entropy_action=off", "guard.reward_action=off", "guard.min_history=3", "guard.grad_spike_z=50",
        *overrides])
    return GMPOTrainer(tiny_model(tok, seed=0), tok, cfg, hooks=list(hooks))


class Record(Hook):
    """Keeps weights + optimizer state at the end of every completed step (first time each step is reached)
    and the bytes of metrics.jsonl / alerts.jsonl as they were then."""

    def __init__(self):
        self.states, self.files = {}, {}

    def on_step_end(self, trainer, step, metrics):
        if trainer.global_step in self.states:
            return
        self.states[trainer.global_step] = ([p.detach().clone() for p in trainer.params],
                                            copy.deepcopy(trainer.optimizer.state_dict()))
        self.files[trainer.global_step] = {n: (trainer.run_dir / n).read_bytes() if (trainer.run_dir / n).exists() else b""
                                    for n in ("metrics.jsonl", "alerts.jsonl")}


class Inject(Hook):
    """Arms a one-shot fault for the training forward of rollout step `at` (the replay after a rollback is clean)."""

    def __init__(self, at: int, kind: str):
        self.at, self.kind, self.done = at, kind, False
        self.handles = []
        self.forwards = 0  # training forwards of step `at` so far

    def on_train_start(self, trainer):
        self.trainer = trainer
        if self.kind in ("nan", "ratio"):
            self.handles.append(trainer.model.register_forward_hook(self._forward))
        else:
            self.handles.extend(p.register_hook(self._grad) for p in trainer.params)

    def _active(self):  # the training forward/backward of step `at` (rollout decoding runs without grad)
        return not self.done and self.trainer.global_step + 1 == self.at and self.trainer.model.training

    def _forward(self, module, args, out):
        if self._active() and torch.is_grad_enabled():
            self.forwards += 1
            if self.kind == "nan":
                out.logits = out.logits * float("nan")
            elif self.forwards > 1:  # ratio: a sharper policy after the first update (old log-probs are from the first)
                out.logits = out.logits * 25.0
        return out

    def _grad(self, g):
        return g * 1e4 if self._active() else g

    def on_step_end(self, trainer, step, metrics):
        if step == self.at:
            self.done = True


def same_state(a, b):
    pa, oa = a
    pb, ob = b
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert oa["state"].keys() == ob["state"].keys()
    for k in oa["state"]:
        for name, v in oa["state"][k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ob["state"][k][name])), (k, name)


def spy_restore(trainer):
    """Weights + optimizer state the trainer holds after each rollback: the trainer restores between steps, so
    they are what the collect phase of the first retry (attempt = rollbacks so far) starts from."""
    seen = []
    collect = trainer.collect

    def spy(step, attempt=0):
        if attempt > len(seen):
            seen.append(([p.detach().clone() for p in trainer.params], copy.deepcopy(trainer.optimizer.state_dict())))
        return collect(step, attempt)
    trainer.collect = spy
    return seen


class _Handler(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        _Handler.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def webhook():
    _Handler.received = []
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/alerts", _Handler.received
    srv.shutdown()
    srv.server_close()
    t.join(timeout=5)


def test_injected_nan_is_skipped_and_posted(tmp_path, tok, webhook):
    url, received = webhook
    rec = Record()
    tr = make_trainer(tmp_path, tok, "guard.nonfinite_action=skip", f"guard.webhook_url={url}",
                      hooks=[Inject(3, "nan"), rec])
    assert isinstance(tr.hooks.hooks[0], Guard)
    summary = tr.train()
    assert summary["steps"] == 6 and summary["stop_reason"] is None
    assert [(e["step"], e["detector"], e["action"]) for e in read_alerts(tmp_path)] == [(3, "nonfinite", "skip")]
    same_state(rec.states[2], rec.states[3])  # the NaN update was not applied
    assert all(torch.isfinite(p).all() for p in tr.params)
    assert len(received) == 1 and received[0]["detector"] == "nonfinite" and received[0]["step"] == 3
    m = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in m] == [1, 2, 3, 4, 5, 6]
    assert m[2]["optim/skipped"] == 1.0 and m[2]["guard/events"] == 1.0 and m[3]["optim/skipped"] == 0.0


def test_injected_grad_spike_rolls_back_exactly_and_goes_on(tmp_path, tok):
    rec = Record()
    tr = make_trainer(tmp_path, tok, "guard.grad_spike_action=rollback", "guard.snapshot_every=2",
                      "guard.rollback_lr_factor=0.5", hooks=[Inject(5, "grad"), rec])
    seen = spy_restore(tr)
    summary = tr.train()
    assert [(e["step"], e["detector"], e["action"]) for e in read_alerts(tmp_path)] == [(5, "grad_spike", "rollback")]
    assert len(seen) == 1
    same_state(seen[0], rec.states[4])  # exactly the weights and optimizer state after step 4
    assert summary["steps"] == 6 and summary["rollbacks"] == 1
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(5e-3)
    # nothing written before the rollback point is lost; the abandoned attempt of step 5 is kept as well
    for name, before in rec.files[4].items():
        assert (tmp_path / name).read_bytes().startswith(before)
    steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 5, 6]


def test_forced_ratio_explosion_stops_with_checkpoint(tmp_path, tok):
    rec = Record()
    # two optimizer steps per rollout step (ppo_epochs=2): the second sees ratios against the first's log-probs
    tr = make_trainer(tmp_path, tok, "guard.ratio_action=stop", "guard.ratio_bound=5", "train.ppo_epochs=2",
                      hooks=[Inject(3, "ratio"), rec])
    saves = []
    orig = tr.save_checkpoint
    tr.save_checkpoint = lambda: saves.append(orig()) or saves[-1]
    summary = tr.train()
    alerts = read_alerts(tmp_path)
    # the injected ratio blow-up may also trip the gradient-spike detector (a warning): only the stop matters
    assert all(e["action"] == "warn" for e in alerts if e["detector"] != "ratio_explosion")
    (ev,) = [e for e in alerts if e["detector"] == "ratio_explosion"]
    assert (ev["step"], ev["detector"], ev["action"]) == (3, "ratio_explosion", "stop") and ev["value"] > 5
    assert "ratio_explosion" in summary["stop_reason"] and summary["steps"] == 3
    assert saves[0].name == "step_000003"  # the stop's checkpoint, written once step 3 ended
    m = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert m[-1]["step"] == 3 and m[-1]["optim/skipped"] == 0.5  # 1st update applied, the exploding 2nd skipped
    assert m[-1]["ratio/token_max"] > 5 or m[-1]["ratio/token_min"] < 0.2


def test_rollback_from_disk_checkpoint(tmp_path, tok):
    rec = Record()
    tr = make_trainer(tmp_path, tok, "guard.nonfinite_action=rollback", "guard.snapshot_every=0", "train.save_every=2",
                      "train.keep_checkpoints=3", hooks=[Inject(5, "nan"), rec])
    seen = spy_restore(tr)
    summary = tr.train()
    assert [(e["step"], e["action"]) for e in read_alerts(tmp_path)] == [(5, "rollback")]
    same_state(seen[0], rec.states[4])  # restored from checkpoints/step_000004
    assert summary["steps"] == 6 and tr.hooks.hooks[0].rollbacks == 1 and summary["rollbacks"] == 1


def test_guard_state_survives_resume(tmp_path, tok):
    tr = make_trainer(tmp_path, tok, "train.steps=3", "train.save_every=2")
    tr.train()
    saved = tr.hooks.hooks[0].state_dict()
    assert len(saved["detectors"]["grad_spike"]["hist"]) >= 2
    tr2 = make_trainer(tmp_path, tok, "train.steps=4", "train.resume=auto")
    assert tr2.global_step == 3 and tr2.hooks.hooks[0].state_dict() == saved
