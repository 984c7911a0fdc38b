import os

import pytest
import torch

os.environ.setdefault("VISION_OFFLINE", "1")  # tests never download weights


@pytest.fixture(scope="session")
def tiny_hub():
    """One shared tiny hub for the whole session (tiny models are built once)."""
    from vision.hub import ModelHub, set_hub

    return set_hub(ModelHub(tiny=True, device="cpu"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads; one thread avoids oversubscribing shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
