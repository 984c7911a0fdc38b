"""The Trident tab: open-vocabulary semantic segmentation from class names."""

from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr
import numpy as np

from vision.hub import ModelHub, get_hub
from vision.ui import errors, examples, form, gpu, notices, runs, storage, uploads
from vision.ui.notices import tiny_prefix

HEATMAP_SIDE = 384  # heatmaps are shown at most this many pixels per side (one per class: keep them light)
DEFAULT_CLASSES = "person|astronaut; rocket; flag; background|sky|wall"
HOW_TO_READ = (
    "**How to read this.** *Labels*: each pixel gets its most probable class, after SAM refinement "
    "(masks SAM finds relabel whole regions); *coarse labels*: the same before refinement, so the two show "
    "what SAM changed. *Probability maps*: one per class, on one scale for every class (blue 0 .. red 1); a "
    "class's probability is the best of its synonyms'. With a probability threshold, pixels whose best "
    "class is less probable than it become background.")


@functools.lru_cache(maxsize=4)
def _trident_engine(config):
    """One Trident engine per settings (thread-safe; text embeddings are cached across engines)."""
    from vision.engines.trident import TridentEngine

    return TridentEngine(config, get_hub())


@gpu.GPU(duration=60)
def _trident_segment(image: str, classes, config, on_progress=None):
    return _trident_engine(config)(image, classes, return_probs=True, progress=on_progress)


def _label_view(image: np.ndarray, labels: np.ndarray, names: tuple[str, ...]):
    """An ``AnnotatedImage`` value: the photo and one mask per class of ``labels`` [H, W], absent ones
    too (the page colours a mask by its position in the list: both label maps then use one colour per class)."""
    return image, [(labels == i, name) for i, name in enumerate(names)]


def _probability_gallery(image: np.ndarray, probs: np.ndarray, names: tuple[str, ...], stamp) -> list:
    """One (heatmap, caption) per class from ``probs`` [K, H, W]: the caption starts with the class name."""
    from vision.imaging import heatmap

    return [(stamp(heatmap(p, image, max_side=HEATMAP_SIDE)), f"{name}: max {p.max():.2f}, mean {p.mean():.2f}")
            for name, p in zip(names, probs)]


def _summary(result, record: dict, truncated: list[str]) -> str:
    config = result.config
    behaviour = "the reference code's behaviour" if config.reference else "the project's behaviour"
    mode = f"mode **{record['mode']}** (reference {'on' if config.reference else 'off'}: {behaviour})"
    return (f"{tiny_prefix(get_hub())}{len(result.class_names)} classes, preset **{config.preset}**, {mode}, "
            f"prob threshold {config.prob_thd:g}, refinement {'on' if config.refine else 'off'} "
            f"({record.get('kept_masks', 0)} SAM masks kept), {result.timings['total']:.2f} s."
            + (f" Names truncated to CLIP's 77 tokens: {', '.join(truncated)}." if truncated else ""))


@errors.friendly_errors
def run_trident(image, class_text, preset, prob_thd, refine, clip_model, progress=gr.Progress(track_tqdm=True),
                request: gr.Request = None):
    """Open-vocabulary segmentation of an image into the given class names (Trident)."""
    from vision.engines.trident import TridentConfig
    from vision.imaging import load_image, tiny_banner
    from vision.wording import shorten

    image = form.require(form.file_path(image), "an image")
    classes = form.parse_class_text(class_text) or None  # None: the preset's own benchmark classes
    config = TridentConfig.from_preset(preset, prob_thd=float(prob_thd), refine=bool(refine), clip=clip_model)
    progress(0.0, desc="segmenting")
    run = runs.Run(request, "trident")
    run.check()  # a request whose client left while it was queued does nothing (it stops between stages too)
    try:
        result = _trident_segment(image, classes, config, run.progress(progress))
    except ValueError as err:  # name the upload as the user knows it, not Gradio's temporary copy
        raise type(err)(uploads.name_uploads(str(err), [image])) from None
    names = tuple(shorten(name) for name in result.class_names)  # as shown: a pasted essay is cut
    stamp = tiny_banner if result.tiny else (lambda picture: picture)
    photo = load_image(image)
    shown = stamp(photo)
    folder = storage.output_folder()
    stem = storage.safe_name(Path(image).stem, "image")
    files = [storage.save_png(value, folder, f"{stem}_{Path(name).stem}") for name, value in result.to_files().items()]
    record = result.to_record()
    share = record["pixel_fraction"]  # {class: fraction of the pixels}, classes present only
    rows = [[i, name, shorten(" | ".join(result.classes.names[i])), round(100 * share.get(full, 0.0), 2)]
            for i, (name, full) in enumerate(zip(names, result.class_names))]
    truncated = [shorten(name) for name in record.get("truncated_names") or []]
    if truncated:
        notices.warn(f"Class names longer than CLIP's 77 tokens were truncated: {', '.join(truncated)}")
    return (_label_view(shown, result.labels, names), _label_view(shown, result.coarse, names),
            _probability_gallery(photo, result.probs, names, stamp), files, rows, _summary(result, record, truncated))


