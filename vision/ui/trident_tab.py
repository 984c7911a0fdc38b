"""The Trident tab: open-vocabulary semantic segmentation from class names."""

from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr
import numpy as np

from vision.hub import ModelHub, get_hub
from vision.ui import helpers as ui
from vision.ui.helpers import tiny_prefix


@functools.lru_cache(maxsize=1)
def _trident_engine():
    """One shared Trident engine (it caches text embeddings per class list and is thread-safe)."""
    from vision.engines.trident import TridentEngine

    return TridentEngine(get_hub())


@ui.GPU(duration=60)
def _trident_segment(image: str, classes, config):
    return _trident_engine().segment(image, classes, config=config, return_probs=False)


@ui.friendly_errors
def run_trident(image, class_text, preset, prob_thd, refine, clip_model, progress=gr.Progress(track_tqdm=True)):
    """Open-vocabulary segmentation of an image into the given class names (Trident)."""
    from vision.engines.trident import TridentConfig
    from vision.imaging import load_image

    image = ui.require(ui.file_path(image), "an image")
    classes = ui.parse_class_text(class_text) or None  # None: the preset's own benchmark classes
    config = TridentConfig.from_preset(preset, prob_thd=float(prob_thd), refine=bool(refine), clip=clip_model)
    progress(0.0, desc="segmenting")
    result = _trident_segment(image, classes, config)
    names, labels = result.class_names, result.labels
    annotated = (load_image(image), [(labels == i, names[i]) for i in np.unique(labels).tolist()])
    folder = ui.output_folder()
    stem = ui.safe_name(Path(image).stem, "image")
    files = [ui.save_png(value, folder, f"{stem}_{Path(name).stem}") for name, value in result.to_files().items()]
    record = result.to_record()
    share = record["pixel_fraction"]  # {class: fraction of the pixels}, classes present only
    rows = [[i, name, "; ".join(result.classes.names[i]), round(100 * share.get(name, 0.0), 2)]
            for i, name in enumerate(names)]
    truncated = record.get("truncated_names") or []
    if truncated:
        ui.warn(f"Class names longer than CLIP's 77 tokens were truncated: {', '.join(truncated)}")
    summary = (f"{tiny_prefix(get_hub())}{len(names)} classes, preset **{config.preset}**, prob threshold "
               f"{config.prob_thd:g}, refinement {'on' if config.refine else 'off'} "
               f"({record.get('kept_masks', 0)} SAM masks kept), {result.timings['total']:.2f} s."
               + (f" Names truncated to CLIP's 77 tokens: {', '.join(truncated)}." if truncated else ""))
    return annotated, files, rows, summary


def trident_tab(hub: ModelHub, limits: dict) -> None:
    from vision.engines.trident import PRESETS

    samples = ui.sample_paths()
    with gr.Tab("Trident", id="trident"):
        gr.Markdown("**Trident**: open-vocabulary semantic segmentation from class names (CLIP + DINO proxy "
                    "attention on spliced windows, SAM global aggregation and SAM prompt refinement).")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="filepath", image_mode=None, sources=("upload", "clipboard"),
                                 value=samples["astronaut"], elem_id="trident-image")
                classes = gr.Textbox(label="Class names", lines=4, elem_id="trident-classes",
                                     value="person; astronaut\nrocket\nflag\nbackground; sky; wall",
                                     info="one class per line (synonyms on a line: 'person; astronaut'), or all "
                                          "on one line separated by ';'. Empty: the preset's benchmark classes.")
                with gr.Row():
                    preset = gr.Dropdown(list(PRESETS), value="open", label="Preset", elem_id="trident-preset")
                    clip_model = gr.Dropdown(["clip_b16", "clip_h14"], value="clip_b16", label="CLIP")
                prob_thd = gr.Slider(0.0, 1.0, value=PRESETS["open"].prob_thd, step=0.01,
                                     label="Probability threshold (below it: background)")
                refine = gr.Checkbox(value=True, label="SAM prompt refinement")
                button = gr.Button("Segment", variant="primary", elem_id="trident-run")
            with gr.Column():
                annotated = gr.AnnotatedImage(label="Labels", format="png", elem_id="trident-annotated")
                summary = gr.Markdown(elem_id="trident-summary")
                table = gr.Dataframe(headers=["index", "class", "names", "pixels (%)"], label="Classes",
                                     interactive=False)
                files = gr.File(label="Download: label PNG (pixel = class index), coarse labels, overlay",
                                file_count="multiple", elem_id="trident-files")
        gr.Examples([[samples["astronaut"], "person; astronaut\nrocket\nflag\nbackground; sky; wall"],
                     [samples["chelsea"], "cat; kitten; background"],
                     [samples["coffee"], "cup\nsaucer\nspoon\ntable\nbackground"]],
                    inputs=[image, classes], label="Examples (skimage.data photographs)")
        preset.change(lambda name: PRESETS[name].prob_thd, preset, prob_thd, queue=False,
                      api_visibility="undocumented")
        button.click(run_trident, [image, classes, preset, prob_thd, refine, clip_model],
                     [annotated, files, table, summary], api_name="trident", **limits,
                     preprocess=False)  # the engine reads the upload itself: a bad file gets its own message
