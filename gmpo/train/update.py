"""The update phase: ``ppo_epochs`` passes over shuffled mini-batches, each an optimizer step accumulated
over micro-batches, with exact old log-probs at the lowest cost.

Gradient-accumulation scaling lives in :func:`accumulate_minibatch` and nowhere else: each micro-batch
loss is multiplied by ``out.count / reduction_count(reduction, mini-batch mask)``, so the summed
gradient equals the gradient of the uncut mini-batch for every reduction.

Old log-probs cost no forward when the policy has not moved since sampling (see :class:`OldLogp`).
Rows with advantage exactly 0 and no KL term in the loss run no forward or backward (their loss unit and
gradient are exactly 0; the denominators still count them).

Several ranks (``UpdateSettings.dist``, see :mod:`gmpo.train.dist`): the mini-batches are cut from one
permutation of the GLOBAL rows (the same on every rank; each rank runs the rows it holds), the denominator
of each mini-batch is all-reduced before the first backward, and the accumulated gradients, the loss and
the ratio extremes are summed/reduced over ranks before the optimizer step, so the update equals the
single-process update on the same global batch whatever the world size and micro-batch split.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gmpo import perf, seeding
from gmpo.algo import losses, ops
from gmpo.telemetry.collector import Reducer, StepMetrics, log_ratio_histogram, quantiles
from gmpo.train.forward import phase, micro_batch, split_rows

LOGP_AGREE_TOL = 1e-3  # max |rollout logp - training logp| (nats/token) for rollout log-probs to serve as old_logp


PAD_ROWS = torch.zeros(1, dtype=torch.long)  # the row a padding micro-batch runs (any real row would do)


@torch.no_grad()
def no_grad_logp(model, forward: PolicyForward, batch, rows: torch.Tensor, micro_batch_size: int,
                 out: torch.Tensor, dist=None) -> int:
    """Write log-probs of `rows` of `batch` under `model` into `out` (N, T) with no graph; returns tokens run.

    dist (sharded, FSDP2): every rank runs as many forwards as the rank with the most micro-batches; the
    extra forwards here are discarded (their collectives are what the other ranks wait for).
    """
    tokens = 0
    chunks = split_rows(rows, micro_batch_size)
    # agree on the count BEFORE any forward: a rank with fewer chunks would otherwise meet the others' in-forward
    # all-gathers with this all-reduce (mismatched collectives: a hang)
    pads = dist.padding(len(chunks), "no-grad micro-batch count") if dist is not None else 0
    for chunk in chunks:
        mb = micro_batch(batch, chunk)
        logp, _ = forward(model, mb)
        out[mb.rows, : mb.Tc] = logp
        tokens += mb.n_tokens
    for _ in range(pads):
        forward(model, micro_batch(batch, PAD_ROWS))  # padding: output unused
    return tokens


def _padding_backward(model, forward, batch) -> None:
    """A forward + backward whose loss is multiplied by 0: it adds exactly 0 to every gradient, and runs the
    same FSDP2 collectives (all-gathers, reduce-scatters) as a real micro-batch on the other ranks."""
    logp, _ = forward(model, micro_batch(batch, PAD_ROWS))  # (1, Tc)
    (logp.sum() * 0.0).backward()


class OldLogp:
    """The old log-probs of a rollout batch, (N, T), filled without extra forwards where possible.

    - The policy has not moved since sampling (the first mini-batch of the first epoch; every mini-batch
      when there is one optimizer step per rollout batch): old_logp = the training forward's log-probs,
      detached (ratio exactly 1). They are stored, so later epochs reuse them for those rows.
    - Otherwise, ``mode``: "never" uses the engine's rollout log-probs; "always" recomputes every row with
      one no-grad forward before the first update; "auto" compares the first mini-batch's training
      log-probs with the rollout log-probs and uses the rollout ones when the largest per-token gap is
      <= LOGP_AGREE_TOL, else recomputes the rows the first mini-batch did not cover.
    """

    def __init__(self, rollout_logp: torch.Tensor, mask: torch.Tensor, mode: str):
        self.rollout, self.mask = rollout_logp, mask  # (N, T) each
        self.values = rollout_logp.clone()  # (N, T)
        self.mode = mode
        self.fresh = torch.zeros(rollout_logp.shape[0], dtype=torch.bool, device=rollout_logp.device)  # rows set from the current policy
        self.policy_moved = False
        self.gap_max = torch.zeros((), device=rollout_logp.device)  # max |training - rollout| logp while unmoved
        self.gap_sum = torch.zeros((), device=rollout_logp.device)
        self.gap_tokens = torch.zeros((), device=rollout_logp.device)

    def for_rows(self, rows: torch.Tensor, logp: torch.Tensor, Tc: int) -> torch.Tensor:
        """old_logp (b, Tc) for a micro-batch whose current log-probs are `logp`."""
        if self.policy_moved:
            return self.values[rows, :Tc]
        cur = logp.detach()
        with torch.no_grad():  # rollout vs training numerics, measured where both describe the same policy
            valid = self.mask[rows, :Tc] != 0
            gap = torch.where(valid, (cur - self.rollout[rows, :Tc]).abs(), torch.zeros((), device=cur.device))
            self.gap_max = torch.maximum(self.gap_max, gap.max())
            self.gap_sum = self.gap_sum + gap.sum()
            self.gap_tokens = self.gap_tokens + valid.sum()
        if self.mode == "always":
            return self.values[rows, :Tc]
        self.values[rows, :Tc] = cur
        self.fresh[rows] = True
        return cur

    def rollout_agrees(self, dist=None) -> bool:
        """Whether the rollout log-probs matched the training forward (one host sync; call once).

        Decided on the tokens that ran while the policy was unmoved; when none ran (every row of the first
        mini-batch was skipped as inert) nothing was compared, so the answer is no and the stale rows
        are recomputed rather than trusting engine log-probs that were never checked.
        """
        pair = torch.stack([self.gap_max.float(), self.gap_tokens.float()])
        if dist is not None:  # decided on every rank's tokens, so all ranks recompute (or not) alike
            pair = torch.stack([dist.all_reduce(pair[:1].clone(), "max", "log-prob gap")[0],
                                dist.all_reduce(pair[1:].clone(), "sum", "log-prob gap")[0]])
        gap_max, compared = pair.tolist()
        return compared > 0 and gap_max <= LOGP_AGREE_TOL

    def gap_metrics(self) -> dict[str, torch.Tensor]:
        """rollout/logp_gap_max|mean: |training - rollout| log-prob per token while the policy was unmoved."""
        return {"rollout/logp_gap_max": self.gap_max,
                "rollout/logp_gap_mean": self.gap_sum / self.gap_tokens.clamp(min=1)}

    def stale_rows(self) -> torch.Tensor:
        """Rows whose old log-probs still come from the rollout (not from the training forward)."""
        return (~self.fresh).nonzero().squeeze(-1)


def accumulate_minibatch(model, forward: PolicyForward, batch, rows: torch.Tensor, micro_batch_size: int,
                         loss_fn, loss_kwargs: dict, reduction: str, norm_len, old: OldLogp,
                         ref_logp: torch.Tensor | None, red: Reducer, want_entropy: bool,
                         inert: torch.Tensor | None = None, dist=None):
    """Forward + backward one mini-batch (`rows`) in micro-batches; gradients accumulate in `model`.

    inert (N,) bool on the host, optional: rows whose loss unit and gradient are exactly 0 whatever the
    policy (advantage 0 with no KL term in the loss, see ``AlgorithmSpec.zero_advantage_inert``). They
    run no forward or backward, but the mini-batch denominator still counts them, so the gradient is
    the same as with them. dist (several ranks): `rows` are this rank's rows of a global mini-batch and the
    denominator is all-reduced over ranks first. Returns (the mini-batch loss as a 0-d tensor, this rank's
    share of it under `dist`, tokens run through the model,
    {"min", "max"}: the token-ratio extremes of the rows run, as 0-d tensors). Step metrics go to `red`.
    """
    full_mask = batch.mask[rows]  # (m, T)
    denom = losses.reduction_count(reduction, full_mask, norm_len)  # the whole mini-batch's denominator
    if dist is not None:  # the GLOBAL mini-batch's denominator, before any backward
        denom = dist.all_reduce(denom.detach().float().clone(), "sum", "loss denominator")
    total = torch.zeros((), device=full_mask.device)
    tokens = 0
    rmin = torch.full((), float("inf"), device=full_mask.device)
    rmax = torch.full((), float("-inf"), device=full_mask.device)
    run = rows if inert is None else rows[~inert[rows]]  # (m',) rows that can move the gradient
    chunks = split_rows(run, micro_batch_size)
    pads = dist.padding(len(chunks)) if dist is not None else 0  # > 0 only under FSDP2
    for chunk in chunks:
        mb = micro_batch(batch, chunk)
        logp, ent = forward(model, mb, entropy=want_entropy)  # (b, Tc)
        mask = batch.mask[mb.rows, : mb.Tc]  # (b, Tc)
        old_logp = old.for_rows(mb.rows, logp, mb.Tc)
        ref = ref_logp[mb.rows, : mb.Tc] if ref_logp is not None else None
        out = loss_fn(logp, old_logp, batch.advantages[mb.rows], mask, ref_logp=ref, **loss_kwargs)
        scaled = out.loss * (out.count / denom)  # the ONE place grad-accumulation scaling happens
        with phase(getattr(forward, "timer", None), "backward"):
            scaled.backward()
        total = total + scaled.detach()
        tokens += mb.n_tokens
        _micro_metrics(red, out, logp, old_logp, ref, mask, ent)
        rmin = torch.minimum(rmin, out.metrics["ratio/token_min"].float())
        rmax = torch.maximum(rmax, out.metrics["ratio/token_max"].float())
    for _ in range(pads):
        with phase(getattr(forward, "timer", None), "backward"):
            _padding_backward(model, forward, batch)
    return total, tokens, {"min": rmin, "max": rmax}


@torch.no_grad()
def _micro_metrics(red: Reducer, out, logp, old_logp, ref, mask, ent) -> None:
    n_tok = mask.sum()
    m = out.metrics
    for k in ("clip/frac_low", "clip/frac_high"):
        red.mean(k, m[k], n_tok)
    red.min("ratio/token_min", m["ratio/token_min"])
    red.max("ratio/token_max", m["ratio/token_max"])
    red.min("ratio/seq_min", m["ratio/seq_min"])
    red.max("ratio/seq_max", m["ratio/seq_max"])
    valid = mask != 0
    red.cat("ratio/tokens", torch.exp(logp.detach() - old_logp)[valid])
    # policy/kl: KL to the reference policy when there is one, else k3 between current and old policy
    kl = ops.kl_penalty(logp.detach(), ref if ref is not None else old_logp, "k3")
    red.mean("policy/kl", ops.masked_mean(kl, mask), n_tok)
    if ent is not None:
        red.mean("policy/entropy", ops.masked_mean(ent, mask), n_tok)


@dataclass
class UpdateSettings:
    """What the update loop needs from the config (train section) and the algorithm spec."""

    ppo_epochs: int
    mini_batch_size: int
    micro_batch_size: int
    recompute_old_logp: str  # auto | always | never
    skip_inert: bool  # train.skip_zero_advantage and the spec's zero_advantage_inert
    seed: int
    updates_per_batch: int
    dist: object = None  # a gmpo.train.dist.Dist when training on several ranks


def _sort_key(batch) -> torch.Tensor:
    """(N,) order inside a mini-batch: by prompt length, then prompt (groups stay together), then length."""
    N = batch.n
    return (torch.tensor([len(p) for p in batch.prompt_ids]) * (N + 1) + torch.arange(N) // batch.group_size) \
        * (batch.mask.shape[1] + 1) + batch.lengths


def update(model, forward, batch, spec, us: UpdateSettings, step: int, optimize, n_params: int,
           sm: StepMetrics):
    """``ppo_epochs`` passes of mini-batch updates on `batch`; returns (training FLOPs, verdict).

    optimize(loss, ratio, red) -> (moved: bool, verdict): clips, consults the hooks and steps the optimizer
    (see :func:`gmpo.train.optimize.optimizer_step`). A verdict other than "ok"/"skip" (a restore requested by a
    hook) abandons the rest of the step's updates and is returned for the trainer to carry out.
    """
    N, micro, dist = batch.n, us.micro_batch_size, us.dist
    offset, n_global = (0, N) if dist is None else dist.row_layout(N)  # this rank's rows: offset .. offset+N-1
    old = OldLogp(batch.rollout_logp, batch.mask, us.recompute_old_logp)
    flops = 0.0
    if us.recompute_old_logp == "always":  # one no-grad forward before the first update
        model.eval()
        tokens = no_grad_logp(model, forward, batch, torch.arange(N), micro, old.values, dist)
        flops += perf.training_flops(n_params, 0, tokens)
    model.train()
    red = Reducer()
    gen = torch.Generator().manual_seed(seeding.derive_seed(us.seed, "shuffle", step))
    key = _sort_key(batch)
    inert = (batch.advantages_host == 0) if us.skip_inert else None  # (N,) on the host: no device sync
    sm.add("perf/rows_trained_frac", 1.0 - inert.float().mean() if inert is not None else torch.ones(()))
    if batch.entropy is not None:  # the sampling policy's entropy over every completion token of the batch
        sm.add("policy/entropy", ops.masked_mean(batch.entropy, batch.mask))
    want_entropy = batch.entropy is None  # else measure it in the first epoch's training forwards
    n_updates, verdict = 0, "ok"
    for epoch in range(us.ppo_epochs):
        for rows in torch.randperm(n_global, generator=gen).split(us.mini_batch_size):
            if dist is not None:  # this rank's rows of the global mini-batch
                rows = rows[(rows >= offset) & (rows < offset + N)] - offset
            rows = rows[torch.argsort(key[rows], stable=True)]  # similar rows share micro-batches
            loss, tokens, ratio = accumulate_minibatch(
                model, forward, batch, rows, micro, spec.loss_fn, spec.loss_kwargs, spec.reduction,
                spec.norm_len, old, batch.ref_logp, red, want_entropy=want_entropy and epoch == 0, inert=inert,
                dist=dist)
            flops += perf.training_flops(n_params, tokens)
            if tokens == 0:  # every row inert: a zero gradient, so AdamW still steps (decay, momentum)
                for p in model.parameters():
                    if p.requires_grad and p.grad is None:
                        p.grad = torch.zeros_like(p)
            if dist is not None:  # sum gradients, loss and ratio extremes over ranks: the global mini-batch's
                loss = dist.sync_gradients([p for p in model.parameters() if p.requires_grad], loss, ratio)
            n_updates += 1
            if n_updates == 1 and us.updates_per_batch > 1 and us.recompute_old_logp == "auto" \
                    and not old.rollout_agrees(dist):
                flops += _recompute_stale(model, forward, batch, old, inert, micro, n_params, dist)
            moved, verdict = optimize(loss, ratio, red)
            old.policy_moved = old.policy_moved or moved
            if verdict not in ("ok", "skip"):  # a hook asked to restore: this step's remaining updates are void
                break
        if verdict not in ("ok", "skip"):
            break
    sm.update(red.results(dist))
    sm.update(old.gap_metrics())
    ratios = red.samples("ratio/tokens")
    if dist is not None:  # every rank's token ratios: global quantiles and histogram
        ratios = dist.gather_cat(ratios if ratios is not None else torch.zeros(0, device=batch.mask.device),
                                 "token ratios")
    if ratios is not None and ratios.numel():
        q = quantiles(ratios, [0.01, 0.99])
        sm.add("ratio/token_p01", q[0])
        sm.add("ratio/token_p99", q[1])
        sm.add_vector("ratio/log_hist", log_ratio_histogram(ratios.log()))  # l_t = log rho_t, fixed bins
    return flops, verdict


def _recompute_stale(model, forward, batch, old: "OldLogp", inert, micro: int, n_params: int, dist=None) -> float:
    """No-grad old log-probs for the rows the next updates will see with a moved policy; returns FLOPs."""
    stale = old.stale_rows()
    if inert is not None:  # inert rows never run: their old log-probs are never read
        stale = stale[~inert.to(stale.device)[stale]]
    if not stale.numel() and (dist is None or not dist.sharded):  # sharded: join the other ranks' forwards
        return 0.0
    model.eval()
    tokens = no_grad_logp(model, forward, batch, stale, micro, old.values, dist)
    model.train()
    return perf.training_flops(n_params, 0, tokens)
