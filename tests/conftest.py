"""Test-wide settings: offline Hub, deterministic seeds, the CPU thread count CI has."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny test models gain nothing from threads, and 2 threads next to other jobs were ~10x slower than 1.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
