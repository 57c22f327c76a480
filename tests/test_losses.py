"""gmpo.algo.losses: hand-checked values, the identities of DESIGN.md section 3, one-sided clipping,
gradients only through unclipped tokens, padding invariance and micro-batch invariance."""
import inspect
import math

import pytest
import torch

import gmpo.algo.losses as losses_mod
from gmpo.algo.losses import (LOSSES, LossOutput, get_loss, gmpo_loss, grpo_loss, gspo_loss,
                              reduction_count)
from gmpo.registry import UnknownName

NAN, INF = float("nan"), float("inf")
e = math.exp

# Shared hand example: two sequences, T = 3, old_logp = 0 so l = logp.
#   seq 0: A = +1.0, l = [0.2, 0.6, -0.5], mask [1, 1, 1]
#   seq 1: A = -0.5, l = [-0.6, 0.3, pad], mask [1, 1, 0]
L_HAND = [[0.2, 0.6, -0.5], [-0.6, 0.3, 0.0]]
A_HAND = [1.0, -0.5]
M_HAND = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]


def hand_batch(pad_value=0.0):
    logp = torch.tensor(L_HAND)
    logp[1, 2] = pad_value
    return logp.requires_grad_(True), torch.zeros(2, 3), torch.tensor(A_HAND), torch.tensor(M_HAND)


ALL_CASES = [  # (name, fn, kwargs, reduction, norm_len)
    ("gmpo", gmpo_loss, {}, "seq-mean", None),
    ("gspo", gspo_loss, {}, "seq-mean", None),
    ("gspo-wide", gspo_loss, {"eps_low": 0.2, "eps_high": 0.2}, "seq-mean", None),
    ("grpo-smtm", grpo_loss, {"reduction": "seq-mean-token-mean"}, "seq-mean-token-mean", None),
    ("grpo-tm", grpo_loss, {"reduction": "token-mean"}, "token-mean", None),
    ("grpo-norm", grpo_loss, {"reduction": "seq-mean-token-sum-norm", "norm_len": 10}, "seq-mean-token-sum-norm", 10),
]
CASE_IDS = [c[0] for c in ALL_CASES]


def random_batch(B=8, T=10, seed=0, scale=0.5, empty_row=False):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    if empty_row:
        lengths[3] = 0
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()  # (B, T) right padding
    old = -torch.rand(B, T, generator=g) * 3
    logp = old + torch.randn(B, T, generator=g) * scale
    adv = torch.randn(B, generator=g)
    return logp, old, adv, mask


# ---------------------------------------------------------------- hand-checked values

def test_gmpo_hand_values_loss_metrics_and_gradient():
    logp, old, adv, mask = hand_batch()
    out = gmpo_loss(logp, old, adv, mask)  # eps 0.4 / 0.4 in log space
    # seq 0 (A>0): min(l, 0.4) = [0.2, 0.4, -0.5], mean = 0.1/3, R0 = e^(0.0333) = 1.033895, loss0 = -1.033895
    # seq 1 (A<0): max(l, -0.4) = [-0.4, 0.3],     mean = -0.05,  R1 = e^-0.05   = 0.951229, loss1 = +0.475615
    R0, R1 = e(0.1 / 3), e(-0.05)
    assert out.loss.item() == pytest.approx((-R0 + 0.5 * R1) / 2, abs=1e-6)  # -0.279140
    assert out.loss.item() == pytest.approx(-0.279140, abs=1e-6)
    assert out.count.item() == 2
    m = {k: v.item() for k, v in out.metrics.items()}
    assert m["clip/frac_high"] == pytest.approx(1 / 5)  # seq0 token 1 (0.6 > 0.4, A > 0)
    assert m["clip/frac_low"] == pytest.approx(1 / 5)  # seq1 token 0 (-0.6 < -0.4, A < 0)
    assert m["ratio/token_min"] == pytest.approx(e(-0.6), rel=1e-6)  # 0.548812
    assert m["ratio/token_max"] == pytest.approx(e(0.6), rel=1e-6)  # 1.822119
    assert m["ratio/seq_min"] == pytest.approx(R1, rel=1e-6)
    assert m["ratio/seq_max"] == pytest.approx(R0, rel=1e-6)
    out.loss.backward()
    # d loss / d l_t = (1/2) * (-A_i) * R_i / |o_i| at unclipped tokens, 0 at clipped tokens and padding
    g0 = -R0 / 6  # -0.172316
    g1 = 0.5 * R1 / 4  # +0.118904
    torch.testing.assert_close(logp.grad, torch.tensor([[g0, 0.0, g0], [0.0, g1, 0.0]]))


