"""The Segment tab: SAM's interactive segmentation, clicks (foreground/background) and/or a box, and its
"everything" mode (every mask SAM's automatic mask generator finds)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import gradio as gr
import numpy as np

from vision.engines.segment import SegmentConfig, SegmentEngine
from vision.engines.segment.result import draw_prompts
from vision.hub import SAM_MODELS, ModelHub, get_hub
from vision.imaging import load_image
from vision.ui import errors, examples, form, gpu, notices, runs, storage, uploads
from vision.ui.notices import tiny_prefix
from vision.ui.sam import default_sam, segment_engine
from vision.ui.uploads import check_before_decoding

CLICK_KINDS = ("foreground point", "background point", "box corner")
MULTIMASK = {"auto (3 masks for a lone click)": None, "3 masks": True, "1 mask": False}
MODES = ("prompts", "everything")
SEGMENT_HEADERS = ["mask", "SAM score (predicted IoU)", "area (px)", "stability (everything mode)"]
EVERYTHING_DEFAULTS = SegmentConfig()  # SAM's generator settings (the engine caps the grid on a CPU)
HOW_TO_READ = ("**How to read this:** the blue tint is the best mask (SAM's highest predicted IoU); green dots "
               "are foreground clicks, red dots background clicks, the green frame the box. The score is SAM's "
               "own prediction of the mask's IoU with the object: higher is better, about 0..1 (a regression "
               "output, so it can exceed 1 slightly). With 3 masks, the table lists the "
               "others (whole, part, sub-part).")
HOW_TO_READ_EVERYTHING = (
    "**How to read this:** each colour is one mask SAM's automatic mask generator kept (a grid of clicks, "
    "masks kept when SAM's predicted IoU and their stability pass the thresholds), largest first; where "
    "masks overlap the larger one is listed first and the smaller drawn on top. Stability is how little "
    "the mask changes when its threshold moves (1 = crisp). The mask PNG is the union; the labels PNG "
    "holds mask *k* as value *k*.")


def _everything_engine(sam_model: str, points_per_side: int, pred_iou_thresh: float,
                       stability_score_thresh: float) -> SegmentEngine:
    """A Segment engine with the generator settings of one request, sharing the click engine's encoded
    images (everything mode after clicks on the same image skips the encoder, and the other way round)."""
    return segment_engine(sam_model).with_config(points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh,
                                                 stability_score_thresh=stability_score_thresh)


@gpu.GPU(duration=60)
def _segment(sam_model: str, image: str, points: list, box, multimask):
    return segment_engine(sam_model)(image, points, box, multimask=multimask, name=Path(image).name)


@gpu.GPU(duration=120)
def _everything(image: str, *settings):
    return _everything_engine(*settings).everything(image, name=Path(image).name)


@errors.friendly_errors
def run_segment(image, points_text, box_text, sam_model, multimask_choice, mode="prompts",
                points_per_side=EVERYTHING_DEFAULTS.points_per_side,
                pred_iou_thresh=EVERYTHING_DEFAULTS.pred_iou_thresh,
                stability_thresh=EVERYTHING_DEFAULTS.stability_score_thresh, request: gr.Request = None):
    """SAM masks: in "prompts" mode of the object under the clicks and/or inside the box, in "everything"
    mode every mask the automatic generator finds. Returns the overlay, the mask PNG (best mask or the
    union), the downloads, the masks table and the summary."""
    runs.Run(request, "segment").check()  # a request whose client left while it was queued does nothing
    image = form.require(form.file_path(image), "an image (then click on the object)")
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} must be one of {', '.join(MODES)}")
    points = form.parse_numbers(points_text, 3, "points")
    box = form.parse_box(box_text)
    if mode == "everything" and (points or box):
        raise ValueError("points/box: the everything mode takes no clicks or box (clear them, or use the prompts mode)")
    try:
        if mode == "everything":
            result = _everything(image, sam_model, int(points_per_side), float(pred_iou_thresh),
                                 float(stability_thresh))
        else:
            result = _segment(sam_model, image, points, box, MULTIMASK.get(multimask_choice))
    except ValueError as err:  # name the upload as the user knows it, not Gradio's temporary copy
        raise type(err)(uploads.name_uploads(str(err), [image])) from None
    mask_file, downloads = _save_files(result, storage.safe_name(Path(image).stem, "image"))
    stability = result.stability or [None] * len(result.masks)
    rows = [[k + 1, round(s, 4), int(m.sum()), None if st is None else round(st, 4)]
            for k, (m, s, st) in enumerate(zip(result.masks, result.scores, stability))]
    return result.overlay(), mask_file, downloads, rows, _summary(result)


def _save_files(result, stem: str) -> tuple[str, list[str]]:
    """The engine's files in a fresh folder: the mask PNG, and the downloads (overlay PNG, labels PNG in
    everything mode, COCO RLE JSON)."""
    folder = storage.output_folder()
    files = result.to_files()
    mask_file = storage.save_png(storage.mask_image(files.pop("mask.png")), folder, f"{stem}.mask")
    downloads = [storage.save_png(files.pop("overlay.png"), folder, f"{stem}.overlay")]
    if "labels.png" in files:
        downloads.append(storage.save_png(files.pop("labels.png"), folder, f"{stem}.labels"))
    rle = folder / f"{stem}.rle.json"
    rle.write_text(json.dumps(files.pop("rle.json")))
    downloads.append(str(rle))
    return mask_file, downloads


def _summary(result) -> str:
    """One paragraph on the result: masks, SAM and where it ran, times, notes; then how to read it."""
    t = result.timings
    encoder = "embedding from the cache" if result.embedding_cached else f"encoder {t['encoder']:.2f} s"
    size = f"{result.size[1]}x{result.size[0]}"
    sam = f"SAM `{result.sam_model}` on `{result.backend}`"
    notes = "".join(f" Note: {n}." for n in result.notes)
    if result.task == "everything":
        return (f"{tiny_prefix(get_hub())}Everything: **{len(result.masks)} mask(s)** covering "
                f"{int(result.mask.sum())} px of {size}; {sam}; grid "
                f"{result.points_per_side}x{result.points_per_side} points; {encoder}, generator "
                f"{t['decoder']:.2f} s.{notes}\n\n{HOW_TO_READ_EVERYTHING}")
    encoder = "embedding from the cache (decoder only)" if result.embedding_cached else encoder
    return (f"{tiny_prefix(get_hub())}Best mask: score **{result.scores[0]:.3f}**, "
            f"{int(result.mask.sum())} px of {size}; {len(result.points)} click(s)"
            f"{', a box' if result.box else ''}; {sam}; {len(result.masks)} mask(s); "
            f"{encoder}, decoder {1000 * t['decoder']:.0f} ms.{notes}\n\n{HOW_TO_READ}")


def add_click(image, points_text: str, box_text: str, corner, kind: str, mode: str, evt: gr.SelectData):
    """A click on the image (pixel coordinates ``evt.index``) -> the points text, the box text, the pending
    box corner (the first of two corner clicks), and the overlay and summary: after a first corner click
    the image with that corner marked and a note asking for the opposite one (:func:`pending_corner_view`),
    unchanged otherwise (the run after the click fills them). The everything mode takes no clicks."""
    if mode == "everything":
        return (gr.skip(),) * 5
    x, y = (int(v) for v in evt.index[:2])
    if kind == "box corner":
        if corner is None:
            return points_text, box_text, (x, y), *pending_corner_view(image, points_text, box_text, (x, y))
        (x0, y0) = corner
        box = (min(x0, x), min(y0, y), max(x0, x) + 1, max(y0, y) + 1)
        return points_text, ", ".join(str(v) for v in box), None, gr.skip(), gr.skip()
    label = 1 if kind == "foreground point" else 0
    return form.append_point(points_text, x, y, label), box_text, None, gr.skip(), gr.skip()


def pending_corner_view(image, points_text: str, box_text: str, corner: tuple[int, int]) -> tuple[np.ndarray, str]:
    """The first box-corner click shown before the second, so the user sees it registered: (the image,
    RGB uint8 [H, W, 3], with the typed clicks and a marker at ``corner`` (x, y pixels), and a note that
    asks for the opposite corner). The current box is not drawn: the new one replaces it."""
    rgb = load_image(form.require(form.file_path(image), "an image (then click on the object)"))
    try:
        points = form.parse_numbers(points_text, 3, "points")
    except ValueError:  # a typo in the typed points: the run after the second corner names it
        points = []
    x, y = corner
    note = f"**Box:** first corner at {x}, {y}; click the opposite corner."
    if (box_text or "").strip():
        note += f" The new box replaces the current one ({box_text.strip()})."
    return draw_prompts(rgb, points, corner=corner), note


def segment_after_click(image, points_text, box_text, corner, sam_model, multimask_choice, mode):
    """Run after each click; waits (no output: the click showed the pending corner) while the first box
    corner is set, and in the everything mode (which takes no clicks: its Segment button runs it)."""
    if mode == "everything" or corner is not None or (not (points_text or "").strip()
                                                      and not (box_text or "").strip()):
        return (gr.skip(),) * 5
    return run_segment(image, points_text, box_text, sam_model, multimask_choice)


def warm_up_cpu_backend(hub: ModelHub) -> threading.Thread | None:
    """In the CPU preset, build the default SAM's backend in the background (its one-time ONNX export and
    compilation take tens of seconds), so the first click does not wait for it; None when there is
    nothing to do (a GPU, tiny mode, weights not on disk)."""
    from vision import weights
    from vision.ui.layout import cpu_preset

    sam = default_sam(hub)
    if not cpu_preset(hub) or weights.status(sam) == "missing":
        return None

    def build() -> None:
        try:
            _ = segment_engine(sam).runner  # the property builds (exports, compiles) the backend
        except Exception:  # the first click reports it, with the reason
            logging.getLogger(__name__).exception("SAM backend warm-up failed")

    thread = threading.Thread(target=build, name="sam-backend-warm-up", daemon=True)
    thread.start()
    return thread


def segment_tab(hub: ModelHub, limits: dict) -> None:
    samples = examples.sample_paths(("coins", "chelsea"))
    warm_up_cpu_backend(hub)
    with gr.Tab("Segment", id="segment"):
        notices.missing_weights_note(hub, "segment", SegmentConfig(sam_model=default_sam(hub)))
        gr.Markdown("**Segment** (SAM): upload a photo and click on an object. Each click adds a point of the kind "
                    "chosen below; two *box corner* clicks make a box (the first is marked until the second). Points "
                    "and the box can also be typed. The *everything* mode finds every mask SAM can (no clicks; "
                    "press Segment).")
        with gr.Row():
            with gr.Column():
                # image_mode=None: Gradio hands over the file as uploaded, decoded by vision.imaging.load_image
                # as the CLI does
                image = gr.Image(label="Image (click on the object)", type="filepath", image_mode=None,
                                 sources=("upload", "clipboard"), elem_id="segment-image")
                check_before_decoding(image, "image")
                mode = gr.Radio(list(MODES), value=MODES[0], label="Mode", elem_id="segment-mode",
                                info="prompts: the object under your clicks / in the box; everything: every "
                                     "mask SAM finds (click Segment)")
                kind = gr.Radio(list(CLICK_KINDS), value=CLICK_KINDS[0], label="A click adds",
                                elem_id="segment-kind")
                points = gr.Textbox("", label="Points: x, y, label (1 foreground, 0 background); ';' between points",
                                    placeholder="120, 80, 1; 40, 200, 0", elem_id="segment-points")
                box = gr.Textbox("", label="Box: x0, y0, x1, y1 (pixels)", placeholder="empty: no box",
                                 elem_id="segment-box")
                with gr.Row():
                    sam_model = gr.Dropdown(list(SAM_MODELS), value=default_sam(hub), label="Segmenter (SAM)",
                                            info="sam_t: MobileSAM-class TinyViT (real weights install here)")
                    multimask = gr.Dropdown(list(MULTIMASK), value=next(iter(MULTIMASK)), label="Masks")
                grid, iou_thresh, stability_thresh = _everything_controls()
                with gr.Row():
                    clear = gr.Button("Clear clicks", elem_id="segment-clear")
                    button = gr.Button("Segment", variant="primary", elem_id="segment-run")
            with gr.Column():
                outputs = _outputs()  # overlay, mask_file, files, scores, summary
        corner = gr.State(None)
        inputs = [image, points, box, sam_model, multimask, mode, grid, iou_thresh, stability_thresh]
        with gr.Row():  # skimage.data photographs
            examples.example_button("Example: coins, a click at 155, 51 (then Segment)",
                                    [samples["coins"], "155, 51, 1", ""], [image, points, box], "segment-example-coins")
            examples.example_button("Example: chelsea, the box 60, 20, 390, 300 (then Segment)",
                                    [samples["chelsea"], "", "60, 20, 390, 300"], [image, points, box],
                                    "segment-example-chelsea")
        button.click(run_segment, inputs, outputs, api_name="segment", **limits)
        clicked = [points, box, corner, outputs[0], outputs[4]]  # outputs 0, 4: the overlay, the summary
        image.select(add_click, [image, points, box, corner, kind, mode], clicked, queue=False,
                     api_visibility="undocumented").then(
            segment_after_click, [image, points, box, corner, sam_model, multimask, mode], outputs,
            api_visibility="undocumented", **limits)
        for event in (image.upload, image.clear, clear.click, mode.change):
            event(lambda: ("", "", None), None, [points, box, corner], queue=False, api_visibility="undocumented")


def _everything_controls() -> tuple[gr.Slider, gr.Slider, gr.Slider]:
    """The automatic mask generator's grid and thresholds."""
    with gr.Accordion("Everything mode: SAM's automatic mask generator", open=False):
        grid = gr.Slider(1, 64, value=EVERYTHING_DEFAULTS.points_per_side, step=1,
                         label="Points per side (a grid of n x n clicks)",
                         info=f"SAM's default 32; on a CPU the engine caps it at "
                              f"{EVERYTHING_DEFAULTS.cpu_points_per_side}")
        iou_thresh = gr.Slider(0.0, 1.0, value=EVERYTHING_DEFAULTS.pred_iou_thresh, step=0.01,
                               label="Keep masks with SAM's predicted IoU above")
        stability_thresh = gr.Slider(0.0, 1.0, value=EVERYTHING_DEFAULTS.stability_score_thresh,
                                     step=0.01, label="Keep masks with a stability above")
    return grid, iou_thresh, stability_thresh


def _outputs() -> list:
    """The overlay, the mask file, the downloads, the table of masks and the summary (run_segment's order)."""
    overlay = gr.Image(label="Mask overlay", format="png", interactive=False, elem_id="segment-overlay")
    storage.written_once(overlay)  # its image is written once per request (see vision.ui.storage)
    mask_file = gr.File(label="Mask PNG (best mask, or the union of all in everything mode; 0/255)",
                        elem_id="segment-mask")
    summary = gr.Markdown(label="Summary", elem_id="segment-summary")
    scores = gr.Dataframe(headers=SEGMENT_HEADERS, label="Masks (best first; everything mode: largest first)",
                          interactive=False)
    files = gr.File(label="Downloads: overlay PNG, labels PNG (everything mode), COCO RLE of every mask (JSON)",
                    file_count="multiple")
    return [overlay, mask_file, files, scores, summary]
