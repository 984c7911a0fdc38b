"""The Trident tab: open-vocabulary semantic segmentation from class names, by Trident or CorrCLIP
(the Method choice; CorrCLIP's region masks are shown beside its label maps)."""

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
    "(Trident: masks SAM finds relabel whole regions) or map correction (CorrCLIP: each region mask takes "
    "its most frequent label); *coarse labels*: the same before that step, so the two show what it changed. "
    "*Region masks* (CorrCLIP): one colour per region of its mask generator, black where no mask lies; "
    "patches only correlate within their region. *Probability maps*: one per class, on one scale for every "
    "class (blue 0 .. red 1); a class's probability is the best of its synonyms'. With a probability "
    "threshold, pixels whose best class is less probable than it become background.")
METHODS = {"Trident": "trident", "CorrCLIP": "corrclip"}  # the Method choice -> TridentConfig.method
CLIPS = {"trident": ["clip_b16", "clip_h14"], "corrclip": ["metaclip_b16", "clip_b16", "clip_h14"]}
MASK_GENERATORS = ["sam_b", "sam_h", "sam_t", "mask2former"]


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
    method = "CorrCLIP" if config.method == "corrclip" else "Trident"
    if config.method == "corrclip":
        timings, info = result.timings, result.info
        masks = "from the cache" if info["regions_cached"] else f"{timings['masks']:.2f} s"
        step = (f"{info['regions']} region masks ({info['mask_generator']}, {masks}), the rest "
                f"{timings['total'] - timings['masks']:.2f} s")
    else:
        step = (f"refinement {'on' if config.refine else 'off'} ({record.get('kept_masks', 0)} SAM masks kept), "
                f"{result.timings['total']:.2f} s")
    return (f"{tiny_prefix(get_hub())}{len(result.class_names)} classes, method **{method}**, preset "
            f"**{config.preset}**, {mode}, prob threshold {config.prob_thd:g}, {step}."
            + (f" Names truncated to CLIP's 77 tokens: {', '.join(truncated)}." if truncated else ""))


def _config(method: str, preset: str, prob_thd: float, refine: bool, clip_model: str, mask_generator: str | None,
            points_per_side: float | None):
    """The engine settings of the form; a preset of the other method is refused with the reason."""
    from vision.engines.trident import PRESETS, TridentConfig
    from vision.engines.trident.config import preset_for

    method = METHODS.get(method, method or "trident")
    name = preset_for(method, preset or "open")
    if name in PRESETS and PRESETS[name].method != method:
        raise ValueError(f"preset {preset!r} belongs to the method {PRESETS[name].method}, not {method}")
    changes = {"prob_thd": float(prob_thd), "clip": clip_model or PRESETS[name].clip}
    if method == "corrclip":
        changes["mask_generator"] = mask_generator or PRESETS[name].mask_generator
        changes["points_per_side"] = int(points_per_side or PRESETS[name].points_per_side)
    else:
        changes["refine"] = bool(refine)
    return TridentConfig.from_preset(name, **changes)


@errors.friendly_errors
def run_trident(image, class_text, preset, prob_thd, refine, clip_model, method="Trident", mask_generator=None,
                points_per_side=None, progress=gr.Progress(track_tqdm=True), request: gr.Request = None):
    """Open-vocabulary segmentation of an image into the given class names (Trident or CorrCLIP)."""
    from vision.imaging import load_image, tiny_banner
    from vision.wording import shorten

    image = form.require(form.file_path(image), "an image")
    classes = form.parse_class_text(class_text) or None  # None: the preset's own benchmark classes
    config = _config(method, preset, prob_thd, refine, clip_model, mask_generator, points_per_side)
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
            result.regions_overlay(), _probability_gallery(photo, result.probs, names, stamp), files, rows,
            _summary(result, record, truncated))


def _method_changed(method: str):
    """The form for a Method: its presets (the open one chosen), CLIPs, threshold and its own options."""
    from vision.engines.trident import PRESETS
    from vision.engines.trident.config import presets_of

    key = METHODS[method]
    first = PRESETS[presets_of(key)[0]]
    corrclip = key == "corrclip"
    return (gr.update(choices=presets_of(key), value=first.preset), gr.update(choices=CLIPS[key], value=first.clip),
            first.prob_thd, gr.update(visible=not corrclip), gr.update(visible=corrclip), gr.update(visible=corrclip))


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


