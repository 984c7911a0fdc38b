import os

import pytest

os.environ.setdefault("VISION_OFFLINE", "1")  # tests never download weights


@pytest.fixture(scope="session")
def tiny_hub():
    """One shared tiny hub for the whole session (tiny models are built once)."""
    from vision.hub import ModelHub, set_hub

    return set_hub(ModelHub(tiny=True, device="cpu"))
