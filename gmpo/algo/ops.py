"""Tensor building blocks shared by the losses and the trainer: masked reductions, per-token
log-probabilities and entropy from logits (chunked, memory-bounded), and KL estimators.

Every function is pure (tensors in, tensors out) and never syncs with the host.

Memory and speed note: a (B, T, V) float32 log-softmax for a 49k-token vocabulary costs 200 KB per
token (590 MB for one 3000-token sequence). `token_logprobs` and `token_entropy` therefore work on a few
rows of the flattened (B*T, V) logits at a time (custom autograd functions), so no float32 (B, T, V)
tensor ever exists; small blocks also keep every vocabulary-wide elementwise op inside the CPU cache.
The log-prob backward reuses the softmax probabilities saved in the logits' own dtype (the logits
themselves are not kept), so the only full-size tensors are those probabilities and, in the same buffer,
the gradient w.r.t. the logits. `token_logprobs_and_entropy` gets both quantities from one log-softmax.
"""
from __future__ import annotations

import torch

from gmpo.algo.registry import KL_ESTIMATORS

DEFAULT_CHUNK = 8  # CPU default: rows of the flattened (B*T, V) logits upcast to float32 at once: 8 * V * 4 bytes (1.5 MB
# for a 49k vocabulary), so each block's log-softmax, exp and dot stay in the CPU cache (16x faster on
# the reference CPU than 256-position blocks that stream through DRAM once per elementwise op)

CUDA_CHUNK = 256  # GPU default (fewer, larger kernels): 256 rows of the flattened logits



def default_chunk(device: torch.device) -> int:
    """Rows of the flattened logits processed at once on `device` (DEFAULT_CHUNK on CPU, CUDA_CHUNK on GPU)."""
    return CUDA_CHUNK if device.type == "cuda" else DEFAULT_CHUNK


# ----------------------------------------------------------------------------------------------
# masked reductions

def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x * mask`` over `dim` (all dims when None).

    Positions where ``mask == 0`` contribute exactly 0 even when `x` holds NaN/Inf there, and they
    receive a zero (never NaN) gradient. `mask` may be bool, int or float (weights).
    """
    m = mask.to(x.dtype)
    v = torch.where(m != 0, x * m, torch.zeros((), dtype=x.dtype, device=x.device))
    return v.sum() if dim is None else v.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``masked_sum(x, mask, dim) / sum(mask, dim)``; 0 (not NaN) where the mask sums to 0."""
    s = masked_sum(x, mask, dim)
    m = mask.to(x.dtype)
    n = m.sum() if dim is None else m.sum(dim)
    return s / torch.where(n != 0, n, torch.ones((), dtype=n.dtype, device=n.device))


# ----------------------------------------------------------------------------------------------
# token log-probabilities (and entropy) from logits

def _chunks(T: int, chunk_size: int):
    for s in range(0, T, chunk_size):
        yield s, min(s + chunk_size, T)


def _chunk_arg(chunk_size: int | None, device: torch.device) -> int:
    if chunk_size is None:
        return default_chunk(device)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    return int(chunk_size)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(..., V) -> (N, V) (a view when contiguous)."""
    return x.reshape(-1, x.shape[-1])


def _log_softmax_rows(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 log_softmax(x / temperature) of a (c, V) block: one fused kernel (bf16 upcast inside it)."""
    if temperature != 1.0:
        return torch.log_softmax(x.float() / temperature, dim=-1)  # never in place: x may be the caller's float32
    return torch.log_softmax(x, dim=-1, dtype=torch.float32)


_F32_MIN = torch.finfo(torch.float32).min


