"""The training forward: micro-batch assembly (plain and shared-prompt layouts) and :class:`PolicyForward`.

Cost notes (the lean step of issue 3):

- Each micro-batch is right-padded to ITS OWN longest prompt+completion (not the global maximum) and
  runs without an attention mask: with right padding and causal attention no real token ever attends to
  a pad, so the fast causal path applies.
- The lm_head runs only from the first completion position on (``logits_to_keep``): prompt positions
  never reach the (b, K, V) logits, and :func:`gmpo.ops.token_logprobs` upcasts them one chunk at a time.
- Old log-probs cost no forward when the policy has not moved since sampling (see :class:`OldLogp`).

The update owns how a rollout batch is cut: :func:`micro_batch` assembles any rows of a
:class:`gmpo.batch.RolloutBatch` for one forward; the batch itself holds only data.
"""
from __future__ import annotations

import inspect
import copy
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from gmpo import perf
from gmpo.algo import ops
from gmpo.compat import cache_kwarg, output_cache


@dataclass
class MicroBatch:
    """One forward's worth of completions in one of two layouts.

    Plain (``shared is None``): input_ids (b, L) = prompt+completion, right-padded to this micro-batch's
    longest row; the forward keeps logits for positions start..L-1 (K = L - start of them); labels (b, K)
    hold the next token at completion positions and -100 elsewhere; gather (b, Tc) maps completion token
    t of row i to its column in the kept logits.
    Shared prompt (``shared`` set): see :class:`SharedPrompt`.
    rows (b,): indices into the rollout batch; Tc: longest completion here.
    """

    rows: torch.Tensor
    Tc: int
    n_tokens: int  # real (non-pad) tokens run through the model, for FLOP accounting
    input_ids: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    gather: torch.Tensor | None = None
    start: int = 0
    shared: "SharedPrompt | None" = None


@dataclass
class SharedPrompt:
    """Each distinct prompt of a micro-batch runs once; its KV cache is then indexed out to its rows.

    prompt_ids / prompt_attn / prompt_pos (U, Lp): the U distinct prompts, left-padded; expand (b,): the
    prompt slot of each row; comp_ids (b, Tc) right-padded completions, comp_pos (b, Tc) their positions;
    labels (b, Tc): completion tokens, -100 past each completion's end. buckets: the rows cut by completion
    length (see :func:`length_buckets`); each bucket's completion forward pads only to its own longest
    completion, so short completions do not pay for the long ones' padding. Gradients reach the prompt's
    activations through the cache, so the result equals the plain layout's (up to float rounding).
    """

    prompt_ids: torch.Tensor
    prompt_attn: torch.Tensor
    prompt_pos: torch.Tensor
    expand: torch.Tensor
    comp_ids: torch.Tensor
    comp_pos: torch.Tensor
    labels: torch.Tensor
    buckets: list[tuple[torch.Tensor, int]] = field(default_factory=list)  # (row indices, their longest completion)


BUCKET_OVERHEAD = 16  # a completion forward's fixed cost, in token positions (Python, kernel launches, cache copy)


def length_buckets(lengths: list[int], overhead: float | None = None) -> list[list[int]]:
    """Cut rows into groups that minimise sum(rows x longest length) + overhead x groups (exact DP).

    lengths: tokens each row runs. Returns lists of row indices, each sorted by length (ascending),
    covering every row once. Rows of equal length never straddle two groups needlessly.
    """
    overhead = BUCKET_OVERHEAD if overhead is None else overhead
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        top = lengths[order[j - 1]]  # the longest of rows i..j-1
        for i in range(j):
            c = best[i] + (j - i) * top + overhead
            if c < best[j]:
                best[j], cut[j] = c, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


SHARE_MIN_SAVING = 0.2  # use the shared-prompt layout when it runs at least 20% fewer token positions


