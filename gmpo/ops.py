"""Tensor building blocks shared by the losses and the trainer: masked reductions, per-token
log-probabilities and entropy from logits (chunked, memory-bounded), and KL estimators.

Every function is pure (tensors in, tensors out) and never syncs with the host.

Memory note: a (B, T, V) float32 log-softmax for a 49k-token vocabulary costs 200 KB per token
(590 MB for one 3000-token sequence). `token_logprobs` and `token_entropy` therefore upcast one
chunk of T at a time and use custom autograd functions whose backward recomputes the softmax chunk by
chunk, so neither the forward nor the backward ever holds more than one float32 (B, chunk, V) block;
the only full-size tensor is the gradient w.r.t. the logits, in the logits' own dtype.
"""
from __future__ import annotations

import torch

DEFAULT_CHUNK = 256  # positions of T upcast to float32 at once: B * 256 * V * 4 bytes

KL_ESTIMATORS = ("k1", "k2", "k3")


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
# token log-probabilities

def _chunks(T: int, chunk_size: int):
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    for s in range(0, T, chunk_size):
        yield s, min(s + chunk_size, T)


class _TokenLogprobs(torch.autograd.Function):
    """log_softmax(logits / tau).gather(labels), float32, chunked along T in forward and backward."""

    @staticmethod
    def forward(ctx, logits, labels, temperature, chunk_size):  # logits (B,T,V), labels (B,T) >= 0
        B, T, _ = logits.shape
        out = torch.empty(B, T, dtype=torch.float32, device=logits.device)  # (B, T)
        lse = torch.empty(B, T, dtype=torch.float32, device=logits.device)  # (B, T)
        for s, e in _chunks(T, chunk_size):
            x = logits[:, s:e].float()  # (B, c, V) float32: the only upcast block alive
            if temperature != 1.0:
                x = x / temperature
            lse[:, s:e] = torch.logsumexp(x, dim=-1)
            out[:, s:e] = x.gather(-1, labels[:, s:e, None]).squeeze(-1) - lse[:, s:e]
        ctx.save_for_backward(logits, labels, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # grad_out (B, T)
        logits, labels, lse = ctx.saved_tensors
        tau = ctx.temperature
        grad = torch.empty_like(logits)  # (B, T, V) in the logits' dtype
        grad_out = grad_out.float()
        for s, e in _chunks(logits.shape[1], ctx.chunk_size):
            x = logits[:, s:e].float()
            if tau != 1.0:
                x = x / tau
            g = torch.exp(x - lse[:, s:e, None]).mul_(-grad_out[:, s:e, None])  # -p * dL/dlogp
            g.scatter_add_(-1, labels[:, s:e, None], grad_out[:, s:e, None])  # + onehot * dL/dlogp
            if tau != 1.0:
                g.div_(tau)
            grad[:, s:e] = g
        return grad, None, None, None


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                   chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Per-token log pi(labels | ...) = log_softmax(logits / temperature).gather(labels), float32.

    logits: (B, T, V) any float dtype (bf16 is upcast one chunk at a time); labels: (B, T) int.
    Returns (B, T) float32. Labels < 0 (e.g. -100 padding) give 0 and no gradient.
    Never materialises a float32 (B, T, V) tensor: forward and backward work `chunk_size` positions
    of T at a time. Differentiable w.r.t. `logits` (first order).
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"token_logprobs: expected logits (B,T,V) and labels (B,T), got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    ignore = labels < 0
    safe = labels.clamp(min=0).long()
    with torch.autocast(device_type=logits.device.type, enabled=False):  # float32 math on purpose
        out = _TokenLogprobs.apply(logits, safe, float(temperature), int(chunk_size))  # (B, T)
    return torch.where(ignore, torch.zeros((), dtype=out.dtype, device=out.device), out)


class _TokenEntropy(torch.autograd.Function):
    """H = -sum_v p_v log p_v of softmax(logits / tau), float32, chunked along T."""

    @staticmethod
    def forward(ctx, logits, temperature, chunk_size):  # logits (B, T, V)
        B, T, _ = logits.shape
        ent = torch.empty(B, T, dtype=torch.float32, device=logits.device)  # (B, T)
        lse = torch.empty(B, T, dtype=torch.float32, device=logits.device)  # (B, T)
        for s, e in _chunks(T, chunk_size):
            x = logits[:, s:e].float()  # (B, c, V)
            if temperature != 1.0:
                x = x / temperature
            lse[:, s:e] = torch.logsumexp(x, dim=-1)
            logp = x - lse[:, s:e, None]
            plogp = torch.exp(logp) * logp
            ent[:, s:e] = -torch.where(torch.isfinite(logp), plogp, 0.0).sum(-1)  # H = -sum p log p
        ctx.save_for_backward(logits, lse, ent)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # grad_out (B, T)
        logits, lse, ent = ctx.saved_tensors
        tau = ctx.temperature
        grad = torch.empty_like(logits)
        grad_out = grad_out.float()
        for s, e in _chunks(logits.shape[1], ctx.chunk_size):
            x = logits[:, s:e].float()
            if tau != 1.0:
                x = x / tau
            logp = x - lse[:, s:e, None]
            # dH/dx_v = -p_v (log p_v + H)
            g = torch.exp(logp) * (logp + ent[:, s:e, None])
            g = torch.where(torch.isfinite(logp), g, 0.0).mul_(-grad_out[:, s:e, None])  # -inf logits: p = 0
            if tau != 1.0:
                g.div_(tau)
            grad[:, s:e] = g
        return grad, None, None


def token_entropy(logits: torch.Tensor, chunk_size: int = DEFAULT_CHUNK,
                  temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at every position, (B, T) float32.

    Chunked along T like :func:`token_logprobs` (no float32 (B, T, V) tensor); differentiable.
    """
    if logits.dim() != 3:
        raise ValueError(f"token_entropy: expected logits (B,T,V), got {tuple(logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with torch.autocast(device_type=logits.device.type, enabled=False):  # float32 math on purpose
        return _TokenEntropy.apply(logits, float(temperature), int(chunk_size))


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