def _corrclip_options():
    """CorrCLIP's own inputs (hidden until the Method is CorrCLIP): its mask generator and SAM's grid."""
    from vision.engines.trident import PRESETS

    default = PRESETS["corrclip"]
    with gr.Row():
        mask_generator = gr.Dropdown(MASK_GENERATORS, value=default.mask_generator, label="Region masks from",
                                     visible=False, elem_id="trident-mask-generator")
        points_per_side = gr.Slider(2, 64, value=default.points_per_side, step=1, label="SAM points per side",
                                    visible=False, elem_id="trident-points")
    return mask_generator, points_per_side


def trident_tab(hub: ModelHub, limits: dict) -> None:
    from vision.engines.trident import PRESETS, TridentConfig
    from vision.engines.trident.config import presets_of

    samples = examples.sample_paths()
    with gr.Tab("Trident", id="trident"):
        notices.missing_weights_note(hub, "trident", TridentConfig.from_preset("open"))
        gr.Markdown("**Open-vocabulary segmentation from class names.** *Trident*: CLIP + DINO proxy attention "
                    "on spliced windows, SAM global aggregation and SAM prompt refinement. *CorrCLIP*: region "
                    "masks (SAM's automatic generator or Mask2Former) restrict CLIP's patch correlations, DINO "
                    "gives their values, two extra branches and a region-wise map correction.")
        with gr.Row():
            with gr.Column():
                method = gr.Radio(list(METHODS), value="Trident", label="Method", elem_id="trident-method")
                image = gr.Image(label="Image", type="filepath", image_mode=None, sources=("upload", "clipboard"),
                                 value=samples["astronaut"], elem_id="trident-image")
                classes = gr.Textbox(label="Class names", lines=1, max_lines=1, elem_id="trident-classes",
                                     value=DEFAULT_CLASSES, placeholder=form.CLASS_EXAMPLE,
                                     info=f"{form.CLASS_SYNTAX}, as the CLI's --labels (e.g. '{form.CLASS_EXAMPLE}'); "
                                          "a class named 'background' is the background. Empty: the preset's "
                                          "benchmark classes.")
                with gr.Row():
                    preset = gr.Dropdown(presets_of("trident"), value="open", label="Preset", elem_id="trident-preset",
                                         info="benchmark presets run the reference code's behaviour")
                    clip_model = gr.Dropdown(CLIPS["trident"], value="clip_b16", label="CLIP")
                prob_thd = gr.Slider(0.0, 1.0, value=PRESETS["open"].prob_thd, step=0.01,
                                     label="Probability threshold (below it: background)")
                refine = gr.Checkbox(value=True, label="SAM prompt refinement")
                mask_generator, points_per_side = _corrclip_options()
                button = gr.Button("Segment", variant="primary", elem_id="trident-run")
            with gr.Column():
                summary = gr.Markdown(label="Summary", elem_id="trident-summary")
                with gr.Row():
                    annotated = gr.AnnotatedImage(label="Labels", format="png", elem_id="trident-annotated")
                    regions = gr.Image(label="Region masks (CorrCLIP)", format="png", interactive=False,
                                       elem_id="trident-regions")
                coarse = gr.AnnotatedImage(label="Coarse labels (before SAM refinement / CorrCLIP's map correction)",
                                           format="png", height=320, elem_id="trident-coarse")
                heatmaps = gr.Gallery(label="Probability map of each class (blue 0 .. red 1)", columns=3,
                                      height="auto", object_fit="contain", format="png",
                                      elem_id="trident-heatmaps")
                gr.Markdown(HOW_TO_READ, elem_id="trident-howto")
                table = gr.Dataframe(headers=["index", "class", "names", "pixels (%)"], label="Classes",
                                     interactive=False)
                files = gr.File(label="Download: label PNG (pixel = class index), coarse labels, overlay "
                                "(CorrCLIP: region ids as a 16-bit PNG, regions overlay)",
                                file_count="multiple", elem_id="trident-files")
        for shown in (annotated, coarse, regions, heatmaps):  # images written once per request (vision.ui.storage)
            storage.written_once(shown)
        _examples(samples, image, classes, preset, list(PRESETS))
        method.change(_method_changed, method, [preset, clip_model, prob_thd, refine, mask_generator, points_per_side],
                      queue=False, api_visibility="undocumented")
        preset.change(lambda name: PRESETS[name].prob_thd if name in PRESETS else 0.0, preset, prob_thd, queue=False,
                      api_visibility="undocumented")
        button.click(run_trident, [image, classes, preset, prob_thd, refine, clip_model, method, mask_generator,
                                   points_per_side],
                     [annotated, coarse, regions, heatmaps, files, table, summary], api_name="trident", **limits,
                     preprocess=False)  # the engine reads the upload itself: a bad file gets its own message
