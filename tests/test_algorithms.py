"""gmpo.algo.presets: presets, overrides, DAPO soft overlong penalty, informative groups."""
import pytest
import torch

from gmpo.algo.presets import PRESETS, informative_groups, overlong_penalty, resolve
from gmpo.config import AlgorithmConfig, OverlongConfig, load_config
from gmpo.algo.losses import gmpo_loss, grpo_loss, gspo_loss


@pytest.mark.parametrize("name,loss,eps,adv,red,ds,ol", [
    ("gmpo", "gmpo", (0.4, 0.4), "group", "seq-mean", False, False),
    ("grpo", "grpo", (0.2, 0.2), "group", "seq-mean-token-mean", False, False),
    ("dr_grpo", "grpo", (0.2, 0.2), "none", "seq-mean-token-sum-norm", False, False),
    ("dapo", "grpo", (0.2, 0.28), "group", "token-mean", True, True),
    ("gspo", "gspo", (3e-4, 4e-4), "group", "seq-mean", False, False),
])
def test_presets(name, loss, eps, adv, red, ds, ol):
    spec = resolve(AlgorithmConfig(loss=name), max_new_tokens=48, dynamic_sampling=False)
    assert (spec.loss, spec.advantage, spec.reduction, spec.dynamic_sampling, spec.overlong) == (loss, adv, red, ds, ol)
    assert (spec.loss_kwargs["eps_low"], spec.loss_kwargs["eps_high"]) == eps
    assert spec.name == name and spec.loss_kwargs["beta"] == 0.0 and not spec.needs_reference
    if loss == "grpo":
        assert spec.loss_kwargs["reduction"] == red
    else:
        assert "reduction" not in spec.loss_kwargs
    assert spec.norm_len == (48 if name == "dr_grpo" else None)
    assert set(PRESETS) == {"gmpo", "grpo", "dr_grpo", "dapo", "gspo"}


def test_explicit_values_override_presets():
    cfg = AlgorithmConfig(loss="gmpo", eps_low=0.3, eps_high=0.5, advantage="leave_one_out", beta=0.01,
                          kl_estimator="k2")
    spec = resolve(cfg, 32, False)
    assert spec.loss_kwargs == {"eps_low": 0.3, "eps_high": 0.5, "beta": 0.01, "kl_estimator": "k2"}
    assert spec.advantage == "leave_one_out" and spec.needs_reference
    spec = resolve(AlgorithmConfig(loss="grpo", reduction="token-mean", eps_high=0.0), 32, False)
    assert spec.reduction == "token-mean" and spec.loss_kwargs["reduction"] == "token-mean"
    assert spec.loss_kwargs["eps_high"] == 0.0  # 0.0 is an explicit value, not "unset"
    spec = resolve(AlgorithmConfig(loss="dr_grpo", norm_len=100), 32, False)
    assert spec.norm_len == 100 and spec.loss_kwargs["norm_len"] == 100
    spec = resolve(AlgorithmConfig(loss="grpo", reduction="seq-mean-token-sum-norm"), 64, False)
    assert spec.norm_len == 64
    spec = resolve(AlgorithmConfig(loss="dapo", eps_high=0.3, advantage="batch"), 32, False)
    assert spec.loss_kwargs["eps_high"] == 0.3 and spec.loss_kwargs["eps_low"] == 0.2 and spec.advantage == "batch"


def test_extras_switch_on_for_any_preset():
    cfg = AlgorithmConfig(loss="gmpo", overlong=OverlongConfig(enabled=True, buffer=4, penalty=0.5))
    spec = resolve(cfg, 32, dynamic_sampling=True)
    assert spec.dynamic_sampling and spec.overlong
    assert (spec.overlong_buffer, spec.overlong_penalty) == (4, 0.5)


