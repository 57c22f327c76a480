"""The registry's file store: which files a model version keeps, copying them durably, hashing them.

Used by :mod:`gmpo.runs.model_registry`; nothing here touches the database.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

_SKIP_FILES = {"trainer_state.pt", "meta.json", "optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"}


class StoreError(ValueError):
    """A directory cannot be registered (not a complete model); the message says why."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_digest(files: dict[str, list]) -> str:
    """The version's sha256: of its one safetensors file, or of ``"name sha\\n"`` lines when sharded."""
    st = sorted((n, v[1]) for n, v in files.items() if n.endswith(".safetensors"))
    if len(st) == 1:
        return st[0][1]
    return hashlib.sha256("".join(f"{n} {s}\n" for n, s in st).encode()).hexdigest()


def model_files(src: Path) -> list[Path]:
    """The files of a model directory a version keeps (weights, configs, tokenizer; no trainer state).

    Raises RegistryError unless it is a complete Hugging Face model with safetensors weights; a gmpo
    checkpoint must carry its ``meta.json`` (written last), and a LoRA checkpoint is taken from ``merged/``.
    """
    if not src.is_dir():
        raise StoreError(f"{src}: not a directory (register a model directory written by save_pretrained)")
    if (src / "adapter_model.safetensors").is_file():
        if not (src / "merged" / "config.json").is_file():
            raise StoreError(f"{src}: a LoRA adapter without merged/; register a merged model directory")
        return model_files(src / "merged")
    if src.name.startswith("step_") and (src.parent.name == "checkpoints") and not (src / "meta.json").is_file():
        raise StoreError(f"{src}: checkpoint without meta.json: incomplete (still being written or crashed)")
    if not (src / "config.json").is_file():
        raise StoreError(f"{src}: no config.json, not a Hugging Face model directory")
    files = sorted(p for p in src.iterdir() if p.is_file() and p.name not in _SKIP_FILES and not p.name.startswith("."))
    if not any(p.suffix == ".safetensors" for p in files):
        raise StoreError(f"{src}: no *.safetensors weights (save with save_pretrained(safe_serialization=True))")
    return files


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory: so a rename in it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` via a fsynced temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def copy_verified(files: list[Path], tmp: Path) -> dict[str, list]:
    """Copy `files` into `tmp`, fsync, hash; raise if a safetensors copy differs from its source. Returns the
    manifest {file name: [bytes, sha256 (safetensors only, else None)]}."""
    manifest: dict[str, list] = {}
    for f in files:
        shutil.copyfile(f, tmp / f.name)
        fsync_path(tmp / f.name)
        digest = sha256_file(tmp / f.name) if f.suffix == ".safetensors" else None
        if digest is not None and digest != sha256_file(f):
            raise StoreError(f"{f} changed while it was being copied (sha256 mismatch): retry once it is final")
        manifest[f.name] = [(tmp / f.name).stat().st_size, digest]
    fsync_path(tmp)
    return manifest
