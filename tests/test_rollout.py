"""Rollout engine tests: the KV-cache sampler against HF generate and a fresh forward pass."""
import pytest
import torch

from gmpo.rollout import BACKENDS, Rollout, RolloutEngine, SamplingParams, make_engine
from gmpo.rollout.engine import KVCacheEngine, inverse_cdf, length_buckets, sample_from_logits
from gmpo.rollout.hf import HFGenerateEngine
from gmpo.testing import tiny_model

TEXTS = ["hello there", "a", "what is 2+2? answer:", "xyz"]  # different lengths: left padding matters


@pytest.fixture
def lm(tok):
    """The tiny model with an untied random lm_head, so greedy text varies instead of echoing the input."""
    m = tiny_model(tok, seed=0)
    g = torch.Generator().manual_seed(1)
    m.lm_head.weight = torch.nn.Parameter(torch.randn(m.lm_head.weight.shape, generator=g))
    m.config.tie_word_embeddings = False
    return m


@pytest.fixture
def prompts(tok):
    return [tok(t)["input_ids"] for t in TEXTS]


def eos_bias(model, eos_id: int, bias: float):
    """Add ``bias`` to the EOS logit (a forward hook on the lm_head); returns the hook handle."""
    return model.lm_head.register_forward_hook(lambda mod, inp, out: out + bias * (torch.arange(out.shape[-1]) == eos_id))


def fresh_logprobs(model, prompts, r: Rollout, temperature: float) -> torch.Tensor:
    """(N, T) log_softmax(logits / temperature) at the completion tokens, from one full forward per row."""
    out = torch.zeros_like(r.logprobs)
    with torch.no_grad():
        for i, (ids, n_tok) in enumerate(zip(r.completion_ids, r.lengths.tolist())):
            p = prompts[i // r.n]
            seq = torch.tensor(p + ids[:n_tok].tolist())[None]
            logits = model(seq).logits[0, len(p) - 1 : len(p) - 1 + n_tok].float()  # (n_tok, V)
            lp = torch.log_softmax(logits / temperature, -1).gather(-1, ids[:n_tok, None]).squeeze(-1)
            out[i, :n_tok] = lp
    return out


def check_layout(r: Rollout, P: int, n: int, T: int, pad: int):
    """Shapes, dtypes and mask consistency every Rollout must satisfy."""
    N = P * n
    assert r.completion_ids.shape[0] == N and r.completion_ids.shape[1] <= T
    assert r.completion_ids.dtype == torch.long and r.logprobs.dtype == torch.float32
    assert r.completion_mask.shape == r.completion_ids.shape == r.logprobs.shape
    assert r.truncated.shape == (N,) and r.truncated.dtype == torch.bool and len(r.texts) == N
    m = r.completion_mask.bool()
    assert torch.all(r.logprobs[~m] == 0) and torch.all(r.completion_ids[~m] == pad)
    assert torch.all(r.logprobs[m] <= 0)
    # right padding: the mask is a prefix of ones
    assert torch.equal(m, torch.arange(m.shape[1])[None] < r.lengths[:, None])
    assert torch.all(r.lengths >= 1) and torch.all(r.truncated == (r.lengths == T) & r.truncated)


# ---- the sampling primitive, by hand ------------------------------------------------------------------


def test_sample_from_logits_inverse_cdf_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).repeat(4, 1)  # probs 0.5 0.3 0.2 -> cdf 0.5 0.8 1.0
    u = torch.tensor([0.0, 0.49, 0.6, 0.95])
    tok, lp = sample_from_logits(logits, u, temperature=1.0)
    assert tok.tolist() == [0, 0, 1, 2]
    assert torch.allclose(lp, torch.log(torch.tensor([0.5, 0.5, 0.3, 0.2])))
    # top-p 0.5 keeps only token 0 (its mass alone reaches 0.5); log-probs stay unfiltered
    tok, lp = sample_from_logits(logits, u, temperature=1.0, top_p=0.5)
    assert tok.tolist() == [0, 0, 0, 0] and torch.allclose(lp, torch.log(torch.tensor(0.5)).expand(4))
    # top-k 2 renormalises to 0.625 / 0.375: u=0.6 -> token 0, u=0.95 -> token 1
    tok, _ = sample_from_logits(logits, u, temperature=1.0, top_k=2)
    assert tok.tolist() == [0, 0, 0, 1]
    # temperature 0.5 squares and renormalises: 0.25/0.38, 0.09/0.38, 0.04/0.38
    tok, lp = sample_from_logits(logits[:1], torch.tensor([0.7]), temperature=0.5)
    p = torch.tensor([0.25, 0.09, 0.04]) / 0.38
    assert tok.tolist() == [1] and torch.allclose(lp, p[1].log())
    # greedy ignores u and reports the temperature-1 log-prob
    tok, lp = sample_from_logits(logits, u, temperature=0.0)
    assert tok.tolist() == [0] * 4 and torch.allclose(lp, torch.log(torch.tensor(0.5)).expand(4))