def test_grpo_hand_values_all_reductions():
    logp, old, adv, mask = hand_batch()
    # eps 0.2: seq 0 (A=1):    rho = [1.221403, 1.822119, 0.606531] -> min(rho, 1.2) = [1.2, 1.2, 0.606531]
    #          seq 1 (A=-0.5): rho = [0.548812, 1.349859]           -> max(rho, 0.8) = [0.8, 1.349859]
    tok0 = [-1.2, -1.2, -e(-0.5)]  # -A * clipped rho
    tok1 = [0.5 * 0.8, 0.5 * e(0.3)]
    smtm = (sum(tok0) / 3 + sum(tok1) / 2) / 2  # -0.232356
    tm = (sum(tok0) + sum(tok1)) / 5  # -0.386320
    norm = (sum(tok0) + sum(tok1)) / (2 * 4)  # -0.241450
    assert smtm == pytest.approx(-0.232356, abs=1e-6)
    for red, kw, expect, count in [("seq-mean-token-mean", {}, smtm, 2), ("token-mean", {}, tm, 5),
                                   ("seq-mean-token-sum-norm", {"norm_len": 4}, norm, 8)]:
        lp = logp.detach().clone().requires_grad_(True)
        out = grpo_loss(lp, old, adv, mask, reduction=red, **kw)
        assert out.loss.item() == pytest.approx(expect, abs=1e-6), red
        assert out.count.item() == count
        out.loss.backward()
        g = lp.grad
        # clipped tokens: seq0 t0 (1.2214 > 1.2), seq0 t1, seq1 t0 (0.5488 < 0.8): exactly zero gradient
        assert g[0, 0] == 0 and g[0, 1] == 0 and g[1, 0] == 0 and g[1, 2] == 0
        assert g[0, 2] < 0 and g[1, 1] > 0
    out = grpo_loss(logp, old, adv, mask)
    m = {k: v.item() for k, v in out.metrics.items()}
    assert m["clip/frac_high"] == pytest.approx(2 / 5) and m["clip/frac_low"] == pytest.approx(1 / 5)
    # GRPO's per-sequence weight is the arithmetic token mean of rho
    assert m["ratio/seq_max"] == pytest.approx((e(0.2) + e(0.6) + e(-0.5)) / 3, rel=1e-6)  # 1.216684
    assert m["ratio/seq_min"] == pytest.approx((e(-0.6) + e(0.3)) / 2, rel=1e-6)  # 0.949336