class _TokenLogprobs(torch.autograd.Function):
    """log_softmax(logits / tau).gather(labels) in float32, chunked over rows of the flattened (N, V) logits.

    The forward also returns the entropy of each row (not differentiable; None unless asked) from the same
    log-softmax block. With grad enabled it saves the softmax probabilities in the logits' dtype (the same
    size as the logits it no longer needs) plus the label probability in float32, so the backward is one
    multiply per element and never recomputes a float32 log-softmax.
    """

    @staticmethod
    def forward(ctx, logits, labels, temperature, chunk_size, want_entropy, keep_probs):
        # logits (B, T, V), labels (B, T) >= 0
        x, lab = _rows(logits), labels.reshape(-1)  # (N, V), (N,)
        N = x.shape[0]
        out = torch.empty(N, dtype=torch.float32, device=logits.device)  # (N,)
        ent = torch.empty(N, dtype=torch.float32, device=logits.device) if want_entropy else None
        probs = torch.empty_like(x) if keep_probs else None  # (N, V) logits dtype
        p_lab = torch.empty(N, dtype=torch.float32, device=logits.device) if keep_probs else None
        for s, e in _chunks(N, chunk_size):
            lsm = _log_softmax_rows(x[s:e], temperature)  # (c, V) float32: the only upcast block alive
            out[s:e] = lsm.gather(-1, lab[s:e, None]).squeeze(-1)
            if want_entropy or keep_probs:
                p = torch.exp(lsm)
                if keep_probs:
                    probs[s:e] = p
                    p_lab[s:e] = p.gather(-1, lab[s:e, None]).squeeze(-1)
                if want_entropy:
                    ent[s:e] = -torch.linalg.vecdot(p, lsm.clamp_(min=_F32_MIN))  # H = -sum p log p; p = 0 at -inf
        if keep_probs:
            ctx.save_for_backward(probs, p_lab, lab)
        ctx.temperature, ctx.chunk_size, ctx.shape = temperature, chunk_size, logits.shape
        out = out.view(labels.shape)  # (B, T)
        if ent is not None:
            ent = ent.view(labels.shape)  # (B, T)
            ctx.mark_non_differentiable(ent)
        return out, ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, _grad_ent):  # grad_out (B, T)
        probs, p_lab, lab = ctx.saved_tensors  # (N, V) logits dtype, (N,), (N,)
        g_out = grad_out.reshape(-1).float()  # (N,)
        if ctx.temperature != 1.0:
            g_out = g_out / ctx.temperature
        # d logp_y / d x_v = (1[v = y] - p_v) / tau; the label entry from the float32 probability
        for s, e in _chunks(probs.shape[0], ctx.chunk_size):
            g = probs[s:e].float().mul_(-g_out[s:e, None])  # (c, V)
            g.scatter_(-1, lab[s:e, None], (g_out[s:e] * (1.0 - p_lab[s:e]))[:, None])
            probs[s:e] = g  # the gradient overwrites the probabilities it came from (one buffer)
        return probs.view(ctx.shape), None, None, None, None, None


def _check_logits(name: str, logits: torch.Tensor, labels: torch.Tensor | None, temperature: float) -> None:
    if logits.dim() != 3 or (labels is not None and labels.shape != logits.shape[:2]):
        got = f"{tuple(logits.shape)}" + (f" and {tuple(labels.shape)}" if labels is not None else "")
        raise ValueError(f"{name}: expected logits (B,T,V)" + (" and labels (B,T)" if labels is not None else "")
                         + f", got {got}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def token_logprobs_and_entropy(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                               chunk_size: int | None = None, entropy: bool = True):
    """(log pi(labels | ...) (B, T) float32, entropy (B, T) float32 detached, or None) in ONE pass.

    Same values as :func:`token_logprobs` and :func:`token_entropy` (the entropy is a metric here: no
    gradient flows through it), but both come from one float32 log-softmax per chunk of rows: one pass
    over the vocabulary instead of two log-sum-exps. Labels < 0 give log-prob 0 and no gradient.
    """
    _check_logits("token_logprobs", logits, labels, temperature)
    ignore = labels < 0
    safe = labels.clamp(min=0).long()
    keep = torch.is_grad_enabled() and logits.requires_grad
    chunk = _chunk_arg(chunk_size, logits.device)
    with torch.autocast(device_type=logits.device.type, enabled=False):  # float32 math on purpose
        out, ent = _TokenLogprobs.apply(logits, safe, float(temperature), chunk, bool(entropy), keep)
    out = torch.where(ignore, torch.zeros((), dtype=out.dtype, device=out.device), out)
    return out, ent


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                   chunk_size: int | None = None) -> torch.Tensor:
    """Per-token log pi(labels | ...) = log_softmax(logits / temperature).gather(labels), float32.

    logits: (B, T, V) any float dtype (bf16 is upcast one chunk at a time); labels: (B, T) int.
    Returns (B, T) float32. Labels < 0 (e.g. -100 padding) give 0 and no gradient.
    Never materialises a float32 (B, T, V) tensor: forward and backward work `chunk_size` rows of the
    flattened (B*T, V) logits at a time. Differentiable w.r.t. `logits` (first order).
    """
    return token_logprobs_and_entropy(logits, labels, temperature, chunk_size, entropy=False)[0]