def test_kl_in_reward_keeps_beta_out_of_the_loss():
    spec = resolve(AlgorithmConfig(loss="grpo", beta=0.05, kl_in="reward"), 32, False)
    assert spec.loss_kwargs["beta"] == 0.0 and spec.beta == 0.05 and spec.kl_in == "reward"
    assert spec.needs_reference


def test_resolve_errors():
    with pytest.raises(ValueError, match=r"does not apply to gmpo \(loss 'gmpo'\); valid: seq-mean"):
        resolve(AlgorithmConfig(loss="gmpo", reduction="token-mean"), 32, False)
    with pytest.raises(ValueError, match="gmpo, grpo, dr_grpo, dapo, gspo"):
        resolve(AlgorithmConfig(loss="ppo"), 32, False)
    with pytest.raises(ValueError, match="group, none, leave_one_out, batch"):
        resolve(AlgorithmConfig(loss="grpo", advantage="gae"), 32, False)
    with pytest.raises(ValueError, match=">= 0"):
        resolve(AlgorithmConfig(loss="grpo", eps_low=-0.1), 32, False)


def test_spec_drives_the_loss_without_name_branches():
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(4, 6, generator=g)
    logp = old + 0.3 * torch.randn(4, 6, generator=g)
    adv, mask = torch.randn(4, generator=g), torch.ones(4, 6)
    mask[2, 4:] = 0
    for name, direct in [("gmpo", lambda: gmpo_loss(logp, old, adv, mask)),
                         ("dapo", lambda: grpo_loss(logp, old, adv, mask, eps_high=0.28, reduction="token-mean")),
                         ("dr_grpo", lambda: grpo_loss(logp, old, adv, mask, reduction="seq-mean-token-sum-norm",
                                                       norm_len=6)),
                         ("gspo", lambda: gspo_loss(logp, old, adv, mask))]:
        spec = resolve(AlgorithmConfig(loss=name), 6, False)
        out = spec.loss_fn(logp, old, adv, mask, **spec.loss_kwargs)
        torch.testing.assert_close(out.loss, direct().loss)


def test_resolve_from_a_loaded_config_with_overrides():
    cfg = load_config(None, ["algorithm.loss=dr_grpo", "algorithm.eps_high=0.25", "rollout.max_new_tokens=20"])
    spec = resolve(cfg.algorithm, cfg.rollout.max_new_tokens, cfg.rollout.dynamic_sampling)
    assert spec.norm_len == 20 and spec.loss_kwargs["eps_high"] == 0.25 and spec.advantage == "none"


def test_overlong_penalty_boundaries():
    # L_max 32, L_buf 8: 0 up to 24, then (24 - len) / 8 * penalty, -penalty at 32 and beyond
    lengths = torch.tensor([0, 24, 25, 28, 31, 32, 40])
    torch.testing.assert_close(overlong_penalty(lengths, max_len=32, buffer=8, penalty=1.0),
                               torch.tensor([0.0, 0.0, -0.125, -0.5, -0.875, -1.0, -1.0]))
    torch.testing.assert_close(overlong_penalty(lengths, 32, 8, penalty=0.5),
                               torch.tensor([0.0, 0.0, -0.0625, -0.25, -0.4375, -0.5, -0.5]))
    # buffer == max_len: the ramp starts at length 0
    torch.testing.assert_close(overlong_penalty(torch.tensor([0, 2, 4]), 4, 4), torch.tensor([0.0, -0.5, -1.0]))
    assert overlong_penalty(lengths, 32, 8).dtype == torch.float32
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(lengths, 32, 0)
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(lengths, 32, 33)
    with pytest.raises(ValueError, match="penalty"):
        overlong_penalty(lengths, 32, 8, penalty=-1.0)


def test_informative_groups():
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5])
    assert torch.equal(informative_groups(r, 3), torch.tensor([False, True, False]))
    assert torch.equal(informative_groups(torch.tensor([0.0, 1e-7]), 2), torch.tensor([True]))
    with pytest.raises(ValueError, match="multiple of group_size"):
        informative_groups(r, 4)
