"""Data-parallel training across processes (torchrun / torch.distributed): the rank-aware pieces of a step.

One process per rank. Every rank runs the same prompt loader (same seed, so the same prompts), samples
the whole groups of its share of each step's prompts (rank r: prompts ``r*P/W .. (r+1)*P/W - 1``) with a
seed derived per rank, and trains on its own rows. What makes the result equal to one process on the
same global batch (DESIGN.md section 3, "must not depend on how the batch is cut"):

- the mini-batches are cut from ONE permutation of the global rows (identical on every rank); each rank
  runs the rows of each global mini-batch that it holds;
- the loss denominator of a mini-batch (sequences or tokens of the whole GLOBAL mini-batch) is
  all-reduced before any backward, so each rank's micro-batch loss carries ``count / global_count``;
- the gradients are then summed across ranks (an all-reduce SUM of one flat buffer, after the local
  accumulation: DDP's ``no_sync`` + one synchronisation, which also works when ranks run different numbers
  of micro-batches, e.g. after zero-advantage skipping), so every rank clips the same global gradient and
  takes the same optimizer step; weights and optimizer states stay identical on every rank;
- the mini-batch loss and the token-ratio extremes are all-reduced, so the guard sees global statistics and
  every rank takes the same verdict (skip / rollback / stop) in the same place.

Under ``train.parallel=fsdp2`` (``Dist.sharded``, see :mod:`gmpo.train.fsdp`) the weights are sharded and FSDP2
reduce-scatters the gradients (summed, not averaged) inside each backward: :meth:`Dist.sync_gradients` then
only reduces the loss and ratio extremes, and :meth:`Dist.padding` makes every rank run the same number of
forwards. One process with fsdp2 joins a process group of one rank so the same code runs.

Collectives run under the process-group timeout (``train.dist_timeout``): a rank that died or hangs makes
the others raise :class:`RankFailure` with a message naming the collective instead of waiting forever.
With one process (no ``WORLD_SIZE`` > 1 in the environment) nothing here runs: :func:`setup` returns None
(except under fsdp2, above).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as td

from gmpo import seeding

ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
BUCKET_BYTES = 64 * 2**20  # gradient all-reduce bucket (the extra memory a synchronisation needs)


class RankFailure(RuntimeError):
    """A collective failed: another rank died, hung past ``train.dist_timeout``, or the network broke."""


def rank_failure(exc: BaseException, rank: int | None = None, world: int | None = None) -> RankFailure | None:
    """A :class:`RankFailure` for a communication error raised outside :class:`Dist`'s own collectives (FSDP2's
    all-gathers and reduce-scatters inside forward/backward, torch.distributed.checkpoint), else None.

    torch raises ``torch.distributed.DistError`` subclasses (DistBackendError, DistNetworkError,
    DistStoreError) when a peer died, hung past the process-group timeout, or the connection broke."""
    if isinstance(exc, RankFailure):
        return exc
    if not isinstance(exc, td.DistError):
        return None
    rank = td.get_rank() if rank is None and td.is_initialized() else rank
    world = td.get_world_size() if world is None and td.is_initialized() else world
    first = str(exc).splitlines()[0] if str(exc) else ""
    where = f"rank {rank}/{world}" if rank is not None else "this rank"
    return RankFailure(f"{where}: a collective inside the model or checkpoint failed: another rank died, hung longer "
                       f"than train.dist_timeout, or the connection broke ({type(exc).__name__}: {first})")


def env_world_size() -> int:
    """WORLD_SIZE from the environment (torchrun sets it; 1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def backend_for(device: torch.device) -> str:
    """nccl for CUDA devices, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


@dataclass
class Dist:
    """This process's place in the process group and the collectives a step needs (all ranks call them in
    the same order). ``timeout_s`` is the process group's collective timeout; ``sharded``: the weights are
    sharded with FSDP2 (``train.parallel=fsdp2``), so FSDP2 reduces the gradients and forwards run in lockstep."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    timeout_s: float
    sharded: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the rank that writes files)."""
        return self.rank == 0

    # -- collectives (every failure becomes a RankFailure with context) ---------------------------

    def _call(self, what: str, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except (RuntimeError, ValueError) as e:  # gloo/nccl raise DistBackendError (a RuntimeError)
            raise RankFailure(
                f"rank {self.rank}/{self.world}: collective '{what}' failed: another rank died, hung longer than "
                f"train.dist_timeout={self.timeout_s:g} s, or the connection broke ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''})") from e

    def all_reduce(self, t: torch.Tensor, op: str = "sum", what: str = "all_reduce") -> torch.Tensor:
        """In-place all-reduce of `t` (op: sum | max | min); returns `t`."""
        ops = {"sum": td.ReduceOp.SUM, "max": td.ReduceOp.MAX, "min": td.ReduceOp.MIN}
        moved = t.device != self.device and self.device.type == "cuda"
        buf = t.to(self.device) if moved else t
        self._call(what, td.all_reduce, buf, op=ops[op])
        if moved:
            t.copy_(buf)
        return t

    def all_gather_object(self, obj, what: str = "all_gather_object") -> list:
        """[obj of rank 0, obj of rank 1, ...] (small host objects only: pickled)."""
        out = [None] * self.world
        self._call(what, td.all_gather_object, out, obj)
        return out

    def broadcast_object(self, obj, src: int = 0, what: str = "broadcast_object"):
        """Rank `src`'s `obj` on every rank."""
        box = [obj if self.rank == src else None]
        self._call(what, td.broadcast_object_list, box, src=src)
        return box[0]

    def barrier(self, what: str = "barrier") -> None:
        """Wait until every rank arrives (bounded by the timeout)."""
        if self.device.type == "cuda":
            self._call(what, td.barrier, device_ids=[self.device.index])
        else:
            self._call(what, td.barrier)

    def any(self, flag: bool, what: str = "any") -> bool:
        """True on every rank when `flag` is true on at least one."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.all_reduce(t, "max", what).item() > 0)

    def gather_cat(self, x: torch.Tensor, what: str = "gather_cat") -> torch.Tensor:
        """The 1-D tensors `x` of every rank concatenated in rank order (sizes may differ)."""
        x = x.reshape(-1)
        n = torch.tensor([float(x.numel())], device=self.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        self._call(what, td.all_gather, sizes, n)
        sizes = [int(s.item()) for s in sizes]
        pad = torch.zeros(max(sizes), dtype=x.dtype, device=self.device)
        pad[: x.numel()] = x.to(self.device)
        parts = [torch.zeros_like(pad) for _ in range(self.world)]
        self._call(what, td.all_gather, parts, pad)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(x.device)

    # -- the step's distributed pieces --------------------------------------------------------------

    def shard(self, n: int, name: str = "rollout.prompts_per_step") -> tuple[int, int]:
        """(start, stop) of this rank's contiguous share of `n` items; `n` must divide evenly."""
        if n % self.world:
            raise ValueError(f"{name}={n} must be a multiple of the number of ranks ({self.world}) so every rank "
                             f"samples whole groups of an equal share of the prompts")
        k = n // self.world
        return self.rank * k, (self.rank + 1) * k

    def rollout_seed(self, seed: int) -> int:
        """This rank's sampling seed, derived from the step's seed (the union is reproducible per world size)."""
        return seeding.derive_seed(seed, "rank", self.rank, "of", self.world)

    def padding(self, n: int, what: str = "micro-batch count") -> int:
        """How many padding forwards this rank adds to its `n` so every rank runs as many as the busiest one:
        the max over ranks minus `n` when sharded (FSDP2 issues collectives inside every forward and
        backward), else 0 (no collective). Call it BEFORE this rank's own forwards: it is a collective too."""
        if not self.sharded:
            return 0
        return int(self.all_reduce(torch.tensor([float(n)], device=self.device), "max", what).item()) - n

    def row_layout(self, n_local: int) -> tuple[int, int]:
        """(offset of this rank's first row in the global batch, global row count): ranks in rank order."""
        counts = self.all_gather_object(int(n_local), "row counts")
        return sum(counts[: self.rank]), sum(counts)

    def sync_gradients(self, params: list[torch.nn.Parameter], loss: torch.Tensor, ratio: dict) -> torch.Tensor:
        """Sum gradients and the mini-batch loss over ranks, reduce the token-ratio extremes.

        Gradients travel in flat buckets of about BUCKET_BYTES (one all-reduce each, bounded extra memory);
        a parameter without a gradient (this rank ran no rows) contributes zeros. Sharded (FSDP2): the
        gradients were already summed by FSDP2's reduce-scatter in the backward; only the loss and the
        extremes are reduced here. Returns the global loss; `ratio` ("min", "max") is reduced in place.
        """
        if not self.sharded:
            self._sum_gradients(params)
        ext = torch.stack([loss.detach().float().reshape(()), ratio["max"].float(), -ratio["min"].float()]).to(self.device)
        total = self.all_reduce(ext[:1].clone(), "sum", "mini-batch loss")
        self.all_reduce(ext, "max", "token-ratio extremes")  # one MAX for max and -min
        ratio["max"], ratio["min"] = ext[1].to(ratio["max"].device), (-ext[2]).to(ratio["min"].device)
        return total[0].to(loss.device)

    def _sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """All-reduce SUM every parameter's gradient in buckets of about BUCKET_BYTES (zeros where None)."""
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        bucket: list[torch.Tensor] = []
        size = 0
        for i, g in enumerate(grads):
            bucket.append(g)
            size += g.numel() * g.element_size()
            if size >= BUCKET_BYTES or i == len(grads) - 1:
                self._sum_bucket(bucket)
                bucket, size = [], 0

    def _sum_bucket(self, grads: list[torch.Tensor]) -> None:
        """All-reduce SUM gradient tensors through one flat float32 buffer, then copy the sums back."""
        flat = torch.cat([g.reshape(-1).float() for g in grads])  # (n,) float32 on the gradients' device
        self.all_reduce(flat, "sum", "gradient all-reduce")
        i = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[i:i + n].view_as(g))
            i += n

    def reduce_scalars(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Cross-rank reduction of per-rank 0-d metrics by name: '*max*' -> max, '*min*' -> min, else the mean
        over ranks. Idempotent for values that are already global (identical on every rank)."""
        keys = sorted(values)
        names = self.all_gather_object(keys, "metric names")
        if any(n != keys for n in names):  # a mismatch would pair different metrics (or hang): say which
            diff = sorted(set().union(*map(set, names)) - set.intersection(*map(set, names)))
            raise RuntimeError(f"rank {self.rank}: step metrics differ between ranks: {diff}")
        groups = {"max": [k for k in keys if "max" in k.rsplit("/", 1)[-1]],
                  "min": [k for k in keys if "min" in k.rsplit("/", 1)[-1]]}
        groups["sum"] = [k for k in keys if k not in groups["max"] and k not in groups["min"]]
        out = {}
        for op, names in groups.items():
            if not names:
                continue
            t = torch.stack([values[k].float().to(self.device) for k in names])
            self.all_reduce(t, op, f"metrics ({op})")
            if op == "sum":
                t = t / self.world
            out.update(dict(zip(names, t.unbind())))
        return out


def setup(device: torch.device, timeout_s: float, parallel: str = "ddp") -> Dist | None:
    """Join the process group described by the environment (torchrun's RANK, WORLD_SIZE, MASTER_ADDR, ...).

    Returns None for a single process, except under ``parallel="fsdp2"``: FSDP2 needs a process group, so
    one process joins a group of one rank (an in-process store; nothing is listened on). Re-uses a process
    group that is already initialised (several trainers in one process). On CUDA each rank takes
    ``cuda:LOCAL_RANK`` (returned as ``Dist.device``).
    """
    sharded = parallel == "fsdp2"
    world = env_world_size()
    if world <= 1 and not sharded and not (td.is_available() and td.is_initialized()):
        return None
    if not td.is_available():
        raise RuntimeError(f"WORLD_SIZE={world}, train.parallel={parallel}: this torch build has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", local if device.index is None else device.index)
        torch.cuda.set_device(device)
    if not td.is_initialized():
        kw = {"timeout": timedelta(seconds=timeout_s), "device_id": device if device.type == "cuda" else None}
        if world <= 1:  # fsdp2 in one process: a group of one
            td.init_process_group(backend_for(device), store=td.HashStore(), rank=0, world_size=1, **kw)
        else:
            missing = [v for v in ENV_VARS if v not in os.environ]
            if missing:
                raise RuntimeError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with torchrun "
                                   "(or `gmpo train --nproc N`)")
            td.init_process_group(backend_for(device), **kw)
    if td.get_world_size() <= 1 and not sharded:
        return None
    return Dist(td.get_rank(), td.get_world_size(), local, device, timeout_s, sharded=sharded)


def teardown() -> None:
    """Destroy the process group (end of `gmpo train` under torchrun)."""
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


__all__ = ["Dist", "RankFailure", "backend_for", "env_world_size", "rank_failure", "setup", "teardown"]