@pytest.mark.parametrize("block", [1, 2, 3, 256])
def test_inverse_cdf_by_hand_any_block_size(block):
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.3, 0.5, 0.0]]).repeat(7, 1)  # cdf 0 .2 .2 .5 1 1
    u = torch.tensor([0.0, 0.1999, 0.2, 0.49, 0.5, 0.99, 1.0 - 1e-8])
    assert inverse_cdf(probs, u, block=block).tolist() == [1, 1, 3, 3, 4, 4, 4]
    # unnormalised mass works the same; a row whose mass sits in one late block
    assert inverse_cdf(probs * 10, u, block=block).tolist() == [1, 1, 3, 3, 4, 4, 4]
    late = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 2.0]])
    assert inverse_cdf(late, torch.tensor([0.0]), block=block).tolist() == [5]
    assert inverse_cdf(late, torch.tensor([1.0 - 1e-8]), block=block).tolist() == [5]


def test_sample_frequencies_follow_probabilities():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    u = (torch.arange(1000) + 0.5) / 1000  # evenly spread uniforms
    tok, _ = sample_from_logits(torch.log(probs).expand(1000, 4), u, temperature=1.0)
    assert torch.bincount(tok, minlength=4).tolist() == [100, 0, 600, 300]



def test_inverse_cdf_many_blocks_matches_probabilities():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(1000, generator=g) * (torch.rand(1000, generator=g) > 0.5)  # half the vocabulary masked
    u = (torch.arange(20000) + 0.5) / 20000
    tok = inverse_cdf(probs.expand(20000, 1000), u, block=64)  # 16 blocks, the last one padded
    counts = torch.bincount(tok, minlength=1000).float()
    expected = probs / probs.sum() * 20000
    assert torch.all((counts - expected).abs() <= 1.0 + 1e-3) and counts[probs == 0].sum() == 0



def test_length_buckets_by_hand():
    assert length_buckets([1, 3, 11, 20]) == [range(0, 1), range(1, 2), range(2, 3), range(3, 4)]
    assert length_buckets([10, 10, 10, 11]) == [range(0, 4)]  # 44 padded vs 41 real: within 12.5%
    assert length_buckets([10, 10, 10, 20]) == [range(0, 3), range(3, 4)]  # 80 padded vs 50 real
    assert length_buckets([5] * 10, max_tokens=20) == [range(0, 4), range(4, 8), range(8, 10)]
    assert length_buckets([7]) == [range(0, 1)]


# ---- the engine against references --------------------------------------------------------------------


def test_greedy_matches_hf_generate_token_for_token(lm, tok, prompts):
    T = 16
    r = KVCacheEngine(lm, tok).generate(prompts, SamplingParams(n=1, max_new_tokens=T, temperature=0))
    L = max(len(p) for p in prompts)
    ids = torch.tensor([[tok.pad_token_id] * (L - len(p)) + p for p in prompts])
    attn = (torch.arange(L)[None] >= torch.tensor([L - len(p) for p in prompts])[:, None]).long()
    ref = lm.generate(input_ids=ids, attention_mask=attn, do_sample=False, max_new_tokens=T, pad_token_id=tok.pad_token_id)
    assert torch.equal(r.completion_ids, ref[:, L:])
    assert len(set(r.texts)) == len(prompts) and all(len(set(t)) > 3 for t in r.texts)  # non-trivial text
    assert r.truncated.all() and r.lengths.tolist() == [T] * len(prompts)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 0.9), (1.3, 0, 0.8), (0.0, 0, 1.0)])
