"""Rows that cannot move the gradient (advantage exactly 0, no KL in the loss) skip the forward/backward,
and the policy entropy comes from the rollout engine: same gradients, same AdamW steps, same entropy."""
import pytest
import torch

from gmpo.algo import ops
from gmpo.algo import presets as algorithms
from gmpo.algo.ops import softmax_entropy
from gmpo.config import AlgorithmConfig
from gmpo.rollout import SamplingParams
from gmpo.rollout.engine import KVCacheEngine, sample_from_logits
from gmpo.rollout.hf import HFGenerateEngine
from gmpo.telemetry.collector import Reducer
from gmpo.testing import tiny_model
from gmpo.train import GMPOTrainer
from gmpo.train.forward import PolicyForward, build_micro_batch
from gmpo.train.update import OldLogp, accumulate_minibatch, no_grad_logp
from test_trainer import make_cfg, make_trainer, weights  # tests/ is on sys.path (pytest rootdir-less test modules)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, restored after


def count_forwards(tr) -> list[int]:
    """Wrap the trainer's PolicyForward; returns the list the row count of every forward is appended to."""
    calls = []
    orig = tr.forward.__call__
    tr.forward = lambda model, mb, entropy=False: (calls.append(mb.rows.numel()), orig(model, mb, entropy))[1]
    return calls


def test_zero_advantage_inert_follows_the_kl_placement():
    """Inert exactly when no KL term sits in the loss: every preset at beta 0, and KL-in-reward."""
    for name in ("gmpo", "grpo", "dr_grpo", "dapo", "gspo"):
        assert algorithms.resolve(AlgorithmConfig(loss=name), 32).zero_advantage_inert, name
    assert not algorithms.resolve(AlgorithmConfig(loss="grpo", beta=0.04), 32).zero_advantage_inert
    assert algorithms.resolve(AlgorithmConfig(loss="grpo", beta=0.04, kl_in="reward"), 32).zero_advantage_inert


@pytest.mark.parametrize("algo,noise", [({"loss": "gmpo"}, 0.5), ({"loss": "grpo", "reduction": "token-mean"}, 0.5),
                                        ({"loss": "grpo", "reduction": "seq-mean-token-mean"}, 0.5),
                                        ({"loss": "gspo"}, 1e-4)])  # GSPO clips sequence ratios beyond ~3e-4
