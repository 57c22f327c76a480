"""Performance paths of the update phase: fused log-prob + entropy pass, length buckets, eager attention switch.

Each fast path must give the reference numbers (float tolerance) while doing less work.
"""
import itertools
import math

import pytest
import torch

from gmpo import perf
from gmpo.algo.ops import token_entropy, token_logprobs, token_logprobs_and_entropy
from gmpo.train import forward
from gmpo.train.forward import length_buckets, micro_batch


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, restored after


def _ref(logits, labels, temperature=1.0):
    lsm = torch.log_softmax(logits.float() / temperature, -1)
    return lsm.gather(-1, labels[..., None]).squeeze(-1), -(lsm.exp() * lsm).sum(-1)


# ---------------------------------------------------------------- fused log-prob + entropy

@pytest.mark.parametrize("chunk_size,temperature", [(1, 1.0), (3, 0.7), (64, 1.0), (None, 1.3)])
def test_fused_logprob_entropy_equals_reference_formulas(chunk_size, temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 17, generator=g) * 3
    labels = torch.randint(0, 17, (3, 5), generator=g)
    labels[1, 3] = -100  # ignored position
    w = torch.randn(3, 5, generator=g)
    x1, x2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    logp, ent = token_logprobs_and_entropy(x1, labels, temperature, chunk_size)
    ref_lp, ref_h = _ref(x2, labels.clamp(min=0), temperature)
    ref_lp = torch.where(labels < 0, torch.zeros(()), ref_lp)
    torch.testing.assert_close(logp, ref_lp, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ent, ref_h.detach(), atol=1e-5, rtol=1e-5)
    assert not ent.requires_grad  # a metric: no gradient path through the entropy
    (logp * w).sum().backward()
    (ref_lp * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-6, rtol=1e-5)
    assert torch.equal(x1.grad[1, 3], torch.zeros(17))  # ignored label: no gradient
    # the separate functions give the same numbers
    torch.testing.assert_close(token_logprobs(logits, labels, temperature, chunk_size), logp.detach())
    torch.testing.assert_close(token_entropy(logits, chunk_size, temperature), ent)


def test_fused_pass_hand_values():
    # [0, log 3] -> p = [1/4, 3/4]; H = -(1/4 log 1/4 + 3/4 log 3/4); -inf entries have p = 0 and add nothing
    logits = torch.tensor([[[0.0, math.log(3.0), -math.inf], [2.0, 2.0, 2.0]]])
    logp, ent = token_logprobs_and_entropy(logits, torch.tensor([[1, 0]]))
    torch.testing.assert_close(logp, torch.tensor([[math.log(0.75), math.log(1 / 3)]]))
    torch.testing.assert_close(ent, torch.tensor([[-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), math.log(3.0)]]))
    _, none = token_logprobs_and_entropy(logits, torch.tensor([[1, 0]]), entropy=False)
    assert none is None


def test_bf16_gradient_of_a_confident_label_keeps_float32_precision():
    """p(label) = 0.999: the label's gradient (1 - p) comes from the float32 probability, not from p rounded
    to bf16 (which would put it off by ~25%); the other entries carry bf16 rounding only."""
    V = 50
    logits = torch.full((1, 1, V), -3.0)
    logits[0, 0, 7] = math.log(0.999 * (V - 1) * math.exp(-3.0) / 0.001)  # softmax(label) = 0.999
    x = logits.to(torch.bfloat16).requires_grad_(True)
    lp = token_logprobs(x, torch.tensor([[7]]))
    lp.sum().backward()
    ref = x.detach().float().requires_grad_(True)
    torch.log_softmax(ref, -1)[0, 0, 7].backward()
    assert x.grad.dtype == torch.bfloat16
    assert x.grad[0, 0, 7].float().item() == pytest.approx(ref.grad[0, 0, 7].item(), rel=1e-2)
    torch.testing.assert_close(x.grad.float(), ref.grad, atol=1e-5, rtol=1e-2)


def test_no_grad_pass_saves_nothing_and_backward_reuses_one_buffer():
    logits = torch.randn(2, 4, 32).to(torch.bfloat16).requires_grad_(True)
    labels = torch.randint(0, 32, (2, 4))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((t.dtype, tuple(t.shape))) or t, lambda t: t):
        with torch.no_grad():
            token_logprobs_and_entropy(logits, labels)
        assert saved == []
        lp, _ = token_logprobs_and_entropy(logits, labels, chunk_size=3)
    assert (torch.bfloat16, (8, 32)) in saved  # probabilities in the logits' dtype, never float32 (N, V)
    assert not [s for s in saved if s[0] == torch.float32 and len(s[1]) >= 2 and s[1][-1] == 32]
    lp.sum().backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()


# ---------------------------------------------------------------- length buckets

def _cost(groups, lengths, overhead):
    return sum(len(g) * max(lengths[i] for i in g) + overhead for g in groups)


def test_length_buckets_hand_values():
    assert length_buckets([5, 1, 3], overhead=0) == [[1], [2], [0]]  # every length alone: no padding at all
    assert length_buckets([5, 1, 3], overhead=100) == [[1, 2, 0]]  # a second forward costs more than padding
    # 10 rows of 2 and 2 rows of 30: split pays (12*30 = 360 > 10*2 + 2*30 + 16 = 96)
    assert length_buckets([2] * 10 + [30] * 2, overhead=16) == [list(range(10)), [10, 11]]
    assert length_buckets([]) == []