def test_logprobs_match_fresh_forward(lm, tok, prompts, temperature, top_k, top_p):
    params = SamplingParams(n=3, max_new_tokens=10, temperature=temperature, top_k=top_k, top_p=top_p, seed=3)
    r = KVCacheEngine(lm, tok).generate(prompts, params)
    check_layout(r, len(prompts), 3, 10, tok.pad_token_id)
    ref = fresh_logprobs(lm, prompts, r, temperature or 1.0)
    assert torch.allclose(r.logprobs, ref, atol=1e-4), (r.logprobs - ref).abs().max()


def test_prefix_sharing_changes_no_sample(lm, tok, prompts):
    params = SamplingParams(n=4, max_new_tokens=12, temperature=1.0, seed=7)
    shared = KVCacheEngine(lm, tok, share_prefix=True).generate(prompts, params)
    plain = KVCacheEngine(lm, tok, share_prefix=False).generate(prompts, params)
    assert torch.equal(shared.completion_ids, plain.completion_ids)
    assert torch.allclose(shared.logprobs, plain.logprobs, atol=1e-5)
    assert shared.texts == plain.texts


def test_seed_reproducible_and_distinct(lm, tok, prompts):
    eng = KVCacheEngine(lm, tok)
    a = eng.generate(prompts, SamplingParams(n=4, max_new_tokens=12, seed=11))
    b = eng.generate(prompts, SamplingParams(n=4, max_new_tokens=12, seed=11))
    c = eng.generate(prompts, SamplingParams(n=4, max_new_tokens=12, seed=12))
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    assert not torch.equal(a.completion_ids, c.completion_ids)
    # the n samples of one prompt differ from each other
    assert len(set(a.texts[:4])) == 4


@pytest.mark.parametrize("backend", ["engine", "hf"])
def test_unseeded_calls_follow_the_global_rng(lm, tok, prompts, backend):
    eng = make_engine(backend, lm, tok)
    params = SamplingParams(n=2, max_new_tokens=8)  # seed=None
    torch.manual_seed(123)
    a, b = eng.generate(prompts, params), eng.generate(prompts, params)
    torch.manual_seed(123)
    a2 = eng.generate(prompts, params)
    assert a.texts != b.texts and a.texts == a2.texts
    torch.manual_seed(5)
    eng.generate(prompts, SamplingParams(n=2, max_new_tokens=8, seed=1))  # a seeded call
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(1))  # seeded calls leave the global stream alone


def test_top_k_one_equals_greedy(lm, tok, prompts):
    eng = KVCacheEngine(lm, tok)
    greedy = eng.generate(prompts, SamplingParams(n=1, max_new_tokens=12, temperature=0))
    topk1 = eng.generate(prompts, SamplingParams(n=1, max_new_tokens=12, temperature=1.0, top_k=1, seed=5))
    assert torch.equal(greedy.completion_ids, topk1.completion_ids)
    assert torch.allclose(greedy.logprobs, topk1.logprobs, atol=1e-6)  # both at temperature 1


def test_stop_string_cuts_text_and_mask(lm, tok, prompts):
    eng = KVCacheEngine(lm, tok)
    full = eng.generate(prompts, SamplingParams(n=1, max_new_tokens=20, temperature=0))
    text = full.texts[1]
    stop = text[3:5]  # a two-character stop string from inside prompt 1's greedy text
    k = text.find(stop) + len(stop)  # characters (= tokens, the tokenizer is char-level) up to the stop
    r = eng.generate(prompts, SamplingParams(n=1, max_new_tokens=20, temperature=0, stop=[stop]))
    assert r.texts[1] == text[:k] and r.lengths[1] == k and not r.truncated[1]
    assert torch.equal(r.completion_ids[1, :k], full.completion_ids[1, :k])
    for i, t in enumerate(full.texts):  # every other row: cut at its own first hit, or untouched
        if stop in t:
            assert r.texts[i] == t[: t.find(stop) + len(stop)] and not r.truncated[i]
        else:
            assert r.texts[i] == t and r.truncated[i]