def test_gspo_hand_values_clip_after_averaging():
    logp, old, adv, mask = hand_batch()
    # s0 = exp(mean [0.2, 0.6, -0.5]) = e^0.1 = 1.105171; s1 = exp(mean [-0.6, 0.3]) = e^-0.15 = 0.860708
    s0, s1 = e(0.1), e(-0.15)
    wide = gspo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.2)  # neither sequence clipped
    assert wide.loss.item() == pytest.approx((-s0 + 0.5 * s1) / 2, abs=1e-6)  # -0.337409
    assert wide.metrics["ratio/seq_max"].item() == pytest.approx(s0, rel=1e-6)
    assert wide.metrics["clip/frac_high"].item() == 0 and wide.metrics["clip/frac_low"].item() == 0
    wide.loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-s0 / 6] * 3, [0.5 * s1 / 4] * 2 + [0.0]]))
    # default eps 3e-4 / 4e-4: both sequences clipped -> constants, zero gradient everywhere
    lp = logp.detach().clone().requires_grad_(True)
    tight = gspo_loss(lp, old, adv, mask)
    assert tight.loss.item() == pytest.approx((-(1 + 4e-4) + 0.5 * (1 - 3e-4)) / 2, abs=1e-6)  # -0.250275
    assert tight.metrics["clip/frac_high"].item() == pytest.approx(3 / 5)  # seq 0's 3 tokens
    assert tight.metrics["clip/frac_low"].item() == pytest.approx(2 / 5)  # seq 1's 2 tokens
    tight.loss.backward()
    assert torch.equal(lp.grad, torch.zeros(2, 3))


def test_kl_term_uses_the_objectives_reduction():
    logp, old, adv, mask = hand_batch()
    ref = logp.detach() - 1.0  # l_ref = 1 at every token: k1 = 1, k3 = e^-1
    on = logp.detach()  # on-policy: policy term is -A per sequence
    for kind, kl in [("k1", 1.0), ("k3", e(-1))]:
        g = gmpo_loss(on, on, adv, mask, beta=0.1, ref_logp=ref, kl_estimator=kind)
        assert g.loss.item() == pytest.approx(-(1.0 - 0.5) / 2 + 0.1 * kl, abs=1e-6)
        assert g.metrics["policy/kl"].item() == pytest.approx(kl, rel=1e-6)
        t = grpo_loss(on, on, adv, mask, beta=0.1, ref_logp=ref, kl_estimator=kind, reduction="token-mean")
        assert t.loss.item() == pytest.approx(-(3 * 1.0 - 2 * 0.5) / 5 + 0.1 * kl, abs=1e-6)
        s = gspo_loss(on, on, adv, mask, beta=0.1, ref_logp=ref, kl_estimator=kind)
        assert s.loss.item() == pytest.approx(-(1.0 - 0.5) / 2 + 0.1 * kl, abs=1e-6)
    # Unequal KL per token: seq-mean-token-mean vs token-mean weigh it differently
    ref2 = on.clone()
    ref2[0] -= 1.0  # seq 0: l_ref = 1 (k1 = 1), seq 1: l_ref = 0
    a = grpo_loss(on, on, torch.zeros(2), mask, beta=1.0, ref_logp=ref2, kl_estimator="k1")
    b = grpo_loss(on, on, torch.zeros(2), mask, beta=1.0, ref_logp=ref2, kl_estimator="k1", reduction="token-mean")
    assert a.loss.item() == pytest.approx((1.0 + 0.0) / 2) and b.loss.item() == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="ref_logp"):
        gmpo_loss(on, on, adv, mask, beta=0.1)


# ---------------------------------------------------------------- identities

@pytest.mark.parametrize("name,fn,kw,red,norm_len", ALL_CASES, ids=CASE_IDS)
def test_on_policy_loss_is_minus_mean_advantage(name, fn, kw, red, norm_len):
    logp, _, adv, mask = random_batch(seed=3, empty_row=True)
    out = fn(logp, logp.clone(), adv, mask, **kw)
    n = mask.sum(-1)  # (B,)
    nonempty = n > 0
    if red in ("seq-mean", "seq-mean-token-mean"):
        expect = -adv[nonempty].mean()
    elif red == "token-mean":
        expect = -(adv * n).sum() / n.sum()
    else:
        expect = -(adv * n).sum() / (nonempty.sum() * norm_len)
    torch.testing.assert_close(out.loss, expect, atol=1e-6, rtol=1e-6)
    for k in ("clip/frac_low", "clip/frac_high"):
        assert out.metrics[k].item() == 0
    for k in ("ratio/token_min", "ratio/token_max", "ratio/seq_min", "ratio/seq_max"):
        assert out.metrics[k].item() == pytest.approx(1.0)


