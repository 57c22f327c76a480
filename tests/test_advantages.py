"""gmpo.algo.advantages: hand-checked values for every mode, Bessel's correction, all-equal groups."""
import math

import pytest
import torch

from gmpo.algo.advantages import ADVANTAGE_MODES, compute_advantages

EPS = 1e-4


def test_group_mode_hand_values_with_bessel_std():
    # group [1, 0, 0, 0]: mean 0.25; Bessel var = (0.75^2 + 3 * 0.25^2) / 3 = 0.25 -> std 0.5
    out = compute_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=4)
    expect = torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + EPS)  # [1.49970, -0.49990 x3]
    torch.testing.assert_close(out.advantages, expect)
    assert out.advantages.dtype == torch.float32


def test_group_mode_uses_bessel_not_population_std():
    # [0, 1]: Bessel std = sqrt(0.5) = 0.707107 -> A = +-0.5 / 0.707207 = +-0.707007 (population std would give +-1)
    out = compute_advantages(torch.tensor([0.0, 1.0]), group_size=2)
    a = 0.5 / (math.sqrt(0.5) + EPS)
    torch.testing.assert_close(out.advantages, torch.tensor([-a, a]))
    assert abs(out.advantages[1].item() - 1.0) > 0.2


def test_none_mode_dr_grpo():
    out = compute_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 4.0]), group_size=3, mode="none")
    # group 1 [1, 0, 0]: mean 1/3; group 2 [0, 2, 4]: mean 2
    torch.testing.assert_close(out.advantages, torch.tensor([2 / 3, -1 / 3, -1 / 3, -2.0, 0.0, 2.0]))


def test_leave_one_out_mode_rloo():
    out = compute_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=4, mode="leave_one_out")
    # A_0 = 1 - mean(0, 0, 0) = 1; A_1 = 0 - mean(1, 0, 0) = -1/3
    torch.testing.assert_close(out.advantages, torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))
    out = compute_advantages(torch.tensor([3.0, 1.0]), group_size=2, mode="leave_one_out")
    torch.testing.assert_close(out.advantages, torch.tensor([2.0, -2.0]))


def test_batch_mode_divides_by_whole_batch_std():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    # group means 0.25 and 0.5; batch mean 0.375, Bessel var = (3 * 0.625^2 + 5 * 0.375^2) / 7 = 1.875 / 7
    std = math.sqrt(1.875 / 7)  # 0.517549
    out = compute_advantages(r, group_size=4, mode="batch")
    expect = torch.tensor([0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5]) / (std + EPS)
    torch.testing.assert_close(out.advantages, expect)
    assert out.advantages[0].item() == pytest.approx(1.448858, abs=1e-5)


@pytest.mark.parametrize("mode", ADVANTAGE_MODES)
def test_all_equal_groups_are_exactly_zero_and_counted(mode):
    # 0.1 * 3 copies: a float mean need not equal 0.1 exactly, the advantage must still be exactly 0
    r = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 1.0, 0.7, 0.7, 0.7, 0.0, 0.0, 0.0])
    out = compute_advantages(r, group_size=3, mode=mode)
    assert torch.equal(out.zero_std, torch.tensor([True, False, True, True]))
    assert out.frac_zero_std.item() == pytest.approx(0.75)
    assert torch.equal(out.advantages[[0, 1, 2, 6, 7, 8, 9, 10, 11]], torch.zeros(9))
    assert (out.advantages[3:6] != 0).all()


@pytest.mark.parametrize("mode", ["group", "none", "leave_one_out"])
def test_advantages_sum_to_zero_within_each_group(mode):
    r = torch.rand(6 * 5, generator=torch.Generator().manual_seed(0))
    out = compute_advantages(r, group_size=5, mode=mode)
    torch.testing.assert_close(out.advantages.view(6, 5).sum(-1), torch.zeros(6), atol=1e-5, rtol=0)


def test_group_size_one_gives_zero_advantages():
    out = compute_advantages(torch.tensor([1.0, 0.0, 0.5]), group_size=1)
    assert torch.equal(out.advantages, torch.zeros(3)) and out.frac_zero_std.item() == 1.0


def test_errors_are_clear():
    with pytest.raises(ValueError, match="not a multiple of group_size"):
        compute_advantages(torch.zeros(7), group_size=4)
    with pytest.raises(ValueError, match="group, none, leave_one_out, batch"):
        compute_advantages(torch.zeros(4), group_size=2, mode="rloo")
    with pytest.raises(ValueError, match="group_size >= 2"):
        compute_advantages(torch.zeros(4), group_size=1, mode="leave_one_out")
    with pytest.raises(ValueError, match="1-D"):
        compute_advantages(torch.zeros(2, 2), group_size=2)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        compute_advantages(torch.zeros(2), group_size=0)