def test_eos_ends_rows_and_rows_leaving_change_nothing(lm, tok, prompts):
    eos = tok.eos_token_id
    handle = eos_bias(lm, eos, 3.5)  # EOS now likely enough that rows end at different steps
    try:
        params = SamplingParams(n=6, max_new_tokens=16, temperature=1.0, seed=2)
        batched = KVCacheEngine(lm, tok).generate(prompts, params)
        one_by_one = KVCacheEngine(lm, tok, decode_batch_size=1).generate(prompts, params)
        ref = fresh_logprobs(lm, prompts, batched, 1.0)
    finally:
        handle.remove()
    check_layout(batched, len(prompts), 6, 16, tok.pad_token_id)
    ids, lengths = batched.completion_ids, batched.lengths
    has_eos = (ids == eos).any(-1)
    assert 0 < has_eos.sum() < len(ids), "the test wants both rows that end on EOS and rows that run out"
    for i in range(len(ids)):
        if has_eos[i]:  # the mask ends at (and includes) the first EOS; the text drops it
            first = int((ids[i] == eos).nonzero()[0])
            assert lengths[i] == first + 1 and not batched.truncated[i]
            assert batched.texts[i] == tok.decode(ids[i, :first], skip_special_tokens=True)
        else:
            assert lengths[i] == 16 and batched.truncated[i]
    assert torch.equal(batched.completion_ids, one_by_one.completion_ids)
    assert torch.allclose(batched.logprobs, one_by_one.logprobs, atol=1e-5)
    assert torch.allclose(batched.logprobs, ref, atol=1e-4)


def test_generation_config_eos_ids_also_stop(lm, tok, prompts):
    greedy = KVCacheEngine(lm, tok).generate(prompts[:1], SamplingParams(n=1, max_new_tokens=8, temperature=0))
    third = int(greedy.completion_ids[0, 2])
    lm.generation_config.eos_token_id = [tok.eos_token_id, third]
    r = KVCacheEngine(lm, tok).generate(prompts[:1], SamplingParams(n=1, max_new_tokens=8, temperature=0))
    first = greedy.completion_ids[0].tolist().index(third)
    assert r.lengths.tolist() == [first + 1] and not r.truncated[0]


def test_all_truncated_when_no_stop(lm, tok, prompts):
    r = KVCacheEngine(lm, tok, decode_batch_size=5).generate(prompts, SamplingParams(n=2, max_new_tokens=5, seed=0))
    if not (r.completion_ids == tok.eos_token_id).any():
        assert r.truncated.all() and r.lengths.tolist() == [5] * 8
    assert r.completion_ids.shape == (8, 5)


def test_bad_requests_raise_clear_errors(lm, tok, prompts):
    eng = KVCacheEngine(lm, tok)
    with pytest.raises(ValueError, match="empty prompt list"):
        eng.generate([], SamplingParams())
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        eng.generate([prompts[0], []], SamplingParams())
    long = [5] * 1020  # the tiny model has 1024 positions
    with pytest.raises(ValueError, match=r"prompt 2 has 1020 tokens.*max_new_tokens=8.*1028.*1024"):
        eng.generate([prompts[0], prompts[1], long], SamplingParams(max_new_tokens=8))
    with pytest.raises(ValueError, match="n must be"):
        eng.generate(prompts, SamplingParams(n=0))
    with pytest.raises(ValueError, match="top_p"):
        eng.generate(prompts, SamplingParams(top_p=0.0))
    with pytest.raises(ValueError, match="temperature"):
        eng.generate(prompts, SamplingParams(temperature=-1.0))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        eng.generate([[10**6]], SamplingParams())
    with pytest.raises(ValueError, match="unknown rollout backend 'vllm'.*engine, hf"):
        make_engine("vllm", lm, tok)


