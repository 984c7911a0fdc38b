"""The Video tab: follow an object through an uploaded video from an exemplar image or a click on a frame.

Everything the run makes comes from one resumable run of :func:`vision.batch.video.run_video` into a
fresh output folder: the overlay video (H.264 mp4, played by the page's video element), the per-frame
masks (a frame slider shows any frame with its mask), the per-frame score plotted over time, and the
downloads (overlay, masks as a zip, results.jsonl, COCO RLE). API ``/video``, with progress per frame.
"""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path

import gradio as gr

from vision.hub import ModelHub, get_hub
from vision.ui import errors, form, gpu, notices, runs, storage, uploads
from vision.ui.notices import tiny_prefix

PROMPT_KINDS = ["exemplar image", "clicks on a frame"]
HOW_TO_READ = ("**How to read this:** the overlay video tints the object in every processed frame (one colour "
               "per instance id); the number in its corner and the plot are the frame's score: with the exemplar "
               "track the concept's presence (a cosine similarity: compare frames, a dip is a frame where the "
               "object looks least like the exemplar), with SAM 2 its object score (0..1, above 0.5: visible). "
               "Move the slider to see any frame with its mask.")


@functools.lru_cache(maxsize=4)
def _video_engine(config):
    """One engine per settings (its image engine keeps the exemplar's features across requests)."""
    from vision.engines.video import VideoEngine

    return VideoEngine(config, hub=get_hub())


def video_config(preset: str, track: str, method: str, features: str, sam_model: str, every: float,
                 max_frames: float, prior: bool):
    """The run's :class:`VideoConfig`: the preset, then the tab's choices ("preset" keeps the preset's)."""
    from vision.engines.video import VideoConfig

    chosen = {"track": track, "method": method, "features": features, "sam_model": sam_model}
    changes = {k: v for k, v in chosen.items() if v and v != "preset"}
    return VideoConfig.from_preset(preset, every=int(every), max_frames=int(max_frames) if max_frames else None,
                                   prior=bool(prior), **changes).validate()


def video_prompt(kind: str, exemplar, exemplar_mask, exemplar_box: str, clicks: str, frame: float):
    """The tab's prompt -> :class:`VideoPrompt`: the exemplar image with its mask, box or automatic region,
    or clicks (``"x, y, label; ..."``) on frame ``frame`` of the video."""
    from vision.engines.ipseg import Concept, Prompt
    from vision.engines.video import VideoPrompt

    if kind == "clicks on a frame":
        points = form.require(form.parse_numbers(clicks, 3, "clicks"),
                              "a click on the object (show a frame, click on it)")
        return VideoPrompt(points=[p[:2] for p in points], labels=[int(p[2]) for p in points], frame=int(frame))
    image = form.require(form.file_path(exemplar), "an exemplar image of the object")
    box = form.parse_box(exemplar_box, "exemplar box")
    mask = form.file_path(exemplar_mask)
    if mask is not None and box is not None:
        raise ValueError("exemplar: give a mask or a box, not both (clear one)")
    name = storage.safe_name(Path(image).stem, "object")
    return VideoPrompt(exemplar=Concept([Prompt(image, mask=mask, box=box)], name), frame=int(frame))


@gpu.GPU(duration=600)
def _track(config, video_path: str, prompt, folder: str, on_progress=None):
    from vision.batch.video import run_video

    notes: list[str] = []
    summary = run_video(_video_engine(config), video_path, prompt, folder, coco_json="coco.json",
                        progress=on_progress, log=notes.append)
    return summary, notes