class _TokenEntropy(torch.autograd.Function):
    """H = -sum_v p_v log p_v of softmax(logits / tau), float32, chunked over rows of the flattened logits."""

    @staticmethod
    def forward(ctx, logits, temperature, chunk_size):  # logits (B, T, V)
        x = _rows(logits)  # (N, V)
        ent = torch.empty(x.shape[0], dtype=torch.float32, device=logits.device)  # (N,)
        for s, e in _chunks(x.shape[0], chunk_size):
            lsm = _log_softmax_rows(x[s:e], temperature)  # (c, V)
            ent[s:e] = -torch.linalg.vecdot(torch.exp(lsm), lsm.clamp_(min=_F32_MIN))  # H = -sum p log p
        ctx.save_for_backward(logits, ent)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return ent.view(logits.shape[:2])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # grad_out (B, T)
        logits, ent = ctx.saved_tensors
        tau = ctx.temperature
        x = _rows(logits)
        grad = torch.empty_like(x)  # (N, V)
        g_out = grad_out.reshape(-1).float()
        for s, e in _chunks(x.shape[0], ctx.chunk_size):
            logp = _log_softmax_rows(x[s:e], tau)
            # dH/dx_v = -p_v (log p_v + H) / tau
            g = torch.exp(logp) * (logp + ent[s:e, None])
            g = torch.where(torch.isfinite(logp), g, 0.0).mul_(-g_out[s:e, None])  # -inf logits: p = 0
            if tau != 1.0:
                g.div_(tau)
            grad[s:e] = g
        return grad.view(logits.shape), None, None


def softmax_entropy(z: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
    """(R,) entropy in nats of softmax(z) for z (R, V) float32: H = logsumexp(z) - sum_v p_v z_v.

    ``probs``: softmax(z) when the caller already has it. The dot product is fused (no (R, V) temporary).
    """
    p = torch.softmax(z, -1) if probs is None else probs
    return torch.logsumexp(z, -1) - torch.linalg.vecdot(p, z)


def token_entropy(logits: torch.Tensor, chunk_size: int | None = None,
                  temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at every position, (B, T) float32.

    Chunked over rows like :func:`token_logprobs` (no float32 (B, T, V) tensor); differentiable.
    For a metric only, :func:`token_logprobs_and_entropy` gets it from the log-prob pass for free.
    """
    _check_logits("token_entropy", logits, None, temperature)
    chunk = _chunk_arg(chunk_size, logits.device)
    with torch.autocast(device_type=logits.device.type, enabled=False):  # float32 math on purpose
        return _TokenEntropy.apply(logits, float(temperature), chunk)


# ----------------------------------------------------------------------------------------------
# KL estimators (Schulman, "Approximating KL divergence")

def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from sampled tokens, same shape as `logp`.

    With l = logp - ref_logp: k1 = l, k2 = 0.5 * l^2, k3 = exp(-l) + l - 1 (>= 0, unbiased).
    """
    l_ref = logp - ref_logp
    if kind == "k1":
        return l_ref
    if kind == "k2":
        return 0.5 * l_ref * l_ref
    if kind == "k3":
        return torch.exp(-l_ref) + l_ref - 1.0
    raise ValueError(f"unknown KL estimator {kind!r}; valid: {', '.join(KL_ESTIMATORS)}")