def build_micro_batch(prompt_ids: list[list[int]], completion_ids: torch.Tensor, lengths: torch.Tensor,
                      rows: torch.Tensor, pad_id: int, device: torch.device, group_size: int = 0) -> MicroBatch:
    """Assemble rows `rows` of a rollout batch (prompt_ids per row, completion_ids (N, T), lengths (N,)).

    With ``group_size > 0`` (rows group-major: row i belongs to prompt i // group_size), rows that share
    a prompt get the shared-prompt layout when it saves at least SHARE_MIN_SAVING of the positions run.
    """
    r = rows.tolist()
    lens = lengths[rows].tolist()
    Tc = max(max(lens), 1)
    plens = [len(prompt_ids[i]) for i in r]
    L = max(max(p + c for p, c in zip(plens, lens)), min(plens) + Tc)
    comp = completion_ids[rows, :Tc]  # (b, Tc)
    if group_size > 0:
        slots = list(dict.fromkeys(i // group_size for i in r))  # distinct prompts, first-seen order
        first_row = {i // group_size: i for i in reversed(r)}
        Lp = max(plens)
        if len(slots) * Lp + len(r) * Tc <= (1 - SHARE_MIN_SAVING) * len(r) * L:
            return _shared_micro_batch(prompt_ids, comp, lens, rows, r, slots, first_row, group_size, Lp, Tc,
                                       pad_id, device)
    ids = torch.full((len(r), L), pad_id, dtype=torch.long)
    comp_l = comp.tolist()
    for k, (i, p, c) in enumerate(zip(r, plens, lens)):
        ids[k, :p] = torch.tensor(prompt_ids[i], dtype=torch.long)
        ids[k, p:p + c] = torch.tensor(comp_l[k][:c], dtype=torch.long)
    start = min(plens) - 1  # first position whose logits predict a completion token
    K = L - start
    labels = torch.full((len(r), K), -100, dtype=torch.long)  # (b, K)
    gather = torch.zeros((len(r), Tc), dtype=torch.long)  # (b, Tc)
    t = torch.arange(Tc)
    for k, (p, c) in enumerate(zip(plens, lens)):
        cols = (p - 1 - start) + t  # logits column predicting completion token t
        gather[k] = cols.clamp(max=K - 1)
        labels[k, cols[:c]] = ids[k, p:p + c]
    return MicroBatch(rows.to(device), Tc, sum(plens) + sum(lens), ids.to(device), labels.to(device),
                      gather.to(device), start)


def _shared_micro_batch(prompt_ids, comp, lens, rows, r, slots, first_row, G, Lp, Tc, pad_id, device) -> MicroBatch:
    U = len(slots)
    p_ids = torch.full((U, Lp), pad_id, dtype=torch.long)  # (U, Lp) left-padded
    p_attn = torch.zeros((U, Lp), dtype=torch.long)
    p_len = []
    for u, s in enumerate(slots):
        ids = prompt_ids[first_row[s]]
        p_ids[u, Lp - len(ids):] = torch.tensor(ids, dtype=torch.long)
        p_attn[u, Lp - len(ids):] = 1
        p_len.append(len(ids))
    p_pos = (p_attn.cumsum(-1) - 1).clamp(min=0)  # (U, Lp)
    slot_of = {s: u for u, s in enumerate(slots)}
    expand = torch.tensor([slot_of[i // G] for i in r], dtype=torch.long)  # (b,)
    plen = torch.tensor(p_len)[expand]  # (b,)
    comp_pos = plen[:, None] + torch.arange(Tc)[None]  # (b, Tc)
    valid = torch.arange(Tc)[None] < torch.tensor(lens)[:, None]
    comp_ids = torch.where(valid, comp, torch.full_like(comp, pad_id))
    labels = torch.where(valid, comp, torch.full_like(comp, -100))
    # completion forwards run tokens 0..len-2 (the last token is only a label)
    buckets = [(torch.tensor(g, dtype=torch.long, device=device), max(lens[i] for i in g))
               for g in length_buckets([max(c - 1, 0) for c in lens])] if Tc > 1 else []
    shared = SharedPrompt(p_ids.to(device), p_attn.to(device), p_pos.to(device), expand.to(device),
                          comp_ids.to(device), comp_pos.to(device), labels.to(device), buckets)
    return MicroBatch(rows.to(device), Tc, sum(p_len) + sum(lens), shared=shared)


class PolicyForward:
    """Runs a causal LM on a :class:`MicroBatch` and returns completion-token log-probs (and entropy)."""

    def __init__(self, temperature: float, bf16: bool, chunk_size: int | None = None, cpu_eager_attention: bool = True):
        self.temperature, self.bf16, self.chunk_size = temperature, bf16, chunk_size
        self.cpu_eager_attention = cpu_eager_attention
        self.timer = None  # a gmpo.perf.PhaseTimer: forwards count as "forward", backwards as "backward"
        self._keep_arg: dict[int, bool] = {}

    def autocast(self, device: torch.device):
        """bf16 autocast context for the forward when enabled."""
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def _keeps(self, model) -> bool:
        key = id(model)
        if key not in self._keep_arg:  # a peft wrapper forwards **kwargs to the base model: ask the base
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            self._keep_arg[key] = "logits_to_keep" in inspect.signature(base.forward).parameters
        return self._keep_arg[key]

    def __call__(self, model, mb: MicroBatch, entropy: bool = False):
        """(logp (b, Tc) float32, entropy (b, Tc) float32 or None); differentiable unless under no_grad."""
        with phase(self.timer, "forward"), self.attention(model, mb):
            if mb.shared is not None:
                return self._shared(model, mb, entropy)
            return self._plain(model, mb, entropy)

    def _logp(self, logits, labels, entropy: bool):
        """One vocabulary pass gives both (the entropy is a metric: no gradient flows through it)."""
        return ops.token_logprobs_and_entropy(logits, labels, self.temperature, self.chunk_size, entropy=entropy)

    def attention(self, model, mb: MicroBatch):
        """On CPU with short sequences, the eager (matmul + softmax) attention for the training forward.

        On the reference CPU, PyTorch's bf16 flash-attention backward costs ~4x the eager one at these
        lengths (tens of tokens; see benchmarks/step_vs_trl.py); the math is the same. The model's own
        setting is restored on exit (the rollout engine keeps it). Off under gradient checkpointing, whose
        backward re-runs the forward outside this switch.
        """
        L = mb.input_ids.shape[1] if mb.shared is None else mb.shared.prompt_ids.shape[1] + mb.Tc
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if not (self.cpu_eager_attention and _device_of(model).type == "cpu" and L <= EAGER_MAX_LEN) \
                or _checkpointing(base):  # the recompute runs outside this switch
            return nullcontext()
        return _attn_impl(model, perf.training_attention(model.get_base_model() if hasattr(model, "get_base_model") else model))

    def _plain(self, model, mb: MicroBatch, entropy: bool):
        """One forward over prompt+completion; logits only from the first completion-predicting position."""
        kw = {"logits_to_keep": mb.input_ids.shape[1] - mb.start} if self._keeps(model) else {}
        with self.autocast(mb.input_ids.device):
            logits = model(input_ids=mb.input_ids, use_cache=False, **kw).logits  # (b, K, V)
        if not kw:
            logits = logits[:, mb.start:]
        logp, ent = self._logp(logits, mb.labels, entropy)  # (b, K)
        return logp.gather(1, mb.gather), (ent.gather(1, mb.gather) if ent is not None else None)  # (b, Tc)

    def _shared(self, model, mb: MicroBatch, entropy: bool):
        """Prompt forward once per distinct prompt (cache kept, with its graph), then the completions,
        one forward per length bucket, each on its rows' copy of the prompt cache."""
        sp = mb.shared
        kw = {"logits_to_keep": 1} if self._keeps(model) else {}
        p_in, c_in = _embed_once(model, sp.prompt_ids, sp.comp_ids)
        with self.autocast(sp.prompt_ids.device):  # one region: autocast casts the weights to bf16 once
            out = model(**p_in, attention_mask=sp.prompt_attn, position_ids=sp.prompt_pos,
                        use_cache=True, **kw)  # cost: U x Lp positions instead of b x Lp
            first = out.logits[:, -1:][sp.expand]  # (b, 1, V): predicts completion token 0
            lp0, h0 = self._logp(first, sp.labels[:, :1], entropy)  # (b, 1)
            if mb.Tc == 1:
                return lp0, h0
            b = sp.expand.shape[0]
            lps, hs, order = [], [], []
            buckets = sp.buckets or [(torch.arange(b, device=sp.expand.device), mb.Tc)]
            for rows, tb in buckets:
                n = tb - 1  # completion tokens 0..tb-2 run; they predict tokens 1..tb-1
                if n <= 0:  # completions of one token: nothing past the prompt's last position
                    lp = torch.zeros(rows.shape[0], mb.Tc - 1, device=lp0.device)
                    lps.append(lp), hs.append(lp), order.append(rows)
                    continue
                cache = _select_cache(output_cache(out), sp.expand[rows], last=len(buckets) == 1)
                attn = torch.cat([sp.prompt_attn[sp.expand[rows]], torch.ones_like(sp.comp_ids[rows, :n])], 1)
                rest = model(**{k: v[rows, :n] for k, v in c_in.items()}, attention_mask=attn,
                             position_ids=sp.comp_pos[rows, :n], use_cache=False,
                             **{cache_kwarg(model): cache}).logits  # (k, n, V)
                lp, h = self._logp(rest, sp.labels[rows, 1:tb], entropy)  # (k, n)
                pad = mb.Tc - 1 - n
                lps.append(torch.nn.functional.pad(lp, (0, pad)))
                hs.append(torch.nn.functional.pad(h, (0, pad)) if h is not None else None)
                order.append(rows)
        inv = torch.argsort(torch.cat(order))  # bucket order -> micro-batch row order
        logp = torch.cat([lp0, torch.cat(lps)[inv]], 1)  # (b, Tc)
        ent = torch.cat([h0, torch.cat(hs)[inv]], 1) if entropy else None
        return logp, ent


def _embed_once(model, prompt_ids: torch.Tensor, comp_ids: torch.Tensor):
    """Model inputs for the prompt and completion forwards from ONE embedding lookup.

    Each forward that embeds its own ids adds a dense (V, d) embedding gradient in the backward (a
    zero-filled 113 MB float32 tensor for a 49k x 576 table, then summed into the tied weight); one lookup
    makes one. Returns ({"inputs_embeds": (U, Lp, d)}, {"inputs_embeds": (b, Tc, d)}), or the ids
    unchanged when the model has no input-embedding module.
    """
    get = getattr(model, "get_input_embeddings", None)
    embed = get() if get is not None else None
    if embed is None:
        return {"input_ids": prompt_ids}, {"input_ids": comp_ids}
    n = prompt_ids.numel()
    emb = embed(torch.cat([prompt_ids.reshape(-1), comp_ids.reshape(-1)]))  # (U*Lp + b*Tc, d)
    return ({"inputs_embeds": emb[:n].view(*prompt_ids.shape, -1)},
            {"inputs_embeds": emb[n:].view(*comp_ids.shape, -1)})


def phase(timer, name: str):
    """``timer(name)`` when a phase timer is attached, else a no-op context."""
    return timer(name) if timer is not None else nullcontext()


EAGER_MAX_LEN = 512  # eager attention materialises (b, heads, L, L) scores: only for short sequences


def _checkpointing(model) -> bool:
    """Whether activation (gradient) checkpointing is on (the attribute was renamed in transformers 5.2x)."""
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, name, False))


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _attn_impl(model, impl: str):
    """Temporarily run `model` with attention implementation `impl` (transformers config switch)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    before = getattr(cfg, "_attn_implementation", None)
    if cfg is None or before is None or before == impl:
        yield
        return
    cfg._attn_implementation = impl
    try:
        yield
    finally:
        cfg._attn_implementation = before


def _select_cache(cache, index: torch.Tensor, last: bool):
    """The prompt cache with batch rows `index` (differentiable); a shallow copy unless it is the last use."""
    if not last:
        if not hasattr(cache, "layers"):  # older cache classes: copy the whole object
            raise RuntimeError("length buckets need a transformers Cache with .layers")
        c = copy.copy(cache)
        c.layers = [copy.copy(layer) for layer in cache.layers]
        cache = c
    cache.batch_select_indices(index)  # each row gets its prompt's keys/values
    return cache


def micro_batch(batch, rows: torch.Tensor) -> MicroBatch:
    """Rows `rows` (m,) of a :class:`gmpo.batch.RolloutBatch` assembled for one training forward.

    Padded to these rows' own longest lengths; with ``batch.share_prompt`` rows of the same group use the
    shared-prompt layout when it saves work (see :func:`build_micro_batch`).
    """
    return build_micro_batch(batch.prompt_ids, batch.completion_ids, batch.lengths, rows.cpu(), batch.pad_id,
                             batch.device, batch.group_size if batch.share_prompt else 0)


def split_rows(rows: torch.Tensor, micro_batch_size: int) -> list[torch.Tensor]:
    """Cut a 1-D index tensor into consecutive pieces of at most `micro_batch_size` (none when empty)."""
    return list(torch.split(rows, micro_batch_size)) if rows.numel() else []