@errors.friendly_errors
def run_video_tab(video, kind, exemplar, exemplar_mask, exemplar_box, clicks, frame, preset="default",
                  track="preset", method="preset", features="preset", sam_model="preset", every=1, max_frames=0,
                  prior=True, progress=gr.Progress(), request: gr.Request = None):  # noqa: B008 -- Gradio injects it
    """Track the object through the uploaded video; returns the overlay video, the score plot data, the
    first frame with its mask, the slider, the downloads, the summary and the run's folder (state)."""
    run = runs.Run(request, "video")
    run.check()  # a request whose client left while it was queued does nothing (it stops between frames too)
    video_path = form.require(form.file_path(video), "a video (mp4, webm, mov, gif)")
    config = video_config(preset, track, method, features, sam_model, every, max_frames, prior)
    prompt = video_prompt(kind, exemplar, exemplar_mask, exemplar_box, clicks, frame)
    folder = storage.output_folder()
    progress(0.0, desc=f"reading {Path(video_path).name}")
    try:
        summary, notes = _track(config, video_path, prompt, str(folder), run.progress(progress))
    except ValueError as err:  # name the upload as the user knows it, not Gradio's temporary copy
        raise type(err)(uploads.name_uploads(str(err), [video_path, form.file_path(exemplar) or ""])) from None
    rows = _rows(folder)
    if not any(r.get("status") == "ok" for r in rows):
        reasons = [f"{r['id']}: {r.get('reason')}" for r in rows[:5]]
        raise ValueError("no frame could be processed:\n" + "\n".join(reasons))
    failed = [f"{r['id']}: {uploads.name_uploads(r.get('reason', ''), [video_path])}" for r in rows
              if r.get("status") != "ok"]
    if failed:
        notices.warn(f"{len(failed)} frame(s) failed:\n" + "\n".join(failed[:5]))
    text = _summary(config, rows, summary, notes, failed)
    slider = gr.Slider(0, max(len(rows) - 1, 1), value=0, step=1,
                       label=f"Frame (position among the {len(rows)} processed)")
    return (str(folder / "overlay.mp4"), score_table(rows), frame_view(str(folder), video_path, 0), slider,
            _downloads(folder), text, [str(folder), video_path])


def _rows(folder: Path) -> list[dict]:
    from vision.batch.writer import read_jsonl

    rows, _ = read_jsonl(folder / "results.jsonl")
    return sorted(rows, key=lambda r: r["id"])


def score_table(rows: list[dict]):
    """The plot's data: one (frame index, score) row per frame that has a score."""
    import pandas as pd

    return pd.DataFrame([(int(r["id"]), r["score"]) for r in rows if r.get("score") is not None],
                        columns=["frame", "score"])


def _summary(config, rows: list[dict], summary, notes: list[str], failed: list[str]) -> str:
    described = config.describe()
    ok = [r for r in rows if r.get("status") == "ok"]
    present = sum(bool(r.get("present")) for r in ok)
    how = (f"SAM 2.1 `{config.sam2_model}` propagating the prompt frame" if config.track == "sam2" else
           f"every frame from the exemplar (temporal prior: {described['prior']})")
    return (f"{tiny_prefix(get_hub())}{len(rows)} frame(s) (every {config.every}), preset **{config.preset}**, "
            f"track **{config.track}**: {how}; method **{config.method}**, features **{described['features']}**, "
            f"SAM `{described['sam_model']}`. Object present in {present} of {len(ok)} frame(s); "
            f"{summary.seconds:.1f} s."
            + (f"\n\n**{len(failed)} frame(s) failed:** " + "; ".join(failed[:5]) if failed else "")
            + "".join(f"\n\n{n}" for n in notes if n.startswith("video: ") and "truncated" in n)
            + f"\n\n{HOW_TO_READ}")


def _downloads(folder: Path) -> list[str]:
    masks = folder / "masks.zip"
    with zipfile.ZipFile(masks, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.glob("*.png")):
            archive.write(path, path.name)
    return [str(p) for p in (folder / "overlay.mp4", masks, folder / "results.jsonl", folder / "coco.json")
            if p.is_file()]


def frame_view(folder: str, video_path: str, position: float):
    """The ``position``-th processed frame (0-based) with its saved masks, RGB uint8 [H, W, 3]."""
    from vision.batch.video import saved_instance_masks
    from vision.engines.video import overlay_frame
    from vision.videoio import probe, read_frame

    rows = _rows(Path(folder))
    row = rows[min(max(int(position), 0), len(rows) - 1)]
    info = probe(video_path)
    image = read_frame(info, int(row["id"]))
    error = row.get("reason") if row.get("status") != "ok" else None
    return overlay_frame(image, saved_instance_masks(Path(folder), row), row.get("score"), bool(row.get("tiny")), error)


@errors.friendly_errors
def show_frame(state: list | None, position: float):
    """The slider moved: that frame with its mask (nothing before a run)."""
    if not state:
        return None
    return frame_view(state[0], state[1], position)


@errors.friendly_errors
def show_prompt_frame(video, frame: float):
    """The frame to click on (its index in the video), with no clicks yet."""
    from vision.videoio import probe, read_frame

    path = form.require(form.file_path(video), "a video (mp4, webm, mov, gif)")
    try:
        return read_frame(probe(path), int(frame)), ""
    except ValueError as err:
        raise type(err)(uploads.name_uploads(str(err), [path])) from None


