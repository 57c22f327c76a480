"""FSDP2 training (``train.parallel=fsdp2``): parameters, gradients and AdamW moments sharded over the ranks
with PyTorch's own ``fully_shard``, keeping the exact global-batch semantics of :mod:`gmpo.train.dist`.

What changes against ``ddp`` (replicated weights, one gradient all-reduce per optimizer step):

- **Sharding.** Each decoder block (the modules of the ModuleList whose classes the HF model names in
  ``_no_split_modules``, e.g. ``model.model.layers[i]``) is ``fully_shard``-ed, then the root (embeddings,
  final norm, lm_head), on a 1-D device mesh of all ranks (``init_device_mesh("cpu"|"cuda", (world,))``).
  Tied embeddings (SmolLM2's lm_head is embed_tokens) stay ONE parameter in the root's group.
  On CUDA with bf16: ``MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)``; on CPU fp32.
- **Gradients.** FSDP2 reduce-scatters every block's gradient inside the backward. Its default divides by
  the world size; here the divide factor is 1 and the collectives are sum-only, so each rank's gradient
  shard is the SUM over ranks of the local gradients. Our micro-batch losses already carry
  ``count / global_count`` (the all-reduced denominators), so the sum is exactly the ddp / one-process
  gradient. Gradients are synchronised on every micro-batch (no unsharded gradient accumulation buffer:
  memory stays sharded; the communication is one reduce-scatter per block per micro-batch).
- **Lockstep.** Every forward all-gathers each block's parameters and every backward reduce-scatters
  them: collectives. So every rank must run the same number of forwards and backwards per mini-batch,
  old-log-prob recomputation and reference pass (``Dist.sharded``; :meth:`gmpo.train.dist.Dist.padding`).
  A rank with fewer micro-batches (uneven rows, zero-advantage skipping) runs padding micro-batches whose
  loss is multiplied by 0: exact, and no rank waits forever. The shared-prompt layout (two model calls per
  micro-batch) is off under fsdp2 for the same reason.
- **Rollout replica.** Generation must not run through the sharded module: ranks decode different numbers
  of steps, so their all-gathers would not match. Each rank keeps a full unsharded copy of the policy
  (:class:`RolloutReplica`) for the rollout engine and held-out evaluation, refreshed after every optimizer
  step by gathering each parameter (``DTensor.full_tensor()``, one all-gather per parameter, every rank at
  the same point). The cost is one extra full copy of the weights per rank (2 bytes/parameter in bf16,
  4 in fp32), still far below ddp's replicated weights + gradients + two AdamW moments (~16
  bytes/parameter); verl keeps its inference engine's weights the same way.
- **Clipping and metrics.** ``clip_grad_norm_`` on DTensor gradients returns a DTensor whose
  ``full_tensor()`` is the global norm (identical on every rank); the loss and the token-ratio extremes are
  reduced as under ddp, so the guard decides alike everywhere.
- **Checkpoints.** Sharded ``torch.distributed.checkpoint`` model + optimizer state plus a full HF export
  (see :mod:`gmpo.runs.sharded`).
"""
from __future__ import annotations

import copy

import torch


def _api():
    """(fully_shard, MixedPrecisionPolicy, FSDPModule, init_device_mesh), or a clear error on an old torch."""
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    except ImportError as e:  # torch < 2.6 kept FSDP2 under torch.distributed._composable
        raise RuntimeError(f"train.parallel=fsdp2 needs torch >= 2.6 (torch.distributed.fsdp.fully_shard); this is "
                           f"torch {torch.__version__}: upgrade torch or use train.parallel=ddp ({e})") from e
    return fully_shard, MixedPrecisionPolicy, FSDPModule, init_device_mesh


def decoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder blocks of an HF causal LM: every module of the ModuleList(s) whose children are all of the
    classes the model names in ``_no_split_modules`` (``LlamaDecoderLayer``, ``Qwen2DecoderLayer``, ...)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks: list[torch.nn.Module] = []
    for m in model.modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) and all(type(c).__name__ in names for c in m):
            blocks.extend(m)
    if not blocks:
        raise ValueError(f"train.parallel=fsdp2: found no decoder blocks in {type(model).__name__} (no ModuleList of "
                         f"its _no_split_modules classes {sorted(names)}); use train.parallel=ddp for this model")
    return blocks


def _sum_gradients(module, backend: str) -> None:
    """Make FSDP2's gradient reduction a plain SUM over ranks (no division by the world size)."""
    if hasattr(module, "set_gradient_divide_factor"):
        module.set_gradient_divide_factor(1.0)
    else:  # the older name of the same setting
        module.set_reduce_scatter_divide_factor(1.0)
    if hasattr(module, "set_force_sum_reduction_for_comms"):  # sum-only collectives: gloo has no PREMUL_SUM
        module.set_force_sum_reduction_for_comms(True)
    elif backend == "gloo":
        raise RuntimeError(f"train.parallel=fsdp2 on gloo needs FSDPModule.set_force_sum_reduction_for_comms "
                           f"(torch >= 2.8); this is torch {torch.__version__}: use train.parallel=ddp on CPU")


def shard(model: torch.nn.Module, device: torch.device, world: int, bf16: bool) -> torch.nn.Module:
    """``fully_shard`` each decoder block, then the root, on a 1-D mesh of all `world` ranks (in place).

    Every rank must call it with the same model (same initial weights: each rank keeps its shard). Returns
    the model (now also an ``FSDPModule``; its parameters are DTensors with the same names as before).
    """
    fully_shard, MixedPrecisionPolicy, FSDPModule, init_device_mesh = _api()
    mesh = init_device_mesh(device.type, (world,))
    mp = MixedPrecisionPolicy()  # fp32 compute and reduction (CPU, or bf16 off)
    if bf16 and device.type == "cuda":  # bf16 all-gathers and compute, fp32 gradient reduce-scatter
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in decoder_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    backend = "nccl" if device.type == "cuda" else "gloo"
    for m in model.modules():
        if isinstance(m, FSDPModule):
            _sum_gradients(m, backend)
    return model


class RolloutReplica:
    """A full, unsharded copy of the policy for the rollout engine and held-out evaluation.

    Made from the model BEFORE sharding (same names, same tied parameters). :meth:`refresh` gathers the
    sharded weights into it: a collective that every rank must call at the same point (after every
    optimizer step, restore and checkpoint load). Memory: one extra copy of the weights on every rank.
    """

    def __init__(self, model: torch.nn.Module):
        self.module = copy.deepcopy(model)  # requires_grad kept: autocast caches bf16 casts of such leaves
        self.module.eval()

    @torch.no_grad()
    def refresh(self, sharded: torch.nn.Module) -> None:
        """Copy the full weights of `sharded` into the replica, one parameter (one all-gather) at a time."""
        mine = dict(self.module.named_parameters())
        for name, p in sharded.named_parameters():
            full = p.full_tensor() if hasattr(p, "full_tensor") else p  # (full shape) on every rank
            mine[name].copy_(full)


def wrap(parallel: str, model, ref_model, dist, bf16: bool):
    """(policy, reference, replica or None) for ``train.parallel``: unchanged under ddp or one process;
    under fsdp2 the policy and the frozen reference are sharded and a :class:`RolloutReplica` is made."""
    if dist is None or not dist.sharded:
        return model, ref_model, None
    if hasattr(model, "peft_config"):
        raise ValueError("train.parallel=fsdp2 does not support LoRA (model.lora.enabled): use train.parallel=ddp")
    replica = RolloutReplica(model)
    model = shard(model, dist.device, dist.world, bf16)
    if ref_model is not None:  # its no-grad forwards run in lockstep like the policy's
        ref_model = shard(ref_model, dist.device, dist.world, bf16)
    return model, ref_model, replica


__all__ = ["RolloutReplica", "decoder_blocks", "shard", "wrap"]
