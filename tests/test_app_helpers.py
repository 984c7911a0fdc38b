"""The app's UI glue in-process (no server): error mapping, input parsing, page structure, and the
missing-weights message a user sees without ``--tiny``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

gr = pytest.importorskip("gradio")

from vision.imaging import ImageError  # noqa: E402
from vision.ui import errors, examples, form, gpu  # noqa: E402
from vision.weights import WeightsMissingError  # noqa: E402


def test_editor_value_gives_the_image_and_the_painted_mask():
    background = np.full((20, 30, 4), 200, np.uint8)
    layer = np.zeros((20, 30, 4), np.uint8)
    layer[5:10, 10:20, 3] = 255
    image, mask = form.editor_image_and_mask({"background": background, "layers": [layer], "composite": None})
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    assert mask.shape == (20, 30) and mask.sum() == 50 and mask[5:10, 10:20].all()
    _, unpainted = form.editor_image_and_mask({"background": background, "layers": [np.zeros_like(layer)]})
    assert unpainted is None  # nothing painted: the engine finds the region itself
    with pytest.raises(ValueError, match="prompt image"):
        form.editor_image_and_mask({"background": None, "layers": []})


def test_file_and_gallery_values_give_paths():
    assert form.file_path({"path": "/x/a.png", "url": None}) == "/x/a.png"
    assert form.file_path("/x/b.png") == "/x/b.png" and form.file_path(None) is None
    assert form.gallery_paths([("/x/a.png", None), ("/x/b.png", "cap")]) == ["/x/a.png", "/x/b.png"]


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
        errors.friendly_errors(handler)()
    assert caught.value.title.startswith(title)
    assert str(error).splitlines()[0] in caught.value.message and "Traceback" not in caught.value.message
    with pytest.raises(gr.Error, match=str(error).splitlines()[0][:20]):
        list(errors.friendly_errors(generator)())


@pytest.mark.parametrize("error, title", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "Out of memory"),
    (MemoryError(), "Out of memory"),
    (RuntimeError("tensor size mismatch: out of memory budget"), "Internal error"),  # the type decides, not the text
])
def test_out_of_memory_is_told_by_its_type(error, title):
    def handler():
        raise error

    with pytest.raises(gr.Error) as caught:
        errors.friendly_errors(handler)()
    assert caught.value.title == title
    assert ("ran out of memory" in caught.value.message) == (title == "Out of memory")


def test_friendly_errors_keeps_the_signature_gradio_inspects():
    import inspect

    def handler(a, b=2, progress=gr.Progress()):  # noqa: B008 - Gradio's documented form, imitated here
        return a + b

    def generator(a, progress=gr.Progress()):  # noqa: B008 - Gradio's documented form, imitated here
        yield a

    wrapped, wrapped_gen = errors.friendly_errors(handler), errors.friendly_errors(generator)
    assert list(inspect.signature(wrapped).parameters) == ["a", "b", "progress"]
    assert inspect.isgeneratorfunction(wrapped_gen) and not inspect.isgeneratorfunction(wrapped)
    assert wrapped(1) == 3 and list(wrapped_gen(5)) == [5]


def test_gpu_decorator_is_a_no_op_without_spaces():
    def f(x):
        return x

    if gpu.GPU is gpu._no_gpu:
        assert gpu.GPU(f) is f and gpu.GPU(duration=10)(f) is f


def test_page_has_every_engine_endpoint_in_one_gpu_queue_group(tiny_hub):
    from vision.ui import layout

    demo = layout.build_demo(concurrency=1)
    fns = {fn.api_name: fn for fn in demo.fns.values()}
    for name in ("ipseg", "trident", "generate", "generate_compare", "story"):
        assert fns[name].concurrency_id == layout.GPU_GROUP and fns[name].concurrency_limit == 1
    assert demo._queue.max_size == layout.QUEUE_MAX


def test_missing_weights_are_a_message_naming_the_download_command(monkeypatch, tmp_path):
    from vision import weights
    from vision.hub import ModelHub, get_hub, set_hub
    from vision.ui import trident_tab

    monkeypatch.setenv("VISION_OFFLINE", "1")
    monkeypatch.setenv("VISION_WEIGHTS_DIR", str(tmp_path))  # an empty weights folder
    monkeypatch.setattr(weights, "_hf_cache_dir", lambda spec: None)  # and nothing in the HF cache
    previous = get_hub()
    set_hub(ModelHub(tiny=False, device="cpu"))
    trident_tab._trident_engine.cache_clear()
    try:
        image = examples.sample_paths(("chelsea",))["chelsea"]
        with pytest.raises(gr.Error) as caught:
            trident_tab.run_trident(image, "cat; background", "open", 0.0, True, "clip_b16")
        assert caught.value.title == "Model weights missing or damaged"
        # every missing model of the request at once, with one command that downloads them (#20.5)
        message = caught.value.message
        assert "clip_b16" in message and "python -m vision weights download --for trident" in message
    finally:
        trident_tab._trident_engine.cache_clear()
        set_hub(previous)


def test_tabs_say_which_models_are_missing_before_a_run(monkeypatch, tmp_path):
    """#20.5: the page names each tab's missing models and the download size before anything runs; a run
    then names every missing model at once."""
    from vision import weights
    from vision.hub import ModelHub, get_hub, set_hub
    from vision.ui import layout, story_tab

    monkeypatch.setenv("VISION_OFFLINE", "1")
    monkeypatch.setenv("VISION_WEIGHTS_DIR", str(tmp_path))  # an empty weights folder
    monkeypatch.setattr(weights, "_hf_cache_dir", lambda spec: None)  # and nothing in the HF cache
    previous = get_hub()
    set_hub(ModelHub(tiny=False, device="cpu"))
    try:
        demo = layout.build_demo()
        notes = {block.elem_id: block.value for block in demo.blocks.values()
                 if (block.elem_id or "").endswith("-missing")}
        assert set(notes) == {f"{e}-missing" for e in ("ipseg", "segment", "trident", "generate", "story")}
        story_note = notes["story-missing"]
        for name in weights.models_for("story"):
            assert name in story_note and f"{weights.spec(name).size_mb} MB" in story_note
        assert "weights download --for story" in story_note and "--tiny" in story_note
        with pytest.raises(gr.Error) as caught:
            list(story_tab.run_story("a fox", "sd15", "comic", 0, 0, 1, False, 3))
        assert all(name in caught.value.message for name in weights.models_for("story"))
    finally:
        set_hub(previous)


@pytest.mark.parametrize("make, value", [
    (lambda: gr.Image(format="png"), np.full((16, 16, 3), 200, np.uint8)),
    (lambda: gr.Gallery(format="png"), [(np.full((16, 16, 3), 200, np.uint8), "a caption")]),
    (lambda: gr.AnnotatedImage(format="png"), (np.full((16, 16, 3), 200, np.uint8), [(np.eye(16, dtype=bool), "x")])),
    (lambda: gr.ImageSlider(format="png"), (np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 9, np.uint8))),
])
def test_identical_outputs_of_two_requests_are_two_files_written_once(make, value, tmp_path, monkeypatch):
    """Gradio's cache rewrites an image in place when a second request has the same output (a client
    downloading it got 0 bytes); ``written_once`` gives each request its own folder, served in place."""
    from gradio import processing_utils
    from gradio_client import utils as client_utils

    from vision.ui import storage

    monkeypatch.setattr(storage, "OUTPUT_DIR", tmp_path / "outputs")
    component = storage.written_once(make())
    component.GRADIO_CACHE = str(tmp_path / "gradio-cache")

    def files(data) -> list[str]:
        found = []
        client_utils.traverse(data.model_dump(), lambda d: found.append(d["path"]) or d, client_utils.is_file_obj)
        return found

    first = files(component.postprocess(value))
    for path in first:
        os.utime(path, (0, 0))  # a rewrite would move the modification time to now
    second = files(component.postprocess(value))
    assert first and len(first) == len(second) and not set(first) & set(second)
    for path in first + second:
        assert Path(path).is_relative_to(tmp_path / "outputs") and os.path.getsize(path) > 0
    assert all(os.stat(path).st_mtime == 0 for path in first)  # the first request's files are left alone
    assert not (tmp_path / "gradio-cache").exists()  # nothing went through Gradio's shared cache
    assert processing_utils.save_pil_to_cache.__module__ == "gradio.processing_utils"  # Gradio's own, unpatched


def test_tabs_import_no_other_tab():
    """A tab reaches what several tabs share (the Segment engine of a SAM, inputs, outputs) through a
    vision.ui module of its own, never through another tab's module."""
    import ast

    folder = Path(__file__).resolve().parent.parent / "vision" / "ui"
    for tab in folder.glob("*_tab.py"):
        for node in ast.walk(ast.parse(tab.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.endswith("_tab"), f"{tab.name} imports {node.module}"