def test_on_policy_gmpo_and_grpo_gradients_agree():
    # at l = 0 both gradients are -A_i / (B |o_i|) per real token
    logp, _, adv, mask = random_batch(seed=4)
    grads = []
    for fn in (gmpo_loss, grpo_loss):
        lp = logp.clone().requires_grad_(True)
        fn(lp, logp, adv, mask).loss.backward()
        grads.append(lp.grad)
    expect = (-adv[:, None] / (mask.shape[0] * mask.sum(-1, keepdim=True))) * mask
    torch.testing.assert_close(grads[0], expect)
    torch.testing.assert_close(grads[1], expect)


def test_gmpo_equals_grpo_when_log_ratios_are_equal_within_each_sequence():
    _, old, adv, mask = random_batch(seed=5)
    g = torch.Generator().manual_seed(9)
    per_seq = (torch.rand(8, generator=g) - 0.5) * 0.3  # l_i in (-0.15, 0.15): no clip for either objective
    base = (old + per_seq[:, None]).requires_grad_(True)
    other = base.detach().clone().requires_grad_(True)
    a = gmpo_loss(base, old, adv, mask)
    b = grpo_loss(other, old, adv, mask, reduction="seq-mean-token-mean")
    assert a.metrics["clip/frac_low"] == 0 and a.metrics["clip/frac_high"] == 0
    assert b.metrics["clip/frac_low"] == 0 and b.metrics["clip/frac_high"] == 0
    torch.testing.assert_close(a.loss, b.loss)
    a.loss.backward()
    b.loss.backward()
    torch.testing.assert_close(base.grad, other.grad)
    # unequal log-ratios (still unclipped): geometric mean < arithmetic mean, losses differ
    noise = torch.tensor([0.1, -0.1] * 5)[None, :].expand(8, 10)
    a2 = gmpo_loss(base.detach() + noise, old, adv, mask)
    b2 = grpo_loss(base.detach() + noise, old, adv, mask)
    assert (a2.loss - b2.loss).abs().item() > 1e-4


@pytest.mark.parametrize("name,fn,kw,red,norm_len", ALL_CASES, ids=CASE_IDS)
def test_padding_changes_neither_loss_nor_gradient(name, fn, kw, red, norm_len):
    logp, old, adv, mask = random_batch(seed=6, empty_row=True)
    ref = old - 0.3
    clean = logp.clone().requires_grad_(True)
    out = fn(clean, old, adv, mask, beta=0.05, ref_logp=ref, **kw)
    out.loss.backward()
    # garbage at every padding position, plus 3 extra all-padding columns
    T = logp.shape[1]
    garbage = torch.tensor([NAN, INF, -INF, 1e4, -1e4])
    pad = (mask == 0)
    dirty_vals = torch.cat([logp, torch.zeros(8, 3)], 1)
    dirty_old = torch.cat([old, torch.zeros(8, 3)], 1)
    dirty_ref = torch.cat([ref, torch.zeros(8, 3)], 1)
    dirty_mask = torch.cat([mask, torch.zeros(8, 3)], 1)
    fill = garbage[torch.arange(8 * (T + 3)) % 5].view(8, T + 3)
    big_pad = dirty_mask == 0
    dirty_vals = torch.where(big_pad, fill, dirty_vals)
    dirty_old = torch.where(big_pad, fill.flip(0), dirty_old)
    dirty_ref = torch.where(big_pad, fill.flip(1), dirty_ref)
    dirty = dirty_vals.requires_grad_(True)
    out2 = fn(dirty, dirty_old, adv, dirty_mask, beta=0.05, ref_logp=dirty_ref, **kw)
    out2.loss.backward()
    assert torch.isfinite(out2.loss)
    torch.testing.assert_close(out2.loss, out.loss)
    assert torch.equal(out2.count, out.count)
    torch.testing.assert_close(dirty.grad[:, :T], clean.grad)
    assert torch.equal(dirty.grad[big_pad], torch.zeros(int(big_pad.sum())))
    assert torch.equal(clean.grad[pad], torch.zeros(int(pad.sum())))
    for k, v in out.metrics.items():
        torch.testing.assert_close(out2.metrics[k], v, msg=k)


