import os
import random
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# tests never download: "--depth-model auto" (the default) uses the HF cache or falls back to the plane
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:
        pass
    yield


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout (RealEstate10K clips, papers). Skips where it is absent."""
    path = Path(os.environ.get("FLOWCTRL_SHARED", REPO.parent / "shared"))
    if not (path / "data").is_dir():
        pytest.skip(f"shared data folder not found at {path}")
    return path


@pytest.fixture
def one_torch_thread():
    """Tiny models run several times faster with one torch thread than with two on a shared 2-core box
    (thread start-up and contention dominate). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
