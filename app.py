"""Training-free vision in one page: IPSeg, Trident, Stable Diffusion + DeepCache, Story-Adapter.

The Gradio app and the Hugging Face Space entry point. It holds no engine logic: the page is built by
:mod:`vision.ui` (one module per tab), and every tab calls its engine's pipeline (``vision.engines.*``)
and shows the fields of the result.

    python app.py [--tiny] [--host HOST] [--port PORT] [--share] [--device DEVICE] [--concurrency N]

Every engine's run event has an API name (``/ipseg``, ``/trident``, ``/generate``, ``/story``) so
``gradio_client`` can call it. All engine events share one queue slot group (``concurrency_id="gpu"``)
whose size (``--concurrency``, default 1) protects the GPU; other requests wait in the queue.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from vision.hub import ModelHub, get_hub, set_hub, tiny_requested  # noqa: E402
from vision.tiny import TINY_NOTICE  # noqa: E402
from vision.ui import memory  # noqa: E402
from vision.ui.layout import CSS, build_demo  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="tiny random-weight models: outputs are noise (for trying/testing the app)")
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1, or "
                        "GRADIO_SERVER_NAME; use 0.0.0.0 to serve the network)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860 or GRADIO_SERVER_PORT)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: best available)")
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("VISION_CONCURRENCY", 1)),
                        help="engine requests run at once (the rest queue); default 1 protects the GPU")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    memory.limit_malloc_arenas()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.tiny:
        os.environ["VISION_TINY"] = "1"
    if args.tiny or args.device:
        set_hub(ModelHub(tiny=args.tiny or tiny_requested(), device=args.device))
    if get_hub().tiny:
        print(TINY_NOTICE, file=sys.stderr)
    demo = build_demo(concurrency=max(1, args.concurrency))
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True,
                ssr_mode=False, css=CSS)


if __name__ == "__main__":
    main()
