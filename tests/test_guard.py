"""Guard: detectors on hand-made metric sequences, actions through a small fake trainer, webhook, resume."""
import copy
import http.server
import json
import threading
import time
from pathlib import Path

import pytest
import torch

from gmpo.config import ConfigError, GuardConfig, load_config
from gmpo.guard import Guard, Webhook, read_alerts, robust_z
from gmpo.train.hooks import HookList, Restore


# ----------------------------------------------------------------------------------------------
# a fake trainer implementing the hook-facing side of gmpo.train.GMPOTrainer (gmpo/train/hooks.py)


class FakeTrainer:
    """Linear model + AdamW; `inject` maps step -> {"nan": True} | {"grad_scale": x} | stats overrides.

    Like GMPOTrainer: one optimizer step per rollout step, applied only on an "ok" verdict; a step abandoned by a
    Restore is still logged and ended (``on_step_end``), then the trainer returns to the snapshot between steps,
    multiplying the lr by every rollback's factor so far (over the snapshot's own) and keeping ``events`` live.
    """

    def __init__(self, run_dir: Path, hooks, lr=0.05, inject=None, metrics_fn=None, sticky=False):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.hooks = HookList(hooks)
        self.inject = inject or {}
        self.sticky = sticky  # False: an injection happens once (a replay after a rollback is clean)
        self.metrics_fn = metrics_fn or (lambda step: {})
        self.global_step = 0
        self.events = 0
        self.rollbacks = 0
        self.lr_scale = 1.0
        self.stop_reason = None
        self.applied = []  # steps whose update was applied

    # the hook-facing API
    def snapshot(self):
        return copy.deepcopy({"model": self.model.state_dict(), "optim": self.optimizer.state_dict(),
                              "step": self.global_step, "lr_scale": self.lr_scale})

    def save_checkpoint(self):
        path = self.run_dir / f"checkpoint-{self.global_step}"
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.snapshot(), path / "state.pt")
        return path

    def request_stop(self, reason):
        self.stop_reason = reason

    # carrying out a Restore (GMPOTrainer._restore)
    def _restore(self, r: Restore):
        scale = self.lr_scale * r.lr_factor
        snap = copy.deepcopy(r.snapshot)
        self.model.load_state_dict(snap["model"])
        self.optimizer.load_state_dict(snap["optim"])
        self.global_step = snap["step"]
        for g in self.optimizer.param_groups:
            g["lr"] *= scale / snap["lr_scale"]
        self.lr_scale, self.rollbacks = scale, self.rollbacks + 1

    # the loop
    def train(self, steps):
        self.hooks.on_train_start(self)
        while self.global_step < steps and self.stop_reason is None:
            step = self.global_step + 1
            inj = self.inject.get(step, {}) if self.sticky else self.inject.pop(step, {})
            x = torch.arange(4.0).unsqueeze(0) + step
            loss = (self.model(x) - 1.0).pow(2).mean()
            if inj.get("nan"):
                loss = loss * float("nan")
            loss.backward()
            if "grad_scale" in inj:
                for p in self.model.parameters():
                    p.grad.mul_(inj["grad_scale"])
            gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float("inf"))
            stats = {"loss": float(loss.detach()), "grad_norm": float(gn),
                     "nonfinite": float(not (torch.isfinite(loss) and torch.isfinite(gn))),
                     "ratio/token_max": inj.get("ratio_max", 1.1), "ratio/token_min": inj.get("ratio_min", 0.9)}
            verdict = self.hooks.before_optimizer_step(self, step, stats)
            if verdict == "ok":
                self.optimizer.step()
                self.applied.append(step)
            self.optimizer.zero_grad()
            restore = verdict if isinstance(verdict, Restore) else None
            if restore is None:
                self.global_step = step
            metrics = {"loss/value": stats["loss"], "grad/norm": stats["grad_norm"], "optim/lr": self.lr,
                       **self.metrics_fn(step)}
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
            end = self.hooks.on_step_end(self, step, metrics)
            restore = restore or (end if isinstance(end, Restore) else None)
            if restore is not None:
                self._restore(restore)

    @property
    def lr(self):
        return self.optimizer.param_groups[0]["lr"]


