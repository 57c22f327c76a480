"""Checkpoints (atomic, exactly resumable) and in-memory snapshots; both share :func:`training_state`.

A checkpoint directory ``<run_dir>/checkpoints/step_000123/`` holds

- the policy as ``save_pretrained`` writes it (safetensors + config) and the tokenizer, so
  ``AutoModelForCausalLM.from_pretrained(dir)`` loads it; under LoRA the directory holds the peft
  adapter and ``merged/`` the merged full model (loadable the same way);
- ``trainer_state.pt``: step, optimizer, scheduler, RNG states (python, numpy, torch, CUDA), the prompt
  loader's position, the stability tracker's windows, hook states and the trainer's own counters;
- ``meta.json`` (written last): marks the checkpoint complete.

Under ``train.parallel=fsdp2`` (:func:`save_sharded`, every rank at the same point) the model and optimizer
are saved sharded with ``torch.distributed.checkpoint`` in ``dcp/`` (see :mod:`gmpo.runs.sharded`;
``trainer_state.pt`` then has no optimizer and ``meta.json`` says ``"sharded": "dcp"``), and the full HF
export (from the run's unsharded rollout replica) still makes the directory loadable by ``from_pretrained``,
the registry and ``gmpo serve``. :func:`load` resumes either format under either mode at any world size.

Everything is written into a temporary sibling directory, fsynced, then renamed into place, so a crash
never leaves a half-written checkpoint under a ``step_*`` name. The trainer is duck-typed: it must have
``model``, ``tokenizer``, ``optimizer``, ``scheduler``, ``loader``, ``tracker``, ``hooks``, ``global_step``,
``lora`` (bool) and ``extra_state()`` / ``load_extra_state(d)``; :func:`save_sharded` also ``replica`` (a
:class:`gmpo.train.fsdp.RolloutReplica`).
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from gmpo import seeding

STATE_FILE = "trainer_state.pt"
META_FILE = "meta.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


# ----------------------------------------------------------------------------------------------
# state shared by snapshots and checkpoints

def training_state(trainer) -> dict[str, Any]:
    """Everything but the model weights, as live references (deep-copy before mutating training)."""
    return {
        "step": trainer.global_step,
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "rng": seeding.rng_state(),
        "data": trainer.loader.state_dict(),
        "tracker": trainer.tracker.state_dict(),
        "trainer": trainer.extra_state(),
    }


def load_training_state(trainer, state: dict[str, Any]) -> None:
    """Inverse of :func:`training_state` (a state without "optimizer" leaves the optimizer as it is)."""
    if "optimizer" in state:
        trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    seeding.set_rng_state(state["rng"])
    trainer.loader.load_state_dict(state["data"])
    trainer.tracker.load_state_dict(state["tracker"])
    trainer.load_extra_state(state["trainer"])
    trainer.global_step = int(state["step"])


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def snapshot(trainer) -> dict[str, Any]:
    """An in-memory deep copy of the trainable weights and the training state (not hook states)."""
    return {
        "weights": {n: p.detach().clone() for n, p in _trainable(trainer.model).items()},
        "state": copy.deepcopy(training_state(trainer)),
    }


def restore(trainer, snap: dict[str, Any]) -> None:
    """Put the trainer back exactly where :func:`snapshot` found it (the snapshot stays reusable)."""
    params = _trainable(trainer.model)
    missing = set(params) - set(snap["weights"])
    if missing:
        raise ValueError(f"snapshot lacks trainable parameters: {sorted(missing)[:3]}...")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(snap["weights"][n])
    load_training_state(trainer, copy.deepcopy(snap["state"]))


# ----------------------------------------------------------------------------------------------
# on disk

def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")) + [path]:
        _fsync_dir(p)  # works for files and directories alike


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_weights(model, tokenizer, directory: Path, lora: bool) -> None:
    """``save_pretrained`` the policy (+ tokenizer); under LoRA also the merged model in ``merged/``."""
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar under the training bar
    try:
        _save_weights(model, tokenizer, directory, lora)
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def _save_weights(model, tokenizer, directory: Path, lora: bool) -> None:
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    if lora:
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(directory / "merged")
        if tokenizer is not None:
            tokenizer.save_pretrained(directory / "merged")


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / META_FILE).is_file()]
    return [p for _, p in sorted(found)]


def save(trainer, root: str | Path, keep: int = 0) -> Path:
    """Write a checkpoint of `trainer` atomically under `root`; keep the newest `keep` (0 = all)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{trainer.global_step:06d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_weights(trainer.model, trainer.tokenizer, tmp, trainer.lora)
        state = training_state(trainer)
        state["hooks"] = trainer.hooks.state_dict()
        torch.save(state, tmp / STATE_FILE)
        _publish(tmp, final, {"step": trainer.global_step, "lora": trainer.lora, "format": 1})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep)
    return final


def _publish(tmp: Path, final: Path, meta: dict) -> None:
    """meta.json last, fsync, then rename `tmp` to `final` (replacing a checkpoint of the same step)."""
    (tmp / META_FILE).write_text(json.dumps(meta))
    _fsync_tree(tmp)
    if final.exists():  # re-saving a step (after a rollback): replace it
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        os.rename(final, old)
        shutil.rmtree(old)
    os.rename(tmp, final)
    _fsync_dir(final.parent)


