"""Shared fixtures: a tiny offline tokenizer/model, the shared data directory, GPU/slow markers."""
import os
from pathlib import Path

import pytest
import torch

from gmpo.testing import save_tiny, tiny_model, tiny_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_slow = pytest.mark.skip(reason="slow: set GMPO_SLOW=1 to run")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and os.environ.get("GMPO_SLOW") != "1":
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tok():
    return tiny_tokenizer()


@pytest.fixture
def model(tok):
    return tiny_model(tok, seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture
def one_thread():
    """Tiny models run ~10x faster on one thread on this shared 2-core machine; the count is restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