def cfg(**kw):
    base = dict(nonfinite_action="skip", grad_spike_action="warn", ratio_action="warn", entropy_action="warn",
                reward_action="warn", length_action="warn", no_signal_action="warn", min_history=3,
                snapshot_every=2, webhook_url="")
    base.update(kw)
    return GuardConfig(**base)


def params(model):
    return [p.detach().clone() for p in model.parameters()]


# ----------------------------------------------------------------------------------------------
# pure pieces


def test_robust_z_hand_values():
    # median 3, |dev| = 2,1,0,1,97 -> MAD 1 -> scale 1.4826
    assert robust_z(10.0, [1, 2, 3, 4, 100]) == pytest.approx(7 / 1.4826)
    # constant history: MAD 0, scale floored at 5% of the median (0.1)
    assert robust_z(2.5, [2.0, 2.0, 2.0]) == pytest.approx(5.0)


def test_config_keys_and_validation():
    c = load_config(None, ["guard.grad_spike_action=rollback", "guard.grad_spike_z=6"])
    assert c.guard.grad_spike_action == "rollback" and c.guard.grad_spike_z == 6.0
    with pytest.raises(ConfigError, match="guard.ratio_action"):
        load_config(None, ["guard.ratio_action=explode"])
    with pytest.raises(ValueError, match="entropy_action"):
        Guard(cfg(entropy_action="panic"))


class Recorder:
    """Minimal trainer for detector tests (no model): records stop requests."""

    def __init__(self, run_dir):
        self.run_dir, self.global_step, self.events = Path(run_dir), 0, 0
        self.stopped = None

    def snapshot(self):
        return {"step": self.global_step}

    def save_checkpoint(self):
        return self.run_dir / "ckpt"

    def request_stop(self, reason):
        self.stopped = reason


def feed(guard, tr, seq, pre=False):
    out = []
    for i, m in enumerate(seq, start=1):
        tr.global_step = i - 1 if pre else i  # step i is running (pre) or has completed (step end)
        if pre:
            out.append(guard.before_optimizer_step(tr, i, m))
        else:
            guard.on_step_end(tr, i, m)
    return out


def detectors_fired(run_dir):
    return [(e["step"], e["detector"], e["action"]) for e in read_alerts(run_dir)]


def test_grad_spike_needs_history_then_fires(tmp_path):
    g, tr = Guard(cfg(grad_spike_action="skip", grad_spike_z=5.0)), Recorder(tmp_path)
    # a spike at step 2 cannot fire (history 1 < 3); steps 3-5 build history; 50 at step 6 fires
    # zero norms (steps without learning signal) neither fire nor enter the history
    seq = [{"grad_norm": x, "loss": 1.0} for x in (1.0, 50.0, 0.0, 1.1, 0.9, 0.0, 1.0, 50.0, 1.05)]
    out = feed(g, tr, seq, pre=True)
    assert out == ["ok", "ok", "ok", "ok", "ok", "ok", "ok", "skip", "ok"]
    ev = read_alerts(tmp_path)
    assert [(e["step"], e["detector"], e["action"]) for e in ev] == [(8, "grad_spike", "skip")]
    # history at step 8: [1, 50, 1.1, .9, 1]: median 1, MAD .1 -> z = 49 / .14826
    assert ev[0]["value"] == pytest.approx(49 / 0.14826, rel=1e-4)
    assert ev[0]["threshold"] == 5.0 and tr.events == 1