def test_skipping_inert_rows_gives_the_same_gradient_and_loss(tmp_path, tok, algo, noise):
    """Off-policy ratios (clipping active), half the rows with advantage 0: the gradient and the loss with
    those rows skipped equal the ones with every row run, and the skipped rows run no forward."""
    tr = make_trainer(tmp_path, tok)
    spec = algorithms.resolve(AlgorithmConfig(**algo), 8)
    batch, _, _ = tr.collect(1)
    N = batch.n
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(N, generator=g)
    adv[:4] = 0.0  # the first group carries no signal
    adv[6] = 0.0  # and one row of the second
    batch.advantages = adv
    cur = torch.zeros_like(batch.rollout_logp)
    no_grad_logp(tr.model, tr.forward, batch, torch.arange(N), N, cur)
    old_values = cur + noise * torch.randn(cur.shape, generator=g)
    rows = torch.randperm(N, generator=g)
    calls = count_forwards(tr)
    out = []
    for inert in (None, adv == 0):
        tr.model.zero_grad(set_to_none=True)
        old = OldLogp(old_values, batch.mask, "never")
        old.policy_moved = True
        calls.clear()
        loss, tokens, _ = accumulate_minibatch(tr.model, tr.forward, batch, rows, 3, spec.loss_fn, spec.loss_kwargs,
                                               spec.reduction, spec.norm_len, old, None, Reducer(), False, inert=inert)
        out.append((torch.cat([p.grad.reshape(-1) for p in tr.params]), loss, tokens, sum(calls)))
    (g_all, l_all, t_all, n_all), (g_skip, l_skip, t_skip, n_skip) = out
    assert n_all == 8 and n_skip == 3  # 5 inert rows never reached the model
    assert 0 < t_skip < t_all
    assert g_all.abs().sum() > 0
    torch.testing.assert_close(g_skip, g_all, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(l_skip, l_all, rtol=1e-5, atol=1e-7)


def test_kl_in_the_loss_trains_every_row(tmp_path, tok):
    """With a KL term in the loss a zero-advantage row still has a gradient: nothing is skipped."""
    tr = make_trainer(tmp_path, tok, reward="constant_reward", algorithm={"loss": "grpo", "beta": 0.1})
    calls = count_forwards(tr)
    m = tr.step()  # rollout step 1
    assert m["perf/rows_trained_frac"] == 1.0
    assert sum(calls) >= 8  # the reference forward and the training forward both see every row


def test_all_inert_step_equals_the_full_step(tmp_path, tok):
    """No group carries signal (constant reward): the skipping trainer runs no training forward, yet AdamW
    still steps on zero gradients (weight decay, momentum), ending at exactly the non-skipping weights."""
    results = []
    for skip in (False, True):
        tr = make_trainer(tmp_path / str(skip), tok, reward="constant_reward", optim={"weight_decay": 0.5},
                          train={"skip_zero_advantage": skip, "steps": 2})
        calls = count_forwards(tr)
        ms = [tr.step() for _ in (1, 2)]
        results.append((weights(tr.model), sum(calls), ms))
    (w_full, calls_full, m_full), (w_skip, calls_skip, m_skip) = results
    assert calls_full == 16 and calls_skip == 0
    assert [m["perf/rows_trained_frac"] for m in m_skip] == [0.0, 0.0]
    moved = 0
    for name in w_full:
        torch.testing.assert_close(w_skip[name], w_full[name], rtol=0, atol=1e-7)
        moved += int(not torch.equal(w_full[name], tiny_model(tok, seed=0).state_dict()[name]))
    assert moved > 0  # weight decay moved the weights: a skipped (grad=None) AdamW step would not have
    for a, b in zip(m_full, m_skip):
        assert a["loss/value"] == b["loss/value"] == 0.0 and a["grad/norm"] == b["grad/norm"] == 0.0


def test_sample_from_logits_reports_the_sampling_entropy():
    """The entropy returned with a sample is that of softmax(logits / temperature) (temperature 1 when greedy)."""
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(5, 40, generator=g)
    u = torch.rand(5, generator=g)
    for temp in (0.0, 0.7, 1.0):
        tok, lp, ent = sample_from_logits(logits, u, temp, with_entropy=True)
        p = torch.softmax(logits / (temp or 1.0), -1)
        torch.testing.assert_close(ent, -(p * p.log()).sum(-1), rtol=1e-5, atol=1e-5)
        tok2, lp2 = sample_from_logits(logits, u, temp)  # the entropy changes nothing else
        assert torch.equal(tok, tok2) and torch.equal(lp, lp2)
    torch.testing.assert_close(softmax_entropy(torch.zeros(2, 8)), torch.full((2,), float(torch.log(torch.tensor(8.0)))))


@pytest.mark.parametrize("backend", ["engine", "hf"])
def test_rollout_entropy_matches_a_fresh_forward(tok, backend):
    """Rollout.entropy (sampled rows) equals the training forward's per-token entropy, 0 on padding."""
    model = tiny_model(tok, seed=0)
    make = KVCacheEngine if backend == "engine" else HFGenerateEngine
    eng = make(model, tok)
    prompts = [tok(t)["input_ids"] for t in ("hello there", "what is 2+2?")]
    params = SamplingParams(n=3, max_new_tokens=6, temperature=0.8, seed=0, entropy=True)
    r = eng.generate(prompts, params)
    assert r.entropy is not None and r.entropy.shape == r.logprobs.shape
    assert torch.all(r.entropy[r.completion_mask == 0] == 0) and torch.all(r.entropy[r.completion_mask == 1] > 0)
    prompt_rows = [prompts[i // r.n] for i in range(r.completion_ids.shape[0])]
    mb = build_micro_batch(prompt_rows, r.completion_ids, r.lengths, torch.arange(len(prompt_rows)), tok.pad_token_id,
                           torch.device("cpu"))
    with torch.no_grad():
        _, ent = PolicyForward(0.8, bf16=False)(model, mb, entropy=True)
    mask = r.completion_mask[:, : mb.Tc]
    torch.testing.assert_close(ent * mask, r.entropy[:, : mb.Tc], rtol=1e-4, atol=1e-4)
    assert eng.generate(prompts, SamplingParams(n=1, max_new_tokens=4, seed=0)).entropy is None  # off by default


def test_trainer_entropy_comes_from_the_rollout(tmp_path, tok):
    """policy/entropy = token mean of the rollout entropies; the training forward no longer computes it,
    and a backend without entropies falls back to the training forward's."""
    tr = make_trainer(tmp_path, tok)
    flags = []
    orig = tr.forward.__call__
    tr.forward = lambda model, mb, entropy=False: (flags.append(entropy), orig(model, mb, entropy))[1]
    seen = {}
    collect = tr.collect  # the trainer's collect phase (a gmpo.train.collect.Collector)

    def spy(step, attempt=0):
        batch, s, roll = collect(step, attempt)
        seen["expected"] = float(ops.masked_mean(batch.entropy, batch.mask))
        return batch, s, roll

    tr.collect = spy
    m = tr.step()  # rollout step 1
    assert m["policy/entropy"] == pytest.approx(seen["expected"], rel=1e-6)
    assert flags and not any(flags)

    def no_entropy(step, attempt=0):  # a backend that reports no entropies (a future remote server, say)
        batch, s, roll = collect(step, attempt)
        batch.entropy = None
        return batch, s, roll

    tr.collect = no_entropy
    flags.clear()
    m2 = tr.step()  # rollout step 2
    assert any(flags) and m2["policy/entropy"] > 0


def first_group_silent(prompts, completions, **columns):
    """Reward with no signal in the first group of a round (rows 0-3 all 0.5: group advantages exactly 0) and
    signal in the others (1 when the completion's character codes sum to an even number)."""
    return [0.5 if i < 4 else float(sum(map(ord, c)) % 2 == 0) for i, c in enumerate(completions)]


def test_skipping_is_exact_across_epochs_and_minibatches(tmp_path, tok):
    """Two epochs x two mini-batches (later updates off-policy, old log-probs recomputed where needed), the
    first group's advantages 0 (its rewards are all equal): the skipping trainer ends at the non-skipping one's
    weights while running fewer forwards."""
    results = []
    for skip in (False, True):
        cfg = make_cfg(tmp_path / str(skip), optim={"weight_decay": 0.1},
                       train={"skip_zero_advantage": skip, "ppo_epochs": 2, "mini_batch_size": 4,
                              "micro_batch_size": 2, "recompute_old_logp": "always"})
        tr = GMPOTrainer(tiny_model(tok, seed=0), tok, cfg, reward_funcs=[first_group_silent])
        calls = count_forwards(tr)
        m = tr.step()  # rollout step 1
        results.append((weights(tr.model), sum(calls), m))
    (w_full, n_full, m_full), (w_skip, n_skip, m_skip) = results
    assert 0 < m_skip["perf/rows_trained_frac"] <= 0.5 < m_full["perf/rows_trained_frac"] == 1.0
    assert n_skip < n_full
    for name in w_full:
        torch.testing.assert_close(w_skip[name], w_full[name], rtol=1e-5, atol=1e-6)
    assert m_skip["loss/value"] == pytest.approx(m_full["loss/value"], rel=1e-4, abs=1e-7)