def test_restores_training_mode(lm, tok, prompts):
    lm.train()
    KVCacheEngine(lm, tok).generate(prompts, SamplingParams(max_new_tokens=2, seed=0))
    assert lm.training
    lm.eval()
    KVCacheEngine(lm, tok).generate(prompts, SamplingParams(max_new_tokens=2, seed=0))
    assert not lm.training


def test_bf16_logprobs_close_to_autocast_forward(lm, tok, prompts):
    r = KVCacheEngine(lm, tok, bf16=True).generate(prompts, SamplingParams(n=2, max_new_tokens=8, seed=4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = fresh_logprobs(lm, prompts, r, 1.0)
    err = (r.logprobs - ref).abs()[r.completion_mask.bool()]
    assert err.mean() < 0.01 and err.max() < 0.15, (err.mean(), err.max())  # bf16 rounding, not a bug


# ---- the HF reference backend and the factory ---------------------------------------------------------


def test_hf_backend_returns_valid_rollout(lm, tok, prompts):
    hf, eng = make_engine("hf", lm, tok), make_engine("engine", lm, tok)
    assert isinstance(hf, HFGenerateEngine) and isinstance(eng, KVCacheEngine)
    assert isinstance(hf, RolloutEngine) and isinstance(eng, RolloutEngine)
    hf.sync_weights(lm), eng.sync_weights(lm)  # no-ops for in-process backends
    greedy = SamplingParams(n=2, max_new_tokens=10, temperature=0)
    a, b = hf.generate(prompts, greedy), eng.generate(prompts, greedy)
    check_layout(a, len(prompts), 2, 10, tok.pad_token_id)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-4)
    sampled = hf.generate(prompts, SamplingParams(n=3, max_new_tokens=10, temperature=0.8, top_p=0.9, seed=1))
    check_layout(sampled, len(prompts), 3, 10, tok.pad_token_id)
    assert torch.allclose(sampled.logprobs, fresh_logprobs(lm, prompts, sampled, 0.8), atol=1e-4)
    again = hf.generate(prompts, SamplingParams(n=3, max_new_tokens=10, temperature=0.8, top_p=0.9, seed=1))
    assert torch.equal(sampled.completion_ids, again.completion_ids)
    stop = b.texts[0][2:4]
    cut = hf.generate(prompts, SamplingParams(n=2, max_new_tokens=10, temperature=0, stop=[stop]))
    k = b.texts[0].find(stop) + 2
    assert cut.texts[0] == b.texts[0][:k] and cut.lengths[0] == k and not cut.truncated[0]


def test_hf_backend_eos(lm, tok, prompts):
    handle = eos_bias(lm, tok.eos_token_id, 100.0)  # EOS is always the argmax
    try:
        r = make_engine("hf", lm, tok).generate(prompts, SamplingParams(n=2, max_new_tokens=6, temperature=0))
    finally:
        handle.remove()
    assert r.lengths.tolist() == [1] * 8 and not r.truncated.any() and r.texts == [""] * 8
    assert torch.all(r.completion_ids[:, 0] == tok.eos_token_id)


def test_backends_table():
    assert set(BACKENDS) == {"engine", "hf"}


def test_preallocated_cache_matches_stock_dynamic_cache(lm, tok, prompts):
    """In-place cache + one prefill per length bucket (the 4 prompts make 4 buckets) vs the stock
    DynamicCache with one left-padded prefill."""
    handle = eos_bias(lm, tok.eos_token_id, 5.0)  # rows leave the batch mid-way: buffers get re-gathered
    try:
        params = SamplingParams(n=3, max_new_tokens=12, temperature=1.0, seed=9)
        fast = KVCacheEngine(lm, tok, prealloc_cache=True).generate(prompts, params)
        stock = KVCacheEngine(lm, tok, prealloc_cache=False).generate(prompts, params)
    finally:
        handle.remove()
    assert torch.equal(fast.completion_ids, stock.completion_ids)
    assert torch.allclose(fast.logprobs, stock.logprobs, atol=1e-5)
    assert fast.lengths.min() < 12  # some rows did leave
