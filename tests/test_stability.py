"""StabilityTracker: windowed variance / std / ratio range / trend slopes against hand-computed values."""
import json
import math

import pytest

from gmpo.telemetry.stability import StabilityTracker, slope, variance


def step(loss=None, gn=None, hi=None, lo=None, ent=None, kl=None, rew=None):
    m = {}
    for k, v in (("loss/value", loss), ("grad/norm", gn), ("ratio/token_max", hi), ("ratio/token_min", lo),
                 ("policy/entropy", ent), ("policy/kl", kl), ("reward/mean", rew)):
        if v is not None:
            m[k] = v
    return m


def test_first_step_is_defined_without_nan():
    tr = StabilityTracker(window=20)
    out = tr.update(step(loss=0.5, gn=2.0, hi=1.5, lo=0.5, ent=1.2, kl=0.0, rew=0.3))
    assert out == {"stability/loss_var": 0.0, "stability/grad_norm_std": 0.0, "stability/ratio_range": 3.0,
                   "stability/entropy_slope": 0.0, "stability/kl_slope": 0.0, "stability/reward_slope": 0.0}


def test_hand_values_over_a_window():
    tr = StabilityTracker(window=3)
    tr.update(step(loss=1.0, gn=1.0, hi=1.1, lo=0.9, ent=3.0, kl=0.0))
    tr.update(step(loss=2.0, gn=3.0, hi=2.0, lo=0.8, ent=2.0, kl=0.1))
    out = tr.update(step(loss=3.0, gn=5.0, hi=1.2, lo=0.5, ent=1.0, kl=0.4))
    # loss 1,2,3: mean 2, population variance (1+0+1)/3
    assert out["stability/loss_var"] == pytest.approx(2 / 3)
    # grad 1,3,5: variance (4+0+4)/3 = 8/3
    assert out["stability/grad_norm_std"] == pytest.approx(math.sqrt(8 / 3))
    assert out["stability/ratio_range"] == pytest.approx(2.0 / 0.5)
    assert out["stability/entropy_slope"] == pytest.approx(-1.0)
    # kl 0, .1, .4 at t=0,1,2: slope = sum((t-1)(y-.1667))/2 = (-1*-.1667 + 1*.2333)/2 = 0.2
    assert out["stability/kl_slope"] == pytest.approx(0.2)
    # a 4th step drops the first from the window of 3
    out = tr.update(step(loss=3.0, gn=5.0, hi=1.0, lo=1.0, ent=1.0, kl=0.4))
    assert out["stability/loss_var"] == pytest.approx(variance([2.0, 3.0, 3.0]))
    assert out["stability/ratio_range"] == pytest.approx(2.0 / 0.5)  # 2.0 and 0.5 still inside
    out = tr.update(step(loss=3.0, gn=5.0, hi=1.0, lo=1.0))
    out = tr.update(step(loss=3.0, gn=5.0, hi=1.0, lo=1.0))
    assert out["stability/ratio_range"] == pytest.approx(1.0)
    assert out["stability/loss_var"] == 0.0


def test_nonfinite_values_skipped_and_missing_keys_left_out():
    tr = StabilityTracker(window=5)
    assert tr.update({}) == {}
    out = tr.update(step(loss=float("nan"), gn=float("inf")))
    assert out == {}
    out = tr.update(step(loss=1.0, gn=2.0))
    assert out == {"stability/loss_var": 0.0, "stability/grad_norm_std": 0.0}
    out = tr.update(step(loss=3.0, gn=float("nan")))
    assert out["stability/loss_var"] == pytest.approx(1.0)
    assert all(math.isfinite(v) for v in out.values())


def test_slope_uses_step_positions_with_gaps():
    tr = StabilityTracker(window=10)
    tr.update(step(ent=1.0))
    tr.update({})  # a step without entropy still advances the x-axis
    out = tr.update(step(ent=0.0))
    assert out["stability/entropy_slope"] == pytest.approx(-0.5)
    assert slope([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 5.0, 7.0]) == pytest.approx(2.0)
    assert slope([4.0], [7.0]) == 0.0


def test_state_dict_round_trip_is_exact():
    seq = [step(loss=0.1 * i, gn=1.0 + (i % 3), hi=1.0 + 0.05 * i, lo=1.0 - 0.03 * i, ent=2.0 - 0.1 * i,
                kl=0.01 * i * i, rew=0.2 * (i % 2)) for i in range(12)]
    a = StabilityTracker(window=4)
    for m in seq[:7]:
        a.update(m)
    state = json.loads(json.dumps(a.state_dict()))  # survives a JSON round trip
    b = StabilityTracker(window=99)
    b.load_state_dict(state)
    assert b.window == 4
    for m in seq[7:]:
        assert a.update(m) == b.update(m)


def test_bad_window():
    with pytest.raises(ValueError, match="window"):
        StabilityTracker(window=0)