@pytest.mark.parametrize("seed", range(5))
def test_length_buckets_is_optimal_against_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 20, (7,), generator=g).tolist()
    groups = length_buckets(lengths, overhead=5)
    assert sorted(i for grp in groups for i in grp) == list(range(7))
    order = sorted(range(7), key=lambda i: lengths[i])
    best = min(_cost([order[a:b] for a, b in zip((0,) + cuts, cuts + (7,))], lengths, 5)
               for k in range(7) for cuts in itertools.combinations(range(1, 7), k))
    assert _cost(groups, lengths, 5) == best


# ---------------------------------------------------------------- shared-prompt forward with buckets, eager switch

def _trainer(tmp_path, tok):
    from gmpo.config import from_dict
    from gmpo.testing import tiny_model
    from gmpo.train import GMPOTrainer

    cfg = from_dict({
        "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 8, "truncated_reward": "keep"},
        "train": {"output_dir": str(tmp_path / "run"), "bf16": "false", "threads": 1, "seed": 3},
        "rewards": [{"name": "arithmetic"}], "data": {"eval_size": 4}, "guard": {"enabled": False},
        "log": {"progress": False, "print_every": 0},
    })
    return GMPOTrainer(tiny_model(tok, seed=0), tok, cfg)


def _forward_and_grad(tr, batch, mb):
    tr.model.zero_grad(set_to_none=True)
    logp, ent = tr.forward(tr.model, mb, entropy=True)
    mask = batch.mask[:, : mb.Tc]
    ((logp * mask * torch.linspace(-1, 1, logp.shape[0])[:, None]).sum()).backward()
    return logp * mask, ent * mask, torch.cat([p.grad.reshape(-1) for p in tr.params])


def test_length_bucketed_shared_forward_matches_plain(tmp_path, tok, monkeypatch):
    tr = _trainer(tmp_path, tok)
    batch, _, _ = tr.collect(1)
    batch.lengths = torch.tensor([8, 3, 5, 1, 7, 2, 6, 4])
    batch.mask = (torch.arange(batch.mask.shape[1])[None] < batch.lengths[:, None]).float()
    batch.completion_ids = torch.where(batch.mask.bool(), batch.completion_ids, tok.pad_token_id)
    batch.share_prompt = False
    plain = _forward_and_grad(tr, batch, micro_batch(batch, torch.arange(8)))
    monkeypatch.setattr(forward, "BUCKET_OVERHEAD", 0)  # one bucket per distinct length
    batch.share_prompt = True
    mb = micro_batch(batch, torch.arange(8))
    assert mb.shared is not None and len(mb.shared.buckets) == 8
    assert sorted(int(i) for rows, _ in mb.shared.buckets for i in rows) == list(range(8))
    bucketed = _forward_and_grad(tr, batch, mb)
    for a, b in zip(plain, bucketed):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_grouped_eager_attention_equals_transformers_eager():
    from transformers.models.llama.modeling_llama import eager_attention_forward

    g = torch.Generator().manual_seed(4)
    b, Hkv, grp, Tq, Tk, d = 2, 2, 3, 4, 6, 8
    q = torch.randn(b, Tq, Hkv * grp, d, generator=g).transpose(1, 2)  # non-contiguous like the model's
    k, v = torch.randn(b, Hkv, Tk, d, generator=g), torch.randn(b, Hkv, Tk, d, generator=g)
    mask = torch.zeros(b, 1, Tq, Tk)
    mask[0, :, :, :2] = torch.finfo(torch.float32).min  # row 0: two left-pad keys
    mask[:, :, torch.arange(Tq)[:, None] < torch.arange(Tk)[None] - (Tk - Tq)] = torch.finfo(torch.float32).min  # causal
    module = torch.nn.Module()
    module.num_key_value_groups, module.training = grp, False
    for m in (mask, None):
        ref, _ = eager_attention_forward(module, q, k, v, m, scaling=0.3)
        out, _ = perf.grouped_eager_attention(module, q, k, v, m, scaling=0.3)
        assert out.shape == (b, Tq, Hkv * grp, d)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_eager_attention_switch_same_numbers_and_restores_the_model(tmp_path, tok):
    tr = _trainer(tmp_path, tok)
    batch, _, _ = tr.collect(1)
    batch.share_prompt = True
    mb = micro_batch(batch, torch.arange(batch.n))
    before = tr.model.config._attn_implementation
    seen = []
    hook = tr.model.model.layers[0].self_attn.register_forward_pre_hook(
        lambda m, a: seen.append(m.config._attn_implementation))
    try:
        tr.forward.cpu_eager_attention = True
        eager = _forward_and_grad(tr, batch, mb)
        tr.forward.cpu_eager_attention = False
        default = _forward_and_grad(tr, batch, mb)
    finally:
        hook.remove()
    assert tr.model.config._attn_implementation == before
    assert perf.GROUPED_EAGER in seen and before in seen  # the tiny model is a llama
    for a, b in zip(eager, default):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
