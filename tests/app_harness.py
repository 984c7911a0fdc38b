"""The app's test harness: a tiny app server in a subprocess, gradio_client values, and Chromium.

Fixtures built on it live in ``conftest.py`` (``server``, ``client``, ``photos``, ``browser``, ``page``):
one tiny server and one browser for the whole session, a fresh page per test (so every test also sees
the page as it first opens).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gradio_client import handle_file
from PIL import Image

# ------------------------------------------------------------------------------------- the server
ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, *extra: str, tiny: bool = True) -> Server:
    """Launch the app (tiny unless ``tiny=False``) with its own Gradio cache under ``folder``; return once
    it answers."""
    port = free_port()
    env = dict(os.environ, VISION_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1",
               GRADIO_TEMP_DIR=str(folder / "gradio-cache"), VISION_DEVICE=os.environ.get("VISION_DEVICE", "cpu"))
    log = folder / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), *(["--tiny"] if tiny else []),
                                    "--port", str(port), *extra],
                                   cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}/", process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"app.py exited with {process.returncode}:\n{server.log_text()[-4000:]}")
        try:
            with urllib.request.urlopen(server.url + "gradio_api/info", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"app.py did not answer within {START_TIMEOUT_S} s:\n{server.log_text()[-4000:]}")


def stop_server(server: Server) -> None:
    if server.alive():
        server.process.terminate()
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=15)


def png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def editor(path: str, layer: str | None = None) -> dict:
    """An ImageEditor value as the browser sends it: the background, painted layers, the composite."""
    return {"background": handle_file(path), "layers": [handle_file(layer)] if layer else [],
            "composite": handle_file(path), "id": None}


def gallery(*paths: str) -> list[dict]:
    return [{"image": handle_file(p), "caption": None} for p in paths]


# ----------------------------------------------------------------------------------------- browser
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
BROWSER_TIMEOUT_MS = 90_000  # tiny models on 2 shared CPU cores: seconds per action


def open_page(browser, url: str, page_errors: list[str] | None = None):
    """A new page on ``url``, once the IPSeg prompt editor is up; every uncaught page error goes into
    ``page_errors`` (message and stack) from before the page loads."""
    from playwright.sync_api import expect

    tab = browser.new_page(viewport={"width": 1400, "height": 1000})
    if page_errors is not None:
        tab.on("pageerror", lambda error: page_errors.append(f"{error.message}\n{error.stack}"))
    tab.set_default_timeout(BROWSER_TIMEOUT_MS)
    expect.set_options(timeout=BROWSER_TIMEOUT_MS)
    tab.goto(url)
    # The first tab's image editor (a WebGL canvas, software-rendered here) keeps the page busy while it
    # starts; a click on another tab meanwhile waited past the timeout. Start once it is up.
    expect(tab.locator("#ipseg-prompt canvas").first).to_be_visible()
    return tab


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click(no_wait_after=True)


def click(page, selector: str) -> None:
    # no_wait_after: the image editor's canvas export keeps the page busy; results are awaited by the test.
    page.locator(selector).click(no_wait_after=True)


def click_image_pixel(page, selector: str, x: float, y: float) -> None:
    """Click the displayed image at pixel (x, y) of the image itself (the page scales it to fit)."""
    img = page.locator(selector)
    img.scroll_into_view_if_needed()  # mouse clicks take viewport coordinates
    geometry = img.evaluate("e => {const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height, "
                            "e.naturalWidth, e.naturalHeight]}")
    left, top, width, height, natural_w, natural_h = geometry
    scale = min(width / natural_w, height / natural_h)  # object-fit: contain
    off_x, off_y = (width - natural_w * scale) / 2, (height - natural_h * scale) / 2
    page.mouse.click(left + off_x + (x + 0.5) * scale, top + off_y + (y + 0.5) * scale)


def shot(page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path