def test_nonfinite_and_ratio(tmp_path):
    g, tr = Guard(cfg(ratio_action="skip", ratio_bound=10.0)), Recorder(tmp_path)
    seq = [{"loss": float("nan"), "grad_norm": 1.0, "nonfinite": 1.0, "ratio/token_max": 1e6, "ratio/token_min": 0.5},
           {"loss": 1.0, "grad_norm": 1.0, "nonfinite": 0.0, "ratio/token_max": 1.2, "ratio/token_min": 0.05},
           {"loss": 1.0, "grad_norm": 1.0, "nonfinite": 0.0, "ratio/token_max": 9.9, "ratio/token_min": 0.2}]
    assert feed(g, tr, seq, pre=True) == ["skip", "skip", "ok"]
    ev = read_alerts(tmp_path)
    # the NaN step reports only the NaN (the ratio would only echo it)
    assert [(e["step"], e["detector"]) for e in ev] == [(1, "nonfinite"), (2, "ratio_explosion")]
    assert ev[0]["value"] == "nan" and ev[1]["value"] == pytest.approx(20.0) and ev[1]["threshold"] == 10.0


def test_per_step_detectors_hand_sequences(tmp_path):
    g = Guard(cfg(entropy_floor=0.1, reward_drop=0.35, reward_smooth=2, reward_window=10, length_factor=3.0,
                  truncated_max=0.5))
    tr = Recorder(tmp_path)
    seq = [
        {"policy/entropy": 1.0, "reward/mean": 0.2, "rollout/len_mean": 10, "rollout/truncated_frac": 0.0, "reward/frac_zero_std": 0.5},
        {"policy/entropy": 0.05, "reward/mean": 0.8, "rollout/len_mean": 12, "rollout/truncated_frac": 0.0, "reward/frac_zero_std": 0.5},
        {"policy/entropy": 0.04, "reward/mean": 0.8, "rollout/len_mean": 11, "rollout/truncated_frac": 0.6, "reward/frac_zero_std": 1.0},
        {"policy/entropy": 0.5, "reward/mean": 0.2, "rollout/len_mean": 11, "rollout/truncated_frac": 0.0, "reward/frac_zero_std": 0.5},
        {"policy/entropy": 0.01, "reward/mean": 0.2, "rollout/len_mean": 40, "rollout/truncated_frac": 0.0, "reward/frac_zero_std": 1.0},
    ]
    feed(g, tr, seq)
    # entropy: below floor at 2 and 3 (one warning: edge-triggered), clears at 4, fires again at 5
    # reward smoothed (window 2): .2, .5, .8, .5, .2; best .8 -> drops .3 (step 4, not > .35) and .6 (step 5)
    # length: truncated .6 > .5 at step 3; clear at 4; len 40 > 3 x median(10,12,11,11)=33 at step 5
    # no signal at 3 and 5 (cleared at 4 in between)
    assert sorted(detectors_fired(tmp_path)) == sorted([
        (2, "entropy_collapse", "warn"), (3, "length_blowup", "warn"), (3, "no_signal", "warn"),
        (5, "length_blowup", "warn"), (5, "entropy_collapse", "warn"), (5, "reward_collapse", "warn"),
        (5, "no_signal", "warn")])
    rc = [e for e in read_alerts(tmp_path) if e["detector"] == "reward_collapse"][0]
    assert rc["value"] == pytest.approx(0.2) and rc["threshold"] == pytest.approx(0.45)
    lb = [e for e in read_alerts(tmp_path) if e["detector"] == "length_blowup"]
    assert lb[1]["value"] == 40 and lb[1]["threshold"] == pytest.approx(33.0)
    assert tr.events == 7


def test_skip_after_update_degrades_to_warn(tmp_path):
    g, tr = Guard(cfg(entropy_action="skip", entropy_floor=0.5)), Recorder(tmp_path)
    feed(g, tr, [{"policy/entropy": 0.1}])
    (ev,) = read_alerts(tmp_path)
    assert ev["action"] == "warn" and "cannot skip" in ev["message"]
    # ...but when the trainer passes the key before the update, skip works
    g2, tr2 = Guard(cfg(entropy_action="skip", entropy_floor=0.5)), Recorder(tmp_path / "b")
    assert g2.before_optimizer_step(tr2, 1, {"loss": 1.0, "grad_norm": 1.0, "policy/entropy": 0.1}) == "skip"
    g2.on_step_end(tr2, 1, {"policy/entropy": 0.1})  # same step: not evaluated twice
    assert tr2.events == 1


