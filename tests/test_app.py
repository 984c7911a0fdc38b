"""The Gradio app's shared error handling, in tiny mode, on the session's tiny server (``conftest.server``):
a bad image and an empty label list give a readable message, no traceback in the log, and the next good
request works.

Each tab's own API and browser tests: ``test_app_ipseg.py``, ``test_app_segment.py``,
``test_app_trident.py``, ``test_app_generate.py``, ``test_app_story.py``, ``test_app_models.py``; the
20-concurrent-requests load test: ``test_app_load.py``.
"""

from __future__ import annotations

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError


def _trident(client, image, classes="cat|kitten; grass; background|wall", preset="open", prob=0.0, refine=True):
    return client.predict(handle_file(image), classes, preset, prob, refine, "clip_b16", api_name="/trident")


# ------------------------------------------------------------------------------------------ errors
def _tracebacks(server) -> int:
    return server.log_text().count("Traceback")


def test_bad_image_is_a_readable_error_and_the_next_request_works(client, server, photos, tmp_path):
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"this is not a PNG")
    before = _tracebacks(server)
    with pytest.raises(AppError, match="holiday.png: not an image file"):
        _trident(client, str(bad))
    assert _tracebacks(server) == before  # a user's mistake is a message, not a stack trace in the log
    annotated, *_ = _trident(client, photos["chelsea"])
    assert annotated["annotations"]
    assert server.alive()


def test_empty_label_list_is_a_readable_error_and_the_next_request_works(client, server, photos):
    with pytest.raises(AppError, match="no class names given"):
        _trident(client, photos["chelsea"], classes="  \n \n")
    with pytest.raises(AppError, match="at least two classes"):
        _trident(client, photos["chelsea"], classes="cat")
    annotated, *_ = _trident(client, photos["chelsea"])
    assert annotated["annotations"]
    assert server.alive()