EXAMPLES = [("astronaut", DEFAULT_CLASSES, "open"), ("chelsea", "cat|kitten; grass; background|wall", "open"),
            ("coffee", "cup; saucer; spoon; table; background", "open"), ("rocket", "", "voc21")]


def _examples(samples: dict[str, str], image, classes, preset, presets: list[str]) -> gr.Dataset:
    """The Examples table; a click fills the image, the class names and the preset.

    A ``gr.Dataset`` rather than ``gr.Examples``: in a tab mounted after the page loads, Gradio 6.17's
    table leaves blank each cell whose example component another tab's Examples loaded first (here the
    Textbox's, loaded by the IPSeg Examples; a page error "reading '1'" per row). The class lists are shown
    with gr.Code's example, which no other table uses: plain text, as typed.
    """
    rows = [[samples[name], text, preset_name] for name, text, preset_name in EXAMPLES]
    table = gr.Dataset(components=[gr.Image(render=False), gr.Code(render=False), gr.Dropdown(presets, render=False)],
                       samples=rows, headers=["Image", "Class names", "Preset"], type="index",
                       label="Examples (skimage.data photographs; no class names: the preset's benchmark classes)",
                       elem_id="trident-examples")
    table.click(lambda index: rows[index], table, [image, classes, preset], queue=False,
                api_visibility="undocumented")
    return table


def trident_tab(hub: ModelHub, limits: dict) -> None:
    from vision.engines.trident import PRESETS, TridentConfig

    samples = examples.sample_paths()
    with gr.Tab("Trident", id="trident"):
        notices.missing_weights_note(hub, "trident", TridentConfig.from_preset("open"))
        gr.Markdown("**Trident**: open-vocabulary semantic segmentation from class names (CLIP + DINO proxy "
                    "attention on spliced windows, SAM global aggregation and SAM prompt refinement).")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="filepath", image_mode=None, sources=("upload", "clipboard"),
                                 value=samples["astronaut"], elem_id="trident-image")
                classes = gr.Textbox(label="Class names", lines=1, max_lines=1, elem_id="trident-classes",
                                     value=DEFAULT_CLASSES, placeholder=form.CLASS_EXAMPLE,
                                     info=f"{form.CLASS_SYNTAX}, as the CLI's --labels (e.g. '{form.CLASS_EXAMPLE}'); "
                                          "a class named 'background' is the background. Empty: the preset's "
                                          "benchmark classes.")
                with gr.Row():
                    preset = gr.Dropdown(list(PRESETS), value="open", label="Preset", elem_id="trident-preset",
                                         info="benchmark presets run the reference code's behaviour")
                    clip_model = gr.Dropdown(["clip_b16", "clip_h14"], value="clip_b16", label="CLIP")
                prob_thd = gr.Slider(0.0, 1.0, value=PRESETS["open"].prob_thd, step=0.01,
                                     label="Probability threshold (below it: background)")
                refine = gr.Checkbox(value=True, label="SAM prompt refinement")
                button = gr.Button("Segment", variant="primary", elem_id="trident-run")
            with gr.Column():
                summary = gr.Markdown(label="Summary", elem_id="trident-summary")
                with gr.Row():
                    annotated = gr.AnnotatedImage(label="Labels (after SAM refinement)", format="png",
                                                  elem_id="trident-annotated")
                    coarse = gr.AnnotatedImage(label="Coarse labels (before SAM refinement)", format="png",
                                               elem_id="trident-coarse")
                heatmaps = gr.Gallery(label="Probability map of each class (blue 0 .. red 1)", columns=3,
                                      height="auto", object_fit="contain", format="png",
                                      elem_id="trident-heatmaps")
                gr.Markdown(HOW_TO_READ, elem_id="trident-howto")
                table = gr.Dataframe(headers=["index", "class", "names", "pixels (%)"], label="Classes",
                                     interactive=False)
                files = gr.File(label="Download: label PNG (pixel = class index), coarse labels, overlay",
                                file_count="multiple", elem_id="trident-files")
        for shown in (annotated, coarse, heatmaps):  # images written once per request (vision.ui.storage)
            storage.written_once(shown)
        _examples(samples, image, classes, preset, list(PRESETS))
        preset.change(lambda name: PRESETS[name].prob_thd, preset, prob_thd, queue=False,
                      api_visibility="undocumented")
        button.click(run_trident, [image, classes, preset, prob_thd, refine, clip_model],
                     [annotated, coarse, heatmaps, files, table, summary], api_name="trident", **limits,
                     preprocess=False)  # the engine reads the upload itself: a bad file gets its own message
