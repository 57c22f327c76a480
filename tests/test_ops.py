"""gmpo.algo.ops: masked reductions, chunked token log-probs / entropy, KL estimators."""
import math

import pytest
import torch

from gmpo.algo.ops import kl_penalty, masked_mean, masked_sum, token_entropy, token_logprobs

NAN, INF = float("nan"), float("inf")


# ---------------------------------------------------------------- masked reductions

def test_masked_sum_and_mean_hand_values_ignore_garbage():
    x = torch.tensor([[1.0, 2.0, NAN], [4.0, INF, -INF]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_sum(x, m).item() == 7.0  # 1 + 2 + 4
    assert torch.equal(masked_sum(x, m, dim=-1), torch.tensor([3.0, 4.0]))
    assert torch.equal(masked_mean(x, m, dim=-1), torch.tensor([1.5, 4.0]))
    assert masked_mean(x, m).item() == pytest.approx(7.0 / 3.0)
    assert torch.equal(masked_sum(x, m.bool(), dim=0), torch.tensor([5.0, 2.0, 0.0]))


def test_masked_mean_empty_is_zero_and_gradient_is_finite():
    x = torch.tensor([[NAN, 3.0], [1.0, 5.0]], requires_grad=True)
    m = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    out = masked_mean(x, m, dim=-1)
    assert torch.equal(out.detach(), torch.tensor([0.0, 3.0]))
    out.sum().backward()
    assert torch.equal(x.grad, torch.tensor([[0.0, 0.0], [0.5, 0.5]]))


def test_masked_sum_float_weights():
    x = torch.tensor([2.0, 4.0, 8.0])
    w = torch.tensor([0.5, 0.0, 0.25])
    assert masked_sum(x, w).item() == 3.0  # 2*0.5 + 8*0.25
    assert masked_mean(x, w).item() == 4.0  # 3 / 0.75


# ---------------------------------------------------------------- token log-probs

def _ref_logprobs(logits, labels, temperature=1.0):
    return torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, labels[..., None]).squeeze(-1)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_matches_log_softmax_gather_fp32(chunk_size, temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 13, generator=g) * 3
    labels = torch.randint(0, 13, (3, 7), generator=g)
    w = torch.randn(3, 7, generator=g)
    x1 = logits.clone().requires_grad_(True)
    x2 = logits.clone().requires_grad_(True)
    out = token_logprobs(x1, labels, temperature=temperature, chunk_size=chunk_size)
    ref = _ref_logprobs(x2, labels, temperature)
    assert out.dtype == torch.float32 and out.shape == (3, 7)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [2, 5, 16])
def test_token_logprobs_bf16_logits(chunk_size):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 9, 50, generator=g) * 4).to(torch.bfloat16)
    labels = torch.randint(0, 50, (2, 9), generator=g)
    x1 = logits.clone().requires_grad_(True)
    x2 = logits.clone().requires_grad_(True)
    out = token_logprobs(x1, labels, temperature=0.9, chunk_size=chunk_size)
    ref = _ref_logprobs(x2, labels, 0.9)  # float32 math on the same bf16 values
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    ref.sum().backward()
    assert x1.grad.dtype == torch.bfloat16
    torch.testing.assert_close(x1.grad.float(), x2.grad.float(), atol=1e-2, rtol=1e-2)


def test_token_logprobs_hand_value_and_ignore_index():
    # logits [0, log 3] -> softmax [1/4, 3/4]
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)], [5.0, 1.0]]], requires_grad=True)
    labels = torch.tensor([[1, 0, -100]])
    out = token_logprobs(logits, labels, chunk_size=2)
    torch.testing.assert_close(out, torch.tensor([[math.log(0.75), math.log(0.25), 0.0]]))
    out.sum().backward()
    assert torch.equal(logits.grad[0, 2], torch.zeros(2))  # ignored label: no gradient


def test_token_logprobs_saves_no_float32_vocab_tensor():
    """Autograd keeps the bf16 logits and (B, T) statistics, never a float32 (B, T, V) block."""
    logits = torch.randn(2, 16, 64).to(torch.bfloat16).requires_grad_(True)
    labels = torch.randint(0, 64, (2, 16))
    saved = []

    def pack(t):
        saved.append((t.dtype, tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = token_logprobs(logits, labels, chunk_size=4)
        ent = token_entropy(logits, chunk_size=4)
    big_fp32 = [s for s in saved if s[0] == torch.float32 and len(s[1]) == 3]
    assert not big_fp32, saved
    (out.sum() + ent.sum()).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()


def test_token_logprobs_errors():
    with pytest.raises(ValueError, match="expected logits"):
        token_logprobs(torch.randn(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(torch.randn(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(torch.randn(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), chunk_size=0)


# ---------------------------------------------------------------- entropy

def test_token_entropy_hand_values():
    # uniform over 4 -> log 4; one-hot-ish [0, -inf] -> 0; [0, log 3] -> -(1/4 log 1/4 + 3/4 log 3/4)
    logits = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [0.0, -INF, -INF, -INF], [0.0, math.log(3.0), -INF, -INF]]])
    h = token_entropy(logits, chunk_size=2)
    expect = [math.log(4.0), 0.0, -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
    torch.testing.assert_close(h, torch.tensor([expect]))


@pytest.mark.parametrize("chunk_size,temperature,dtype", [(1, 1.0, torch.float32), (4, 0.6, torch.float32),
                                                           (3, 1.0, torch.bfloat16)])
def test_token_entropy_matches_direct_formula(chunk_size, temperature, dtype):
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(2, 6, 11, generator=g) * 2).to(dtype)
    w = torch.randn(2, 6, generator=g)
    x1 = logits.clone().requires_grad_(True)
    x2 = logits.clone().requires_grad_(True)
    h = token_entropy(x1, chunk_size=chunk_size, temperature=temperature)
    logp = torch.log_softmax(x2.float() / temperature, -1)
    ref = -(logp.exp() * logp).sum(-1)
    assert h.dtype == torch.float32
    torch.testing.assert_close(h, ref, atol=1e-5, rtol=1e-5)
    (h * w).sum().backward()
    (ref * w).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(x1.grad.float(), x2.grad.float(), atol=tol, rtol=tol)


# ---------------------------------------------------------------- KL estimators

def test_kl_estimators_hand_values():
    logp = torch.tensor([0.0, 0.0, -1.0])
    ref = torch.tensor([-1.0, 0.0, 0.0])  # l_ref = [1, 0, -1]
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([1.0, 0.0, -1.0]))
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([0.5, 0.0, 0.5]))
    # k3 = exp(-l) + l - 1: l=1 -> e^-1 = 0.367879; l=0 -> 0; l=-1 -> e - 2 = 0.718282
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), torch.tensor([math.exp(-1), 0.0, math.e - 2]))
    assert kl_penalty(logp, ref).equal(kl_penalty(logp, ref, "k3"))
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(logp, ref, "k4")