@pytest.mark.parametrize("name,fn,kw,red,norm_len", ALL_CASES, ids=CASE_IDS)
def test_all_empty_sequences_give_finite_zero_loss(name, fn, kw, red, norm_len):
    logp = torch.full((2, 4), NAN, requires_grad=True)
    out = fn(logp, torch.full((2, 4), INF), torch.tensor([1.0, -1.0]), torch.zeros(2, 4), **kw)
    assert out.loss.item() == 0.0 and out.count.item() == 0.0
    out.loss.backward()
    assert torch.equal(logp.grad, torch.zeros(2, 4))
    assert all(torch.isfinite(v) for v in out.metrics.values())
    # an empty row in a real batch is simply not counted
    lp, old, adv, mask = random_batch(seed=7, empty_row=True)
    keep = mask.sum(-1) > 0
    a = fn(lp, old, adv, mask, **kw)
    b = fn(lp[keep], old[keep], adv[keep], mask[keep], **kw)
    torch.testing.assert_close(a.loss, b.loss)
    assert a.count.item() == b.count.item()


# ---------------------------------------------------------------- clipping

def _one_token(l, A, fn, **kw):
    lp = torch.tensor([[l, 0.0]], requires_grad=True)
    out = fn(lp, torch.zeros(1, 2), torch.tensor([A]), torch.ones(1, 2), **kw)
    out.loss.backward()
    return out, lp.grad[0, 0].item()


@pytest.mark.parametrize("fn,hi,lo", [(gmpo_loss, 0.6, -0.6), (grpo_loss, 0.3, -0.3)])
def test_clipping_is_one_sided_by_sign_of_advantage(fn, hi, lo):
    # l above eps_high: clipped (constant) for A > 0, untouched for A < 0
    out, g = _one_token(hi, +1.0, fn)
    assert out.metrics["clip/frac_high"].item() == 0.5 and out.metrics["clip/frac_low"].item() == 0 and g == 0.0
    out, g = _one_token(hi, -1.0, fn)
    assert out.metrics["clip/frac_high"].item() == 0 and out.metrics["clip/frac_low"].item() == 0 and g > 0
    # l below -eps_low: clipped for A < 0, untouched for A > 0
    out, g = _one_token(lo, -1.0, fn)
    assert out.metrics["clip/frac_low"].item() == 0.5 and out.metrics["clip/frac_high"].item() == 0 and g == 0.0
    out, g = _one_token(lo, +1.0, fn)
    assert out.metrics["clip/frac_low"].item() == 0 and out.metrics["clip/frac_high"].item() == 0 and g < 0


def test_gmpo_clip_values_are_the_bounds_in_log_space():
    # A > 0, l = [0.9, 0.1] with eps_high 0.4: R = exp((0.4 + 0.1)/2) = e^0.25 = 1.284025
    out = gmpo_loss(torch.tensor([[0.9, 0.1]]), torch.zeros(1, 2), torch.tensor([2.0]), torch.ones(1, 2))
    assert out.loss.item() == pytest.approx(-2 * e(0.25), rel=1e-6)
    # A < 0, l = [-0.9, 0.1] with eps_low 0.3: R = exp((-0.3 + 0.1)/2) = e^-0.1; loss = +1 * 0.904837
    out = gmpo_loss(torch.tensor([[-0.9, 0.1]]), torch.zeros(1, 2), torch.tensor([-1.0]), torch.ones(1, 2),
                    eps_low=0.3)
    assert out.loss.item() == pytest.approx(e(-0.1), rel=1e-6)
    assert out.metrics["ratio/seq_min"].item() == pytest.approx(e(-0.1), rel=1e-6)