def _prune(root: Path, keep: int) -> None:
    if keep > 0:
        for old in checkpoint_dirs(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def save_sharded(trainer, root: str | Path, keep: int, dist) -> Path:
    """FSDP2: every rank calls this at the same point; returns the step directory (the same on every rank).

    Every rank writes its DCP shards into rank 0's temporary directory; rank 0 writes the HF export (from
    ``trainer.replica``, refreshed here by every rank), ``trainer_state.pt`` (no optimizer: it is in the
    DCP state), and after a barrier (every shard written) meta.json and the atomic rename.
    """
    from gmpo.runs.sharded import save_state

    root = Path(root)
    final = root / f"step_{trainer.global_step:06d}"
    tmp = None
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    tmp = Path(dist.broadcast_object(str(tmp) if tmp else None, what="checkpoint directory"))
    trainer.replica.refresh(trainer.model)  # collective: the export holds exactly the sharded weights
    try:
        save_state(trainer.model, trainer.optimizer, tmp)  # collective: each rank its shards
        if dist.is_main:
            save_weights(trainer.replica.module, trainer.tokenizer, tmp, lora=False)
            state = training_state(trainer)
            del state["optimizer"]  # in dcp/
            state["hooks"] = trainer.hooks.state_dict()
            torch.save(state, tmp / STATE_FILE)
        dist.barrier("checkpoint shards written")
        if dist.is_main:
            _publish(tmp, final, {"step": trainer.global_step, "lora": False, "format": 1, "sharded": "dcp",
                                  "world": dist.world})
    except BaseException:
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dist.is_main:
        _prune(root, keep)
    return final


def find_checkpoint(resume: str, run_dir: Path) -> Path | None:
    """Resolve ``train.resume``: '' -> None, 'auto' -> newest in run_dir (None if none), else a path."""
    if not resume:
        return None
    if resume == "auto":
        found = checkpoint_dirs(Path(run_dir) / "checkpoints")
        return found[-1] if found else None
    p = Path(resume)
    if (p / META_FILE).is_file():
        return p
    found = checkpoint_dirs(p / "checkpoints") or checkpoint_dirs(p)
    if found:
        return found[-1]
    raise FileNotFoundError(f"train.resume={resume!r}: no complete checkpoint there (expected {META_FILE})")


def _read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the ``*.safetensors`` files of a checkpoint directory, by saved name."""
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory}: no *.safetensors weights")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(f))
    return sd


def _load_weights(model, directory: Path, lora: bool) -> None:
    from safetensors.torch import load_file

    if lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(directory / "adapter_model.safetensors"))
        return
    sd = _read_safetensors(directory)
    own = model.state_dict()
    seen: dict[int, str] = {}
    tied = set()
    for k, v in own.items():  # parameters sharing storage (tied embeddings) may be saved once
        if v.data_ptr() in seen:
            tied.add(k)
        seen.setdefault(v.data_ptr(), k)
    if set(sd) <= set(own) and set(own) - set(sd) <= tied:
        model.load_state_dict(sd, strict=False)
        return
    # key names differ (save-time conversion): let transformers map them
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(directory, dtype=next(model.parameters()).dtype)
    model.load_state_dict(loaded.state_dict())


def _full_weights(model, directory: Path) -> dict[str, torch.Tensor]:
    """A plain checkpoint's full weights by parameter name (via from_pretrained when names were converted)."""
    sd = _read_safetensors(directory)
    names = {n for n, _ in model.named_parameters(remove_duplicate=False)} | {n for n, _ in model.named_buffers()}
    if set(sd) <= names:
        return sd
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory).state_dict()


def load(trainer, directory: str | Path, hooks: bool = True) -> None:
    """Load weights, optimizer, scheduler, RNG, data position, counters and (if `hooks`) hook states.

    Either format into either kind of trainer: a sharded (DCP) checkpoint reshards to this run's world size
    and parallel mode (one process included); a plain checkpoint goes into an FSDP2 model by name.
    Sharded model: a collective, every rank calls it at the same point.
    """
    from gmpo.runs import sharded

    directory = Path(directory)
    meta = json.loads((directory / META_FILE).read_text())
    if bool(meta.get("lora")) != bool(trainer.lora):
        raise ValueError(f"{directory}: checkpoint lora={meta.get('lora')} but model.lora.enabled={trainer.lora}")
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)
    if meta.get("sharded") == "dcp":
        sharded.load_state(trainer.model, trainer.optimizer, directory)  # weights + optimizer, resharded
    elif sharded.is_sharded(trainer.model):  # a plain checkpoint into FSDP2
        sharded.load_full(trainer.model, trainer.optimizer, _full_weights(trainer.model, directory),
                          state.pop("optimizer"))
    else:
        _load_weights(trainer.model, directory, trainer.lora)
    load_training_state(trainer, state)
    if hooks:
        trainer.hooks.load_state_dict(state.get("hooks", []))
