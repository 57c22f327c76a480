"""gmpo's rollout engine: a batched KV-cache sampler for any Hugging Face causal LM.

How one ``generate`` call runs (P prompts x n samples = N rows, laid out group-major):

1. Rows are cut into chunks of at most ``decode_batch_size`` (prompts sorted by length first, so a
   chunk's left padding stays small).
2. Prefill: each *distinct* prompt of a chunk runs through the model once (left-padded batch with an
   attention mask and explicit position ids); its KV cache is then copied to the group's rows
   (prefix sharing: the prompt costs one forward, not n).
3. Decode: one token per step for every active row, using the model's own forward with a
   ``DynamicCache``. Rows that emit EOS or complete a stop string leave the batch (cache, mask and
   state rows are selected away), so late steps run on the rows still going.

Sampling is reproducible and independent of how rows are batched: every row draws its uniforms from
one (N, max_new_tokens) table filled by a private ``torch.Generator`` seeded from ``params.seed``, and
picks its token by inverse-CDF lookup. So prefix sharing, the chunk size and rows leaving change no
sample (up to float rounding of the logits).

The returned log-probs are ``log_softmax(logits / temperature)`` at the sampled token (temperature 1
when greedy), before top-k/top-p filtering: the quantity the training forward computes.
"""
from __future__ import annotations

import inspect
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from gmpo.algo.ops import softmax_entropy
from gmpo.compat import cache_kwarg, output_cache
from gmpo.rollout.base import Rollout, SamplingParams


# ----------------------------------------------------------------------------------------------------
# Helpers shared by every in-process backend (the HF reference backend imports them too).
# ----------------------------------------------------------------------------------------------------


def validate_request(prompts: list[list[int]], params: SamplingParams, model) -> None:
    """Raise ``ValueError`` with a clear message for a malformed request."""
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise ValueError("generate() needs at least one prompt; got an empty prompt list")
    if not isinstance(params.n, int) or params.n < 1:
        raise ValueError(f"SamplingParams.n must be an integer >= 1, got {params.n!r}")
    if not isinstance(params.max_new_tokens, int) or params.max_new_tokens < 1:
        raise ValueError(f"SamplingParams.max_new_tokens must be an integer >= 1, got {params.max_new_tokens!r}")
    if params.temperature < 0:
        raise ValueError(f"SamplingParams.temperature must be >= 0 (0 = greedy), got {params.temperature}")
    if not 0.0 < params.top_p <= 1.0:
        raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {params.top_p}")
    if not isinstance(params.top_k, int) or params.top_k < 0:
        raise ValueError(f"SamplingParams.top_k must be an integer >= 0 (0 = off), got {params.top_k!r}")
    if isinstance(params.stop, str) or any(not isinstance(s, str) or s == "" for s in params.stop):
        raise ValueError(f"SamplingParams.stop must be a list of non-empty strings, got {params.stop!r}")
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    max_pos = getattr(config, "max_position_embeddings", None)
    vocab = getattr(config, "vocab_size", None)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
        if max_pos is not None and len(p) + params.max_new_tokens > max_pos:
            raise ValueError(
                f"prompt {i} has {len(p)} tokens; with max_new_tokens={params.max_new_tokens} that is "
                f"{len(p) + params.max_new_tokens} positions, beyond the model's max_position_embeddings={max_pos}"
            )
        if vocab is not None and (min(p) < 0 or max(p) >= vocab):
            raise ValueError(f"prompt {i} has a token id outside the vocabulary [0, {vocab})")


def eos_token_ids(model, tokenizer) -> list[int]:
    """All ids that end a completion: ``tokenizer.eos_token_id`` plus ``generation_config.eos_token_id``."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    if extra is not None:
        ids.update(int(e) for e in ([extra] if isinstance(extra, int) else extra))
    return sorted(ids)


def pad_token_id(tokenizer) -> int:
    """The id used to right-pad completions (pad, else EOS, else 0)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