def test_gspo_clip_is_one_sided_at_sequence_level():
    l = torch.tensor([[0.01, 0.01]])  # s = e^0.01 = 1.01005 > 1 + 4e-4
    for A, clipped in [(1.0, True), (-1.0, False)]:
        lp = l.clone().requires_grad_(True)
        out = gspo_loss(lp, torch.zeros(1, 2), torch.tensor([A]), torch.ones(1, 2))
        out.loss.backward()
        assert (lp.grad.abs().sum().item() == 0) == clipped
        expect = -(1 + 4e-4) if clipped else e(0.01)
        assert out.loss.item() == pytest.approx(expect, rel=1e-6)


@pytest.mark.parametrize("fn,eps", [(gmpo_loss, 0.4), (grpo_loss, 0.2)])
def test_gradient_is_zero_exactly_at_clipped_tokens(fn, eps):
    logp, old, adv, mask = random_batch(seed=8, scale=0.6)
    lp = logp.clone().requires_grad_(True)
    fn(lp, old, adv, mask).loss.backward()
    l = logp - old
    A = adv[:, None]
    if fn is gmpo_loss:
        clipped = ((A > 0) & (l > eps)) | ((A < 0) & (l < -eps))
    else:
        clipped = ((A > 0) & (l.exp() > 1 + eps)) | ((A < 0) & (l.exp() < 1 - eps))
    real = mask > 0
    assert (clipped & real).sum() >= 5 and (~clipped & real).sum() >= 5  # both kinds present
    assert torch.equal(lp.grad[clipped | ~real], torch.zeros(int((clipped | ~real).sum())))
    assert (lp.grad[~clipped & real] != 0).all()
    # gradient sign at unclipped tokens follows -A (descending the loss raises logp where A > 0)
    assert (torch.sign(lp.grad[~clipped & real]) == torch.sign(-A.expand_as(l)[~clipped & real])).all()


def test_gmpo_zero_advantage_contributes_nothing_even_for_huge_ratios():
    lp = torch.tensor([[100.0, -100.0], [0.1, 0.2]], requires_grad=True)
    out = gmpo_loss(lp, torch.zeros(2, 2), torch.tensor([0.0, 1.0]), torch.ones(2, 2))
    assert out.loss.item() == pytest.approx(-e(0.15) / 2, rel=1e-6)
    out.loss.backward()
    assert torch.equal(lp.grad[0], torch.zeros(2)) and torch.isfinite(lp.grad).all()
    assert out.metrics["clip/frac_high"].item() == 0 and out.metrics["clip/frac_low"].item() == 0


# ---------------------------------------------------------------- micro-batch invariance