def add_click(clicks: str, kind: str, evt: gr.SelectData) -> str:
    x, y = (int(v) for v in evt.index[:2])
    return form.append_point(clicks, x, y, 0 if kind.startswith("background") else 1)


def video_tab(hub: ModelHub, limits: dict) -> None:
    from vision.engines.ipseg.config import FEATURES, METHODS, SAM_MODELS
    from vision.engines.video.config import PRESETS, TRACKS

    with gr.Tab("Video", id="video"):
        gr.Markdown("**Video**: follow an object through a video. Give an exemplar image of it (with its mask or "
                    "box, or none for its automatic foreground), or click on it in a frame. The *exemplar* track "
                    "finds it in every frame; *SAM 2* propagates the first frame's mask.")
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Video (mp4, webm, mov, gif)", sources=["upload"], elem_id="video-input")
                kind = gr.Radio(PROMPT_KINDS, value=PROMPT_KINDS[0], label="Prompt", elem_id="video-prompt-kind")
                with gr.Row():
                    exemplar = gr.Image(label="Exemplar image", type="filepath", sources=["upload", "clipboard"],
                                        elem_id="video-exemplar", height=200)
                    exemplar_mask = gr.Image(label="Exemplar mask (optional)", type="filepath", sources=["upload"],
                                             elem_id="video-exemplar-mask", height=200)
                exemplar_box = gr.Textbox("", label="Exemplar box: x0, y0, x1, y1 (instead of a mask)",
                                          elem_id="video-exemplar-box")
                with gr.Accordion("Click on a frame (for the 'clicks on a frame' prompt)", open=False):
                    frame = gr.Number(0, label="Frame index", precision=0, minimum=0, elem_id="video-frame")
                    show = gr.Button("Show this frame", elem_id="video-frame-show")
                    click_view = gr.Image(None, label="Click on the object", type="numpy", interactive=False,
                                          sources=(), height=240, elem_id="video-click")
                    click_kind = gr.Radio(["object", "background"], value="object", label="A click adds")
                    clicks = gr.Textbox("", label="Clicks: x, y, label (1 object, 0 background); ';' between",
                                        elem_id="video-clicks")
                with gr.Accordion("Options", open=False):
                    preset = gr.Radio(list(PRESETS), value="fast" if hub.tiny else "default", label="Preset")
                    track = gr.Radio(["preset", *TRACKS], value="preset", label="Track")
                    method = gr.Dropdown(["preset", *METHODS], value="preset", label="Image-prompt method")
                    features = gr.Dropdown(["preset", *FEATURES], value="preset", label="Features")
                    sam_model = gr.Dropdown(["preset", *SAM_MODELS], value="preset", label="Segmenter (SAM)")
                    every = gr.Slider(1, 30, value=1, step=1, label="Take every N-th frame")
                    max_frames = gr.Number(0, precision=0, minimum=0, label="At most N frames (0: all)")
                    prior = gr.Checkbox(True, label="Temporal prior (exemplar track)")
                button = gr.Button("Track", variant="primary", elem_id="video-run")
            with gr.Column():
                overlay = gr.Video(label="Overlay", interactive=False, elem_id="video-overlay")
                scores = gr.LinePlot(x="frame", y="score", label="Score per frame", elem_id="video-scores",
                                     height=220)
                frame_image = gr.Image(label="Frame with its mask", type="numpy", interactive=False,
                                       elem_id="video-frame-mask")
                slider = gr.Slider(0, 1, value=0, step=1, label="Frame", elem_id="video-slider")
                summary = gr.Markdown(elem_id="video-summary")
                files = gr.File(label="Downloads: overlay, masks (zip), results.jsonl, COCO RLE", file_count="multiple")
        state = gr.State(None, time_to_live=3600)  # [output folder, video path]
        inputs = [video, kind, exemplar, exemplar_mask, exemplar_box, clicks, frame, preset, track, method, features,
                  sam_model, every, max_frames, prior]
        button.click(run_video_tab, inputs, [overlay, scores, frame_image, slider, files, summary, state],
                     api_name="video", **limits)
        slider.release(show_frame, [state, slider], frame_image, api_visibility="undocumented", queue=False)
        show.click(show_prompt_frame, [video, frame], [click_view, clicks], api_visibility="undocumented", queue=False)
        click_view.select(add_click, [clicks, click_kind], clicks, queue=False, api_visibility="undocumented")