class StopChecker:
    """Detects stop strings on the decoded *tail* of each row, so a step costs O(rows x window), not
    O(rows x length): only the last ``window`` tokens are decoded (enough to hold the longest stop
    string, since a token decodes to at least one character, plus slack for tokens that decode to
    nothing or merge on decode)."""

    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer = tokenizer
        self.stops = list(stops)
        self.window = max((len(s) for s in self.stops), default=0) + 4

    def __bool__(self) -> bool:
        return bool(self.stops)

    def hits(self, tails: list[list[int]]) -> list[bool]:
        """For each row's recent token ids, whether its decoded tail contains a stop string."""
        texts = self.tokenizer.batch_decode([t[-self.window :] for t in tails], skip_special_tokens=True)
        return [any(s in text for s in self.stops) for text in texts]

    def cut(self, text: str) -> tuple[str, bool]:
        """Cut ``text`` right after its earliest stop string; return (text, whether one was found)."""
        ends = [text.find(s) + len(s) for s in self.stops if s in text]
        if not ends:
            return text, False
        return text[: min(ends)], True


def finalize(
    prompts: list[list[int]],
    n: int,
    tokens: torch.Tensor,
    logprobs: torch.Tensor,
    lengths: torch.Tensor,
    ended: torch.Tensor,
    tokenizer,
    stop: StopChecker,
    entropy: torch.Tensor | None = None,
) -> Rollout:
    """Assemble a :class:`Rollout` from (N, T) token/log-prob (and optional entropy) buffers and per-row lengths.

    ``ended`` (N,) bool marks rows that stopped on EOS or a stop string; every other row hit the cap.
    Columns past the longest completion are dropped; padding gets ``pad_token_id``, log-prob 0 and entropy 0.
    """
    width = max(int(lengths.max()), 1)
    tokens, logprobs = tokens[:, :width].cpu(), logprobs[:, :width].float().cpu()  # (N, T)
    lengths = lengths.cpu()
    mask = (torch.arange(width)[None, :] < lengths[:, None]).float()  # (N, T)
    tokens = torch.where(mask.bool(), tokens, torch.full_like(tokens, pad_token_id(tokenizer)))
    logprobs = logprobs * mask
    if entropy is not None:
        entropy = entropy[:, :width].float().cpu() * mask  # (N, T)
    texts = tokenizer.batch_decode([row[:l] for row, l in zip(tokens.tolist(), lengths.tolist())], skip_special_tokens=True)
    if stop:
        texts = [stop.cut(t)[0] for t in texts]
    return Rollout(
        prompt_ids=[list(map(int, p)) for p in prompts],
        completion_ids=tokens,
        completion_mask=mask,
        logprobs=logprobs,
        truncated=~ended.cpu(),
        texts=texts,
        n=n,
        entropy=entropy,
    )


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor, block: int = 256) -> torch.Tensor:
    """(R,) index of the first entry of each row whose cumulative mass exceeds ``u * row total``.

    ``probs`` (R, K) non-negative, unnormalised; ``u`` (R,) in [0, 1). The pick always has positive
    mass. Two levels, because a sequential cumsum over a 50k vocabulary is the slowest op of a
    sampling step: block sums (one vectorised pass over (R, K)), a cumsum over the K/block sums, then a
    cumsum inside the one chosen block per row.
    """
    R, K = probs.shape
    nb = -(-K // block)
    if nb * block != K:
        probs = torch.nn.functional.pad(probs, (0, nb * block - K))  # zero mass is never picked
    blocks = probs.view(R, nb, block)  # (R, nb, block)
    bsum = blocks.sum(-1)  # (R, nb)
    bcdf = bsum.cumsum(-1)  # (R, nb)
    total = bcdf[:, -1:]  # (R, 1)
    # v < total strictly, so the first block with bcdf > v exists and has positive mass.
    v = torch.minimum(u[:, None].to(bcdf) * total, torch.nextafter(total, torch.zeros_like(total)))
    b = torch.searchsorted(bcdf, v, right=True).clamp_(max=nb - 1)  # (R, 1) chosen block
    rest = (v - (bcdf.gather(-1, b) - bsum.gather(-1, b))).clamp_(min=0)  # (R, 1) mass still to cover in it
    inner = blocks[torch.arange(R, device=probs.device), b.squeeze(-1)]  # (R, block)
    j = torch.searchsorted(inner.cumsum(-1), rest, right=True)  # (R, 1)
    # rounding can push j past the block's last positive entry (or into a zero tail): clamp back
    last = ((inner > 0) * torch.arange(block, device=probs.device)).amax(-1, keepdim=True)  # (R, 1)
    return (b * block + torch.minimum(j, last)).squeeze(-1)


def sample_from_logits(
    logits: torch.Tensor, u: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
    with_entropy: bool = False,
):
    """Pick one token per row and return (tokens (R,) long, log-probs (R,) float32).

    With ``with_entropy`` the result is (tokens, log-probs, entropy (R,) float32): the entropy of
    ``softmax(logits / temperature)`` (temperature 1 when greedy), the distribution the log-probs
    come from, as H = logsumexp(z) - sum_v p_v z_v (one fused dot product, no (R, V) temporary).

    ``logits`` (R, V); ``u`` (R,) uniforms in [0, 1) that decide the draw (ignored when greedy).
    The log-prob is ``log_softmax(logits / temperature)`` at the token (temperature 1 when greedy),
    i.e. before filtering. Sampling: temperature, then top-k, then top-p on the renormalised top-k
    mass (the order HF uses), then an inverse-CDF lookup of ``u`` in the kept probabilities.
    Cost: a few passes over (R, V); a sort of (R, V) only when top-p is on without top-k.
    """
    logits = logits.float()  # (R, V)
    if temperature == 0:  # greedy
        tok = logits.argmax(-1)  # (R,)
        lse = torch.logsumexp(logits, -1)  # (R,)
        lp = logits.gather(-1, tok[:, None]).squeeze(-1) - lse
        if not with_entropy:
            return tok, lp
        return tok, lp, softmax_entropy(logits)
    z = logits if temperature == 1 else logits / temperature  # (R, V)
    probs_all = torch.softmax(z, dim=-1)  # (R, V)
    probs, ids = probs_all, None  # ids: candidate token ids when probs is a sorted subset of the vocabulary
    if 0 < top_k < probs.shape[-1]:
        probs, ids = probs.topk(top_k, dim=-1)  # (R, k), sorted descending
    elif top_p < 1.0:
        probs, ids = probs.sort(dim=-1, descending=True)  # (R, V)
    if top_p < 1.0:
        probs = probs / probs.sum(-1, keepdim=True)
        before = probs.cumsum(-1) - probs  # mass of the strictly more likely candidates
        probs = probs * (before < top_p)  # keep the smallest prefix with mass >= top_p (>= 1 token)
    j = inverse_cdf(probs, u)  # (R,)
    tok = ids.gather(-1, j[:, None]).squeeze(-1) if ids is not None else j
    # log of the softmax entry: within ~1e-7 of log_softmax, and positive by construction of the pick
    lp = probs_all.gather(-1, tok[:, None]).squeeze(-1).log()
    if not with_entropy:
        return tok, lp
    return tok, lp, softmax_entropy(z, probs_all)


def length_buckets(lengths: list[int], slack: float = 0.125, max_tokens: int = 8192) -> list[range]:
    """Cut sequences (in the given order, best sorted by length) into contiguous ranges whose left
    padding stays within ``slack`` of their real tokens and whose padded size stays <= ``max_tokens``
    (bounds the prefill's activation memory). One range = one prefill forward."""
    buckets, start, longest, total = [], 0, 0, 0
    for i, n in enumerate(lengths):
        new_longest, new_total = max(longest, n), total + n
        padded = (i - start + 1) * new_longest
        if i > start and (padded > (1 + slack) * new_total or padded > max_tokens):
            buckets.append(range(start, i))
            start, new_longest, new_total = i, n, n
        longest, total = new_longest, new_total
    buckets.append(range(start, len(lengths)))
    return buckets


# ----------------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Outputs:
    """Per-call output buffers, on the model's device so a decode step never waits on a host copy."""

    tokens: torch.Tensor  # (N, T) long, pad where nothing was sampled
    logprobs: torch.Tensor  # (N, T) float32
    lengths: torch.Tensor  # (N,) long
    ended: torch.Tensor  # (N,) bool: stopped on EOS / a stop string
    entropy: torch.Tensor | None = None  # (N, T) float32 when requested

    @classmethod
    def empty(cls, N: int, T: int, pad: int, device, entropy: bool = False) -> "_Outputs":
        return cls(
            tokens=torch.full((N, T), pad, dtype=torch.long, device=device),
            logprobs=torch.zeros((N, T), dtype=torch.float32, device=device),
            lengths=torch.zeros(N, dtype=torch.long, device=device),
            ended=torch.zeros(N, dtype=torch.bool, device=device),
            entropy=torch.zeros((N, T), dtype=torch.float32, device=device) if entropy else None,
        )


class KVCacheEngine:
    """Batched KV-cache sampler with prompt-prefix sharing (see the module docstring).

    Args:
        model: any HF causal LM (its forward must accept a KV cache (``cache`` or ``past_key_values``, see
            :mod:`gmpo.compat`) and ``position_ids``).
        tokenizer: its tokenizer (EOS, padding, decoding for stop strings and texts).
        bf16: run the forward under ``torch.autocast(bfloat16)``, as the trainer's forward does.
        decode_batch_size: most rows decoded at once (bounds the KV cache's memory).
        share_prefix: prefill each prompt once and copy its cache to its n rows (False: prefill
            every row; only useful to test that sharing changes nothing).
        prealloc_cache: append keys/values in place into preallocated buffers (False: the stock
            ``DynamicCache``, which copies the whole cache at every step; kept for comparison).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        bf16: bool = False,
        decode_batch_size: int = 256,
        share_prefix: bool = True,
        prealloc_cache: bool = True,
    ):
        if decode_batch_size < 1:
            raise ValueError(f"decode_batch_size must be >= 1, got {decode_batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.bf16 = bf16
        self.decode_batch_size = decode_batch_size
        self.share_prefix = share_prefix
        self.prealloc_cache = prealloc_cache
        self._eos = eos_token_ids(model, tokenizer)
        self._keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters

    def sync_weights(self, model: torch.nn.Module) -> None:
        """No-op: the engine decodes with the policy module itself."""

    # -- public API ------------------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> Rollout:
        """Sample ``params.n`` completions per prompt; rows are group-major (prompt i, sample j -> i*n+j)."""
        validate_request(prompts, params, self.model)
        P, n, T = len(prompts), params.n, params.max_new_tokens
        N = P * n
        device = next(self.model.parameters()).device
        # Unseeded calls draw their seed from the global generator: reproducible under torch.manual_seed,
        # and the global stream moves on, so two unseeded calls differ.
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)))
        gen = torch.Generator().manual_seed(seed)
        uniforms = torch.rand((N, T), generator=gen).to(device)  # (N, T): row r's draw at step t, whatever the batching
        out = _Outputs.empty(N, T, pad_token_id(self.tokenizer), device, entropy=params.entropy)
        stop = StopChecker(self.tokenizer, params.stop)

        was_training = self.model.training
        self.model.eval()
        try:
            # One autocast region for the whole call: autocast caches each weight's bf16 copy inside a
            # region, so the weights are cast once per call instead of once per forward (~0.8 GB of memory
            # traffic per step for a 135M model). That cache only works for tensors that require grad and
            # is bypassed under inference_mode, so bf16 runs under no_grad instead.
            grad_off = torch.no_grad() if self.bf16 else torch.inference_mode()
            with grad_off, self._autocast(device):
                for rows in self._chunks(prompts, n):
                    self._run_chunk(prompts, n, rows, params, uniforms, out, stop, device)
        finally:
            self.model.train(was_training)
        return finalize(prompts, n, out.tokens, out.logprobs, out.lengths, out.ended, self.tokenizer, stop, out.entropy)

    # -- internals -------------------------------------------------------------------------------------

    def _chunks(self, prompts: list[list[int]], n: int) -> list[list[int]]:
        """Global row ids cut into chunks of <= decode_batch_size, prompts ordered by length
        (stable), so each chunk pads to similar lengths. A group may straddle two chunks."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        rows = [i * n + j for i in order for j in range(n)]
        b = self.decode_batch_size
        return [rows[s : s + b] for s in range(0, len(rows), b)]

    def _autocast(self, device: torch.device):
        if not self.bf16:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def _forward(self, cache=None, **inputs):
        """One model forward continuing `cache`; returns (last-position logits (B, V), the cache)."""
        if self._keep_arg:
            inputs["logits_to_keep"] = 1  # prefill: the lm_head runs on the last position only
        if cache is not None:
            inputs[cache_kwarg(self.model)] = cache  # `cache` on transformers >= 5.2x, `past_key_values` before
        out = self.model(use_cache=True, **inputs)
        return out.logits[:, -1, :], output_cache(out)

    def _prefill(self, seqs: list[list[int]], max_new_tokens: int, device):
        """Prompt forward over ``seqs`` (ordered by length); returns (last logits (B, V), cache,
        attention mask (B, L) with left padding, next positions (B,)).

        Cost: one forward per length bucket (:func:`length_buckets`). Padding every prompt to the
        longest one would waste ~40% of the prefill FLOPs on GSM8K-like length spreads, so with the
        in-place cache each bucket runs at its own length and its keys/values are placed right-aligned
        into the shared (B, H, L + max_new_tokens, D) buffers.
        """
        from transformers import DynamicCache

        from gmpo.rollout import cache as kv

        B, L = len(seqs), max(len(s) for s in seqs)
        lengths = torch.tensor([len(s) for s in seqs], device=device)  # (B,)
        attn = (torch.arange(L, device=device)[None, :] >= (L - lengths)[:, None]).long()  # (B, L) left padding
        if not self.prealloc_cache:
            cache = DynamicCache(config=self.model.config)
            logits, cache = self._forward(**self._prompt_batch(seqs, device), cache=cache)
            return logits, cache, attn, lengths
        cache = kv.make_cache(self.model.config, capacity=L + max_new_tokens)  # room for every new token
        buckets = length_buckets([len(s) for s in seqs])
        if len(buckets) == 1 or not kv.all_growing(cache):
            logits, cache = self._forward(**self._prompt_batch(seqs, device), cache=cache)
            return logits, cache, attn, lengths
        parts = []
        for b in buckets:
            sub = [seqs[i] for i in b]
            sub_cache = kv.make_cache(self.model.config, capacity=max(len(s) for s in sub))
            logits, sub_cache = self._forward(**self._prompt_batch(sub, device), cache=sub_cache)
            parts.append(logits)
            for big, small in zip(cache.layers, sub_cache.layers):  # (b, H, Lb, D) -> rows b, positions L-Lb..L
                big.place(slice(b.start, b.stop), L, small.keys, small.values, batch=B)
        return torch.cat(parts), cache, attn, lengths

    def _prompt_batch(self, seqs: list[list[int]], device) -> dict:
        """Left-padded ``input_ids`` / ``attention_mask`` / ``position_ids`` (B, L) for a prompt forward."""
        L = max(len(s) for s in seqs)
        pad = pad_token_id(self.tokenizer)
        ids = torch.tensor([[pad] * (L - len(s)) + list(s) for s in seqs], dtype=torch.long, device=device)
        attn = torch.tensor([[0] * (L - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long, device=device)
        pos = (attn.cumsum(-1) - 1).clamp_(min=0)  # real tokens at 0..len-1 after the left padding
        return {"input_ids": ids, "attention_mask": attn, "position_ids": pos}

    def _run_chunk(self, prompts, n, rows, params, uniforms, out: "_Outputs", stop: StopChecker, device):
        """Prefill and decode one chunk of global rows (``rows``), writing into ``out``."""
        T = params.max_new_tokens
        pidx = [r // n for r in rows]  # prompt of each row
        if self.share_prefix:
            distinct = list(dict.fromkeys(pidx))  # each prompt prefilled once
            slot = {p: k for k, p in enumerate(distinct)}
            logits, cache, attn, pos = self._prefill([prompts[p] for p in distinct], T, device)
            expand = torch.tensor([slot[p] for p in pidx], device=device)  # (R,) row -> its prompt's slot
            # Prefix sharing: copy each prompt's cache to its rows. Cost: one gather of R x L cache entries.
            cache.batch_select_indices(expand)
            logits, attn, pos = logits[expand], attn[expand], pos[expand]
        else:
            logits, cache, attn, pos = self._prefill([prompts[p] for p in pidx], T, device)

        R = len(rows)
        active = torch.tensor(rows, device=device)  # (R,) global row of each live batch row
        u_chunk = uniforms[active]  # (R, T)
        eos = torch.tensor(self._eos, dtype=torch.long, device=device)
        history: list[list[int]] = [[] for _ in rows] if stop else []  # per live row, for stop strings
        # The attention mask for every step, preallocated: prompt part, then ones for the new tokens.
        L = attn.shape[1]
        attn = torch.cat([attn, attn.new_ones((R, T))], dim=-1)  # (R, L + T); step t sees [:, : L + t + 1]
        for t in range(T):
            picked = sample_from_logits(logits, u_chunk[:, t], params.temperature, params.top_k, params.top_p,
                                        with_entropy=params.entropy)
            tok, lp = picked[0], picked[1]  # (R,) each
            out.tokens[active, t] = tok
            out.logprobs[active, t] = lp
            if params.entropy:
                out.entropy[active, t] = picked[2]
            done = torch.isin(tok, eos)  # (R,) bool
            if stop:
                for h, tid in zip(history, tok.tolist()):
                    h.append(tid)
                done |= torch.tensor(stop.hits(history), device=device)
            if t == T - 1:
                out.lengths[active] = T
                out.ended[active] = done
                break
            if done.any():  # finished rows leave the batch: later steps run on the rest only (a host sync)
                out.lengths[active[done]] = t + 1
                out.ended[active[done]] = True
                keep = (~done).nonzero().squeeze(-1)  # (R',)
                if keep.numel() == 0:
                    break
                # Cost: one gather of every layer's cache buffers (about one step's attention reads).
                cache.batch_select_indices(keep)
                attn, pos, tok, active, u_chunk = attn[keep], pos[keep], tok[keep], active[keep], u_chunk[keep]
                if stop:
                    history = [history[i] for i in keep.tolist()]
            logits, cache = self._forward(
                input_ids=tok[:, None], attention_mask=attn[:, : L + t + 1], position_ids=pos[:, None], cache=cache
            )
            pos = pos + 1


def build(model, tokenizer, *, bf16: bool = False, decode_batch_size: int = 256) -> KVCacheEngine:
    """The registry builder of this backend (see :mod:`gmpo.rollout.backends`)."""
    return KVCacheEngine(model, tokenizer, bf16=bf16, decode_batch_size=decode_batch_size)
