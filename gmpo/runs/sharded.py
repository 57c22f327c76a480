"""Sharded checkpoint state with ``torch.distributed.checkpoint`` (DCP): the model and optimizer of an FSDP2
run (``train.parallel=fsdp2``), resumable at any world size and under any ``train.parallel``.

A sharded checkpoint's step directory holds ``dcp/`` (DCP's ``.metadata`` + one ``__<rank>_0.distcp`` file
per rank: parameters and AdamW moments keyed by parameter name, each rank writing its shards) beside the
usual HF export, ``trainer_state.pt`` (without the optimizer) and ``meta.json`` (``"sharded": "dcp"``), see
:mod:`gmpo.runs.checkpoint`.

Loading reshards: :func:`load_state` asks :func:`get_state_dict` for the state the CURRENT model and
optimizer have (DTensor shards under FSDP2 at any world size; full tensors for a plain model in one process
or under ddp) and DCP reads exactly those pieces. A plain checkpoint (full safetensors weights, the
optimizer's index-keyed state) goes into a sharded model with :func:`load_full` (every rank reads the full
state and keeps its shards). All functions here are collectives when a process group is up: every rank
calls them at the same point.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

DCP_DIR = "dcp"


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model`'s parameters are DTensors (an FSDP2 ``fully_shard``-ed model)."""
    return any(hasattr(p, "full_tensor") for p in model.parameters())


def save_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Write the model and optimizer state under ``directory/dcp`` (each rank its own shards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)  # {name: DTensor shard}, {"state": {name: ...}, "param_groups"}
    dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(Path(directory) / DCP_DIR))


def load_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Load a sharded checkpoint's model and optimizer into `model` / `optimizer`, sharded or not.

    ``get_state_dict`` creates an empty optimizer's state first (torch does a zero-learning-rate step with
    zero gradients, so the weights do not move); DCP then overwrites it with the checkpoint's.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(directory) / DCP_DIR
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"{directory}: meta.json says sharded but {path}/.metadata is missing")
    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optimizer": osd}
    with warnings.catch_warnings():  # one process without a process group reads everything: what we want
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def complete_tied(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`weights` with every parameter name that shares its tensor with a saved one (tied embeddings:
    ``save_pretrained`` writes ``embed_tokens`` and drops ``lm_head``) filled in from its partner."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    out = dict(weights)
    for names in groups.values():
        have = [n for n in names if n in out]
        for n in names:
            if n not in out and have:
                out[n] = out[have[0]]
    return out


def load_full(model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, torch.Tensor],
              optim_state: dict | None) -> None:
    """Load a plain checkpoint into a sharded (FSDP2) model: full `weights` by name, and the optimizer's
    ``state_dict()`` of a plain run (parameters numbered in ``model.parameters()`` order, trainable only)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    weights = complete_tied(model, weights)
    own = [n for n, _ in model.named_parameters(remove_duplicate=False)]  # one order on every rank (collectives)
    missing = set(own) - set(weights)
    if missing:
        raise KeyError(f"checkpoint weights lack {sorted(missing)[:3]} ({len(missing)} parameters)")
    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, {n: weights[n] for n in own}, options=opts)
    if optim_state is None:
        return
    names = [n for n, p in model.named_parameters() if p.requires_grad]  # the optimizer's parameter order
    groups = []
    for g in optim_state["param_groups"]:
        groups.append({**g, "params": [names[i] for i in g["params"]]})
    full = {"state": {names[i]: s for i, s in optim_state["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(model, optimizer, full, options=opts)


__all__ = ["DCP_DIR", "complete_tied", "is_sharded", "load_full", "load_state", "save_state"]