# ----------------------------------------------------------------------------------------------
# actions through the fake trainer


def test_injected_nan_is_skipped_and_training_goes_on(tmp_path):
    g = Guard(cfg(nonfinite_action="skip"))
    tr = FakeTrainer(tmp_path, [g], inject={3: {"nan": True}})
    tr.train(6)
    assert tr.applied == [1, 2, 4, 5, 6] and tr.global_step == 6
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    assert detectors_fired(tmp_path) == [(3, "nonfinite", "skip")] and tr.events == 1


def test_injected_grad_spike_rolls_back_to_exact_state(tmp_path):
    g = Guard(cfg(grad_spike_action="rollback", grad_spike_z=8.0, snapshot_every=2, rollback_lr_factor=0.5))
    ref = FakeTrainer(tmp_path / "ref", [])
    ref.train(4)  # the state after step 4 = the last snapshot before the spike at step 5
    want_params, want_optim = params(ref.model), ref.optimizer.state_dict()

    tr = FakeTrainer(tmp_path / "run", [g], inject={5: {"grad_scale": 1e4}})
    seen = {}
    orig_restore = tr._restore

    def spy(r):
        assert isinstance(r, Restore) and r.lr_factor == 0.5 and "step 4" in r.source
        orig_restore(r)
        seen["params"], seen["optim"] = params(tr.model), copy.deepcopy(tr.optimizer.state_dict())
    tr._restore = spy
    tr.train(8)
    assert detectors_fired(tmp_path / "run") == [(5, "grad_spike", "rollback")]
    for a, b in zip(seen["params"], want_params):
        assert torch.equal(a, b)
    for k, st in want_optim["state"].items():
        for name, v in st.items():
            assert torch.equal(torch.as_tensor(seen["optim"]["state"][k][name]), torch.as_tensor(v))
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    assert tr.global_step == 8 and tr.applied == [1, 2, 3, 4, 5, 6, 7, 8]  # replayed 5 with the smaller lr, went on
    assert tr.rollbacks == 1
    # nothing written before the rollback point is lost: steps 1-4, the abandoned 5, then the replay
    steps = [json.loads(l)["step"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 5, 6, 7, 8]
    assert g.snapshot_step == 8 and g.healthy_steps == 8  # the abandoned attempt of step 5 was not healthy


def test_forced_ratio_explosion_stops_with_checkpoint(tmp_path):
    g = Guard(cfg(ratio_action="stop", ratio_bound=5.0))
    tr = FakeTrainer(tmp_path, [g], inject={3: {"ratio_max": 40.0}})
    tr.train(10)
    assert tr.applied == [1, 2]  # the exploding update was not applied
    assert "ratio_explosion" in tr.stop_reason
    assert (tmp_path / "checkpoint-3" / "state.pt").is_file()  # saved once step 3 ended (skipped update)
    assert g.before_optimizer_step(tr, 4, {"loss": 1.0, "grad_norm": 1.0}) == "skip"  # stopping: nothing more applies
    assert detectors_fired(tmp_path) == [(3, "ratio_explosion", "stop")]


def test_rollback_limit_turns_into_stop(tmp_path):
    g = Guard(cfg(nonfinite_action="rollback", max_rollbacks=1, snapshot_every=1))
    tr = FakeTrainer(tmp_path, [g], inject={3: {"nan": True}}, sticky=True)
    tr.train(6)  # step 3 is NaN every time it is replayed: rollback once, then stop
    assert detectors_fired(tmp_path) == [(3, "nonfinite", "rollback"), (3, "nonfinite", "stop")]
    assert tr.stop_reason and tr.applied == [1, 2]
    assert (tmp_path / "checkpoint-3").is_dir()


def test_successive_rollbacks_compound_the_lr(tmp_path):
    """The same failure each replay: every Restore to the same snapshot lowers the lr once more (x f, x f^2,
    x f^3), until max_rollbacks turns the next one into a stop."""
    g = Guard(cfg(nonfinite_action="rollback", max_rollbacks=3, snapshot_every=1, rollback_lr_factor=0.5))
    tr = FakeTrainer(tmp_path, [g], inject={3: {"nan": True}}, sticky=True)
    tr.train(6)
    assert detectors_fired(tmp_path) == [(3, "nonfinite", "rollback")] * 3 + [(3, "nonfinite", "stop")]
    recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 3, 3, 3]
    assert [r["optim/lr"] for r in recs[2:]] == pytest.approx([0.05, 0.025, 0.0125, 0.00625])
    assert tr.rollbacks == g.rollbacks == 3 and tr.lr == pytest.approx(0.00625)
    assert tr.applied == [1, 2] and tr.stop_reason and tr.events == 4


