"""The app's UI glue in-process (no server): error mapping, input parsing, page structure, and the
missing-weights message a user sees without ``--tiny``."""

from __future__ import annotations

import os

import numpy as np
import pytest

gr = pytest.importorskip("gradio")

from vision.ui import helpers as ui  # noqa: E402
from vision.imaging import ImageError  # noqa: E402
from vision.weights import WeightsMissingError  # noqa: E402


def test_editor_value_gives_the_image_and_the_painted_mask():
    background = np.full((20, 30, 4), 200, np.uint8)
    layer = np.zeros((20, 30, 4), np.uint8)
    layer[5:10, 10:20, 3] = 255
    image, mask = ui.editor_image_and_mask({"background": background, "layers": [layer], "composite": None})
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    assert mask.shape == (20, 30) and mask.sum() == 50 and mask[5:10, 10:20].all()
    _, unpainted = ui.editor_image_and_mask({"background": background, "layers": [np.zeros_like(layer)]})
    assert unpainted is None  # nothing painted: the engine finds the region itself
    with pytest.raises(ValueError, match="prompt image"):
        ui.editor_image_and_mask({"background": None, "layers": []})


def test_file_and_gallery_values_give_paths():
    assert ui.file_path({"path": "/x/a.png", "url": None}) == "/x/a.png"
    assert ui.file_path("/x/b.png") == "/x/b.png" and ui.file_path(None) is None
    assert ui.gallery_paths([("/x/a.png", None), ("/x/b.png", "cap")]) == ["/x/a.png", "/x/b.png"]


@pytest.mark.parametrize("error, title", [
    (WeightsMissingError("Weights for 'sam_b' are missing.\n  Download them with: ..."), "Model weights"),
    (ImageError("a.png: not an image file"), "Bad image"),
    (ValueError("no class names given"), "Invalid input"),
    (RuntimeError("kaboom"), "Internal error"),
])
def test_errors_become_messages_not_tracebacks(error, title):
    def handler():
        raise error

    def generator():
        yield 1
        raise error

    with pytest.raises(gr.Error) as caught:
        ui.friendly_errors(handler)()
    assert caught.value.title.startswith(title)
    assert str(error).splitlines()[0] in caught.value.message and "Traceback" not in caught.value.message
    with pytest.raises(gr.Error, match=str(error).splitlines()[0][:20]):
        list(ui.friendly_errors(generator)())


def test_friendly_errors_keeps_the_signature_gradio_inspects():
    import inspect

    def handler(a, b=2, progress=gr.Progress()):
        return a + b

    def generator(a, progress=gr.Progress()):
        yield a

    wrapped, wrapped_gen = ui.friendly_errors(handler), ui.friendly_errors(generator)
    assert list(inspect.signature(wrapped).parameters) == ["a", "b", "progress"]
    assert inspect.isgeneratorfunction(wrapped_gen) and not inspect.isgeneratorfunction(wrapped)
    assert wrapped(1) == 3 and list(wrapped_gen(5)) == [5]


def test_gpu_decorator_is_a_no_op_without_spaces():
    def f(x):
        return x

    if ui.GPU is ui._no_gpu:
        assert ui.GPU(f) is f and ui.GPU(duration=10)(f) is f


def test_page_has_every_engine_endpoint_in_one_gpu_queue_group(tiny_hub):
    from vision.ui import layout

    demo = layout.build_demo(concurrency=1)
    fns = {fn.api_name: fn for fn in demo.fns.values()}
    for name in ("ipseg", "trident", "generate", "generate_compare", "story"):
        assert fns[name].concurrency_id == layout.GPU_GROUP and fns[name].concurrency_limit == 1
    assert demo._queue.max_size == layout.QUEUE_MAX


def test_missing_weights_are_a_message_naming_the_download_command(monkeypatch, tmp_path):
    from vision import weights
    from vision.ui import trident_tab
    from vision.hub import ModelHub, get_hub, set_hub

    monkeypatch.setenv("VISION_OFFLINE", "1")
    monkeypatch.setenv("VISION_WEIGHTS_DIR", str(tmp_path))  # an empty weights folder
    monkeypatch.setattr(weights, "_hf_cache_dir", lambda spec: None)  # and nothing in the HF cache
    previous = get_hub()
    set_hub(ModelHub(tiny=False, device="cpu"))
    trident_tab._trident_engine.cache_clear()
    try:
        image = ui.sample_paths(("chelsea",))["chelsea"]
        with pytest.raises(gr.Error) as caught:
            trident_tab.run_trident(image, "cat; background", "open", 0.0, True, "clip_b16")
        assert caught.value.title == "Model weights missing or damaged"
        assert "python -m vision weights download clip_b16" in caught.value.message
    finally:
        trident_tab._trident_engine.cache_clear()
        set_hub(previous)


def test_gradio_image_cache_writes_each_file_once(tmp_path):
    """Identical outputs of two requests must not rewrite the cached file a client may be downloading."""
    from gradio import processing_utils
    from PIL import Image

    ui.make_gradio_cache_atomic()
    image = Image.fromarray(np.full((16, 16, 3), 200, np.uint8))
    first = processing_utils.save_img_array_to_cache(np.asarray(image), str(tmp_path))
    os.utime(first, (0, 0))  # any rewrite would move the modification time to now
    second = processing_utils.save_pil_to_cache(image, str(tmp_path), format="webp")
    assert second == first and os.path.getsize(first) > 0
    assert os.stat(second).st_mtime == 0  # left alone, not truncated and rewritten
    assert Image.open(second).size == (16, 16)
    assert not list(tmp_path.rglob("*.tmp"))


def test_gradio_file_cache_copies_each_file_once(tmp_path):
    from gradio import processing_utils

    ui.make_gradio_cache_atomic()
    source = tmp_path / "mask.png"
    source.write_bytes(b"\x89PNG not really, but bytes")
    cache = tmp_path / "cache"
    first = processing_utils.save_file_to_cache(source, str(cache))
    os.utime(first, (0, 0))
    assert processing_utils.save_file_to_cache(source, str(cache)) == first
    assert os.stat(first).st_mtime == 0 and open(first, "rb").read() == source.read_bytes()
    assert not list(cache.rglob("*.tmp"))