def _grad_by_pieces(fn, kw, red, norm_len, batch, pieces):
    logp, old, adv, mask = batch
    lp = logp.clone().requires_grad_(True)
    full_count = reduction_count(red, mask, norm_len)
    total = 0.0
    for idx in torch.arange(logp.shape[0]).chunk(pieces):
        kw_i = {k: (v[idx] if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        out = fn(lp[idx], old[idx], adv[idx], mask[idx], **kw_i)
        scaled = out.loss * (out.count / full_count)
        scaled.backward()
        total = total + scaled.detach()
    return total, lp.grad


@pytest.mark.parametrize("name,fn,kw,red,norm_len", ALL_CASES, ids=CASE_IDS)
def test_micro_batch_invariance(name, fn, kw, red, norm_len):
    batch = random_batch(B=8, T=12, seed=10, scale=0.4, empty_row=True)
    kw = dict(kw, beta=0.02, ref_logp=batch[1] - 0.1)
    ref_loss, ref_grad = _grad_by_pieces(fn, kw, red, norm_len, batch, 1)
    assert ref_grad.abs().sum() > 0
    for pieces in (2, 4):
        loss, grad = _grad_by_pieces(fn, kw, red, norm_len, batch, pieces)
        torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)
        assert torch.allclose(grad, ref_grad, atol=1e-7, rtol=1e-5), (name, pieces)


def test_naive_micro_batch_mean_is_not_invariant_for_token_mean():
    """Shows the count weighting matters: averaging micro-batch losses changes the token-mean gradient."""
    logp, old, adv, mask = random_batch(B=8, T=12, seed=10, scale=0.4)
    _, good = _grad_by_pieces(grpo_loss, {"reduction": "token-mean"}, "token-mean", None, (logp, old, adv, mask), 1)
    lp = logp.clone().requires_grad_(True)
    for idx in torch.arange(8).chunk(4):
        (grpo_loss(lp[idx], old[idx], adv[idx], mask[idx], reduction="token-mean").loss / 4).backward()
    assert not torch.allclose(lp.grad, good, atol=1e-6, rtol=1e-4)


def test_reduction_count_values():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert reduction_count("seq-mean", mask).item() == 2
    assert reduction_count("seq-mean-token-mean", mask).item() == 2
    assert reduction_count("token-mean", mask).item() == 4
    assert reduction_count("seq-mean-token-sum-norm", mask, norm_len=16).item() == 32
    with pytest.raises(ValueError, match="norm_len"):
        reduction_count("seq-mean-token-sum-norm", mask)
    with pytest.raises(ValueError, match="token-mean"):
        reduction_count("mean", mask)


# ---------------------------------------------------------------- API contract

def test_loss_output_contract_and_table():
    assert set(LOSSES) == {"gmpo", "grpo", "gspo"}
    assert get_loss("gmpo") is gmpo_loss and get_loss("grpo") is grpo_loss and get_loss("gspo") is gspo_loss
    with pytest.raises(ValueError, match="gmpo, grpo, gspo"):
        get_loss("ppo")
    with pytest.raises(UnknownName, match="unknown loss 'dapo'; valid: gmpo, grpo, gspo"):
        get_loss("dapo")  # a preset over grpo, not a loss: gmpo.algo.presets.resolve resolves it
    logp, old, adv, mask = random_batch(seed=11)
    for name in LOSSES.names():
        out = LOSSES.get(name)(logp.clone().requires_grad_(True), old, adv, mask)
        assert isinstance(out, LossOutput) and out.loss.dim() == 0 and out.loss.requires_grad
        assert set(out.metrics) == {"clip/frac_low", "clip/frac_high", "ratio/token_min", "ratio/token_max",
                                    "ratio/seq_min", "ratio/seq_max"}
        assert all(v.dim() == 0 and not v.requires_grad for v in out.metrics.values())


def test_bad_inputs_raise_clear_errors():
    logp, old, adv, mask = random_batch(B=2, T=3)
    with pytest.raises(ValueError, match="advantages must be"):
        gmpo_loss(logp, old, adv[:, None], mask)
    with pytest.raises(ValueError, match="mask shape"):
        grpo_loss(logp, old, adv, mask[:, :2])
    with pytest.raises(ValueError, match="old_logp shape"):
        gspo_loss(logp, old[:1], adv, mask)
    with pytest.raises(ValueError, match="seq-mean-token-mean, token-mean"):
        grpo_loss(logp, old, adv, mask, reduction="seq-mean")
    with pytest.raises(ValueError, match="norm_len"):
        grpo_loss(logp, old, adv, mask, reduction="seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="kl_estimator"):
        grpo_loss(logp, old, adv, mask, kl_estimator="k9")


def test_losses_module_never_syncs_with_the_host():
    src = inspect.getsource(losses_mod)
    for call in (".item(", ".tolist(", ".cpu(", ".numpy("):
        assert call not in src, call