def test_snapshots_only_when_a_rollback_is_configured(tmp_path):
    g = Guard(cfg(snapshot_every=1))  # no detector rolls back
    tr = FakeTrainer(tmp_path, [g])
    tr.train(3)
    assert g.snapshot is None and not g.keep_snapshots
    g = Guard(cfg(snapshot_every=1, reward_action="rollback"))
    tr = FakeTrainer(tmp_path / "b", [g])
    tr.train(3)
    assert g.snapshot["step"] == 3


def test_guard_state_survives_resume(tmp_path):
    seq = [{"grad_norm": 1.0 + 0.01 * i, "loss": 1.0} for i in range(8)] + [{"grad_norm": 30.0, "loss": 1.0}]
    a, ta = Guard(cfg(grad_spike_action="skip", grad_spike_z=5.0)), Recorder(tmp_path / "a")
    feed(a, ta, seq[:8], pre=True)
    b, tb = Guard(cfg(grad_spike_action="skip", grad_spike_z=5.0)), Recorder(tmp_path / "b")
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.before_optimizer_step(tb, 9, seq[8]) == a.before_optimizer_step(ta, 9, seq[8]) == "skip"
    assert b.state_dict() == a.state_dict()


# ----------------------------------------------------------------------------------------------
# webhook


class _Handler(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        n = int(self.headers["Content-Length"])
        _Handler.received.append(json.loads(self.rfile.read(n)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    _Handler.received = []
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/hook", _Handler.received
    srv.shutdown()
    srv.server_close()
    t.join(timeout=5)


def test_webhook_receives_event_and_is_rate_limited(tmp_path, server):
    url, received = server
    now = [100.0]
    g = Guard(cfg(nonfinite_action="skip"), webhook=Webhook(url, timeout=2.0, min_interval=30.0, clock=lambda: now[0]))
    tr = FakeTrainer(tmp_path, [g], inject={k: {"nan": True} for k in (2, 3, 4, 5)})
    tr.train(5)  # a burst of 4 events
    assert tr.events == 4 and len(received) == 1
    assert received[0]["detector"] == "nonfinite" and received[0]["step"] == 2 and received[0]["action"] == "skip"
    assert received[0]["source"] == "gmpo.guard"
    now[0] += 31.0
    g.emit(tr, 6, "manual", 1.0, 0.0, "warn", "test")
    assert len(received) == 2 and received[1]["suppressed"] == 3


def test_webhook_failure_never_crashes(tmp_path):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    wh = Webhook(f"http://127.0.0.1:{port}/x", timeout=0.5, min_interval=0.0)
    t0 = time.monotonic()
    assert wh.send({"step": 1}) is False
    assert wh.failed == 1 and time.monotonic() - t0 < 2.0
