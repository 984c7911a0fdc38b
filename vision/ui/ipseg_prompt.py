"""The IPSeg tab's prompt image: the editor's value at page load, the click view (filled with each new
prompt: at load, from an Examples row, from an upload) and the clicks made on it."""

from __future__ import annotations

import functools

import gradio as gr

from vision.ui import errors, form
from vision.ui.uploads import checked_prompt_upload

CLICK_LABELS = {"foreground (on the concept)": 1, "background (not the concept)": 0}


def check_clicks_on(image, shown_key: str | None, what: str) -> None:
    """Refuse clicks made on a click view that showed another image than the prompt now in the editor
    (``shown_key``: the :func:`~vision.common.content_key` of the image shown; None: no view, as
    over the API, where the clicks are the caller's own)."""
    from vision.common import content_key

    if shown_key is not None and content_key(image) != shown_key:
        raise ValueError(f"{what}: the prompt image changed since it was shown for clicking; press 'Show the "
                         "prompt here' and click again (or clear the clicks)")


def add_prompt_click(clicks_text: str, kind: str, evt: gr.SelectData) -> str:
    """A click on the click view (pixel coordinates of the prompt image) -> the clicks text."""
    x, y = (int(v) for v in evt.index[:2])
    return form.append_point(clicks_text, x, y, CLICK_LABELS.get(kind, 1))


@errors.friendly_errors
def show_prompt_for_clicks(prompt_value):
    """The editor's prompt image -> the click view (the plain image), no clicks, no note, and the key of
    the image shown (clicks are checked against it: the editor may have changed since)."""
    from vision.common import content_key

    image, _ = form.editor_image_and_mask(prompt_value)
    return image, "", "", content_key(image)


def prompt_view(path: str | None):
    """A prompt image file going into the editor -> the click view's image, clicks, note and key, as
    :func:`show_prompt_for_clicks` gives them; read from the file (the editor's value lags behind it)."""
    return show_prompt_for_clicks({"background": path}) if path else (None, "", "", None)


def editor_start(path: str) -> dict:
    """The prompt editor's value at page load: ``path`` as its composite only, with no background.

    Gradio 6.17's editor switches to the draw tool whenever its background changes, and at page load that
    ran before its resize tool was set up: a page error "Cannot read properties of undefined (reading
    'background_image')" at every load (upstream gradio-app/gradio#12021). Given only a composite, the
    editor loads it as the image in the same way, and the switch waits for the first new background (an
    Examples row, an upload), by then set up. The editor sends the image back as its background."""
    return {"background": None, "layers": [], "composite": path}


def examples_and_upload(c: dict, samples: dict) -> None:
    """The Examples rows and the prompt's upload; both fill the click view at once with the new prompt, as
    the page's load does with the first (on load: over the API no view was shown, clicks are unchecked)."""
    rows = [[samples["astronaut"], [samples["astronaut"], samples["rocket"]], ""],
            [samples["coffee"], [samples["coffee"], samples["chelsea"]], ""],
            [samples["chelsea"], [samples["chelsea"], samples["coffee"]], "60, 20, 390, 300"]]
    example_table = gr.Examples(rows, inputs=[c["prompt"], c["targets"], c["box"]],
                                label="Examples (skimage.data photographs; then click Segment)")
    view = [c[k] for k in ("click_view", "clicks", "click_note", "shown_key")]
    gr.on(None, functools.partial(prompt_view, samples["chelsea"]), None, view, queue=False, api_visibility="private")
    c["prompt_upload"].upload(_upload_prompt, c["prompt_upload"], [c["prompt"], c["prompt_status"], *view],
                              queue=False, api_visibility="undocumented")
    example_table.dataset.click(lambda picked: prompt_view(rows[picked[0]][0]), example_table.dataset, view,
                                queue=False, api_visibility="private")


def _upload_prompt(path: str | None):
    """An upload -> the editor and its status (:func:`checked_prompt_upload`), and the click view."""
    value, status = checked_prompt_upload(path)
    return (editor_start(value) if value else None), status, *prompt_view(value)
