"""The Segment tab: SAM's interactive segmentation, clicks (foreground/background) and/or a box."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import gradio as gr

from vision.hub import SAM_MODELS, ModelHub, get_hub
from vision.ui import helpers as ui
from vision.ui.helpers import tiny_prefix
from vision.ui.uploads import check_before_decoding

CLICK_KINDS = ("foreground point", "background point", "box corner")
MULTIMASK = {"auto (3 masks for a lone click)": None, "3 masks": True, "1 mask": False}
SEGMENT_HEADERS = ["mask", "SAM score (predicted IoU)", "area (px)"]
HOW_TO_READ = ("**How to read this:** the blue tint is the best mask (SAM's highest predicted IoU); green dots "
               "are foreground clicks, red dots background clicks, the green frame the box. The score is SAM's "
               "own estimate of the mask's IoU with the object (1 = sure). With 3 masks, the table lists the "
               "others (whole, part, sub-part).")


@functools.lru_cache(maxsize=len(SAM_MODELS))
def _segment_engine(sam_model: str):
    """One Segment engine per SAM model (each caches image embeddings: a click after the first on the
    same image runs the decoder only)."""
    from vision.engines.segment import Segment, SegmentConfig

    return Segment(SegmentConfig(sam_model=sam_model), hub=get_hub())


def default_sam(hub: ModelHub) -> str:
    """sam_t (real MobileSAM-class weights) when installed or in tiny mode, else sam_b."""
    from vision import weights

    return "sam_t" if hub.tiny or weights.status("sam_t") != "missing" else "sam_b"


@ui.GPU(duration=60)
def _segment(sam_model: str, image: str, points: list, box, multimask):
    return _segment_engine(sam_model).segment(image, points, box, multimask=multimask, name=Path(image).name)


@ui.friendly_errors
def run_segment(image, points_text, box_text, sam_model, multimask_choice):
    """Masks of the object under the clicks and/or inside the box (SAM): overlay, mask PNG, scores."""
    image = ui.require(ui.file_path(image), "an image (then click on the object)")
    points = ui.parse_numbers(points_text, 3, "points")
    box = ui.parse_box(box_text)
    try:
        result = _segment(sam_model, image, points, box, MULTIMASK.get(multimask_choice))
    except ValueError as err:  # name the upload as the user knows it, not Gradio's temporary copy
        raise type(err)(ui.name_uploads(str(err), [image])) from None
    folder = ui.output_folder()
    stem = ui.safe_name(Path(image).stem, "image")
    files = result.to_files()
    mask_file = ui.save_png(ui.mask_image(files.pop("mask.png")), folder, f"{stem}.mask")
    downloads = [ui.save_png(files.pop("overlay.png"), folder, f"{stem}.overlay")]
    rle = folder / f"{stem}.rle.json"
    rle.write_text(json.dumps(files.pop("rle.json")))
    downloads.append(str(rle))
    rows = [[k + 1, round(s, 4), int(m.sum())] for k, (m, s) in enumerate(zip(result.masks, result.scores))]
    t = result.timings
    encoder = "embedding from the cache (decoder only)" if result.embedding_cached else f"encoder {t['encoder']:.2f} s"
    summary = (f"{tiny_prefix(get_hub())}Best mask: score **{result.scores[0]:.3f}**, "
               f"{int(result.mask.sum())} px of {result.size[1]}x{result.size[0]}; {len(result.points)} click(s)"
               f"{', a box' if result.box else ''}; SAM `{result.sam_model}`; {len(result.masks)} mask(s); "
               f"{encoder}, decoder {1000 * t['decoder']:.0f} ms.\n\n{HOW_TO_READ}")
    return result.overlay(), mask_file, downloads, rows, summary


def add_click(points_text: str, box_text: str, corner, kind: str, evt: gr.SelectData):
    """A click on the image (pixel coordinates ``evt.index``) -> the points text, the box text and the
    pending box corner (the first of two corner clicks)."""
    x, y = (int(v) for v in evt.index[:2])
    if kind == "box corner":
        if corner is None:
            return points_text, box_text, (x, y)
        (x0, y0) = corner
        box = (min(x0, x), min(y0, y), max(x0, x) + 1, max(y0, y) + 1)
        return points_text, ", ".join(str(v) for v in box), None
    label = 1 if kind == "foreground point" else 0
    return "; ".join(filter(None, [(points_text or "").strip(), f"{x}, {y}, {label}"])), box_text, None


def segment_after_click(image, points_text, box_text, corner, sam_model, multimask_choice):
    """Run after each click; waits (no output) while only the first box corner is set."""
    if not (points_text or "").strip() and not (box_text or "").strip():
        return (gr.skip(),) * 5
    return run_segment(image, points_text, box_text, sam_model, multimask_choice)


def segment_tab(hub: ModelHub, limits: dict) -> None:
    samples = ui.sample_paths(("coins", "chelsea"))
    with gr.Tab("Segment", id="segment"):
        gr.Markdown("**Segment** (SAM): upload a photo and click on an object. Each click adds a point of the kind "
                    "chosen below; two *box corner* clicks make a box. Points and the box can also be typed.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image (click on the object)", type="filepath",
                                 sources=("upload", "clipboard"), elem_id="segment-image")
                check_before_decoding(image, "image")
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
                with gr.Row():
                    clear = gr.Button("Clear clicks", elem_id="segment-clear")
                    button = gr.Button("Segment", variant="primary", elem_id="segment-run")
            with gr.Column():
                overlay = gr.Image(label="Mask overlay", format="png", interactive=False, elem_id="segment-overlay")
                mask_file = gr.File(label="Mask PNG (best mask, 0/255)", elem_id="segment-mask")
                summary = gr.Markdown(label="Summary", elem_id="segment-summary")
                scores = gr.Dataframe(headers=SEGMENT_HEADERS, label="Masks (best first)", interactive=False)
                files = gr.File(label="Downloads: overlay PNG, COCO RLE of every mask (JSON)", file_count="multiple")
        corner = gr.State(None)
        inputs = [image, points, box, sam_model, multimask]
        outputs = [overlay, mask_file, files, scores, summary]
        gr.Examples([[samples["coins"], "155, 51, 1", ""], [samples["chelsea"], "", "60, 20, 390, 300"]],
                    inputs=[image, points, box], label="Examples (skimage.data photographs; click Segment)")
        button.click(run_segment, inputs, outputs, api_name="segment", **limits)
        image.select(add_click, [points, box, corner, kind], [points, box, corner], queue=False,
                     api_visibility="undocumented").then(
            segment_after_click, [image, points, box, corner, sam_model, multimask], outputs,
            api_visibility="undocumented", **limits)
        for event in (image.upload, image.clear, clear.click):
            event(lambda: ("", "", None), None, [points, box, corner], queue=False, api_visibility="undocumented")
