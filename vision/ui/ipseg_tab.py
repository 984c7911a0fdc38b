"""The IPSeg tab: segment the concept of a prompt image in target images, with IPSeg or GF-SAM (the
Method choice); GF-SAM's point graph is drawn beside its masks."""

from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr

from vision.hub import ModelHub, get_hub
from vision.ui import errors, examples, form, gpu, notices, runs, storage, uploads
from vision.ui.ipseg_method import METHOD_NAMES, gfsam_points, link_method_and_preset, method_choice
from vision.ui.ipseg_prompt import (
    CLICK_LABELS,
    add_prompt_click,
    check_clicks_on,
    editor_start,
    examples_and_upload,
    show_prompt_for_clicks,
)
from vision.ui.notices import tiny_prefix
from vision.ui.sam import default_sam, segment_engine
from vision.ui.uploads import check_before_decoding


@functools.lru_cache(maxsize=4)
def _ipseg_engine(config):
    """One IPSeg engine per settings (each keeps its prompt-feature cache across requests)."""
    from vision.engines.ipseg import IPSegEngine

    return IPSegEngine(config, hub=get_hub())


def _sd_weights_present() -> bool:
    from vision import weights

    return all(weights.status(n) != "missing" for n in ("sd15_unet", "sd15_vae", "sd15_text_encoder"))


@gpu.GPU(duration=120)
def _ipseg_segment(config, concepts, targets: list[str], names: list[str], on_progress=None):
    engine = _ipseg_engine(config)
    concepts = engine.prepare(concepts)  # a bad prompt is the prompt's error, not every target's (cached for them)
    return engine.segment_batch(concepts, targets, progress=on_progress, on_error="collect", names=names)


FEATURE_CHOICES = [("as the preset", "preset"), ("DINOv2 + Stable Diffusion 1.5 (the paper's)", "dino+sd"),
                   ("DINOv2 only", "dino"), ("SAM image embedding (PerSAM's; needs SAM alone)", "sam")]
SAM_CHOICES = [("as the preset (default: sam_b; paper, gfsam: sam_h; gfsam_fast: sam_t)", "preset"),
               ("sam_t (MobileSAM-class TinyViT)", "sam_t"),
               ("sam_b (ViT-B)", "sam_b"), ("sam_h (ViT-H, the paper's)", "sam_h")]
HOW_TO_READ = ("**How to read this:** *Masks* tints each instance found; the *heatmap* beside it is the similarity "
               "of every part of the target to the prompt's concept (blue: unlike, red: like; scaled per image), "
               "and the dots on both are the point prompts IPSeg chose from it for SAM (green: positive, red: "
               "negative). *Presence* is the mean of the highest similarities: compare it across targets.")
HOW_TO_READ_GFSAM = ("**How to read this:** *Masks* tints the union of the SAM masks GF-SAM kept; the *point graph* "
                     "beside it shows every point prompt GF-SAM chose (one SAM mask each), coloured by cluster (a line "
                     "from a point to each point its mask covers; linked points form a cluster): filled dots are the "
                     "points whose masks make the answer, rings were dropped by one gate (positive or "
                     "overshooting), crosses by both. *Presence* is the mean similarity to the prompt inside the "
                     "mask: compare it across targets.")


def ipseg_config(preset: str, features: str, sam_model: str, fast: bool, method: str | None = None, **settings):
    """The run's :class:`IPSegConfig`: the preset, then the tab's choices ("preset" keeps the preset's);
    ``fast`` drops Stable Diffusion from DINOv2 + SD features. ``method`` (None: the preset's): a preset of
    the other method is replaced by the method's own (``default`` for IPSeg, ``gfsam_fast`` for GF-SAM)."""
    from vision.engines.ipseg import IPSegConfig
    from vision.engines.ipseg.config import METHOD_PRESETS, PRESETS

    if method is not None and PRESETS.get(preset, {}).get("method", "ipseg") != method:
        preset = METHOD_PRESETS[method]
    chosen = {**PRESETS.get(preset, {}), **settings}
    if features != "preset":
        chosen["features"] = features
    if sam_model != "preset":
        chosen["sam_model"] = sam_model
    if fast and chosen.get("features", "dino+sd") == "dino+sd":
        chosen["features"] = "dino"
    return IPSegConfig.from_preset(preset, **chosen).validate()


MAX_CLICKS = 64  # the Segment engine's max_points


@gpu.GPU(duration=60)
def _segment_prompt(sam_model: str, image, points: list):
    return segment_engine(sam_model)(image, points, name="prompt image")


def click_sam(sam_model: str, preset: str) -> str:
    """The SAM that masks clicks: the tab's choice; "preset": the preset's SAM where its weights are on
    disk, else the Segment tab's default (sam_t when installed), so a click works on the weights at hand."""
    from vision import weights

    if sam_model != "preset":
        return sam_model
    sam = ipseg_config(preset, "preset", sam_model, False).sam_model
    return sam if get_hub().tiny or weights.status(sam) != "missing" else default_sam(get_hub())


def click_mask(image, clicks_text: str | None, sam_model: str, preset: str, shown_key: str | None = None):
    """Clicks on the prompt image (``"x, y, label; ..."``) -> SAM's best mask there (a
    :class:`~vision.engines.segment.SegmentResult`; :func:`click_sam`, through the Segment engine, whose
    embedding cache makes a click after the first cost the decoder only), or None without clicks.
    ``shown_key``: see :func:`check_clicks_on`."""
    points = form.parse_numbers(clicks_text, 3, "prompt clicks")
    if not points:
        return None
    if len(points) > MAX_CLICKS:
        raise ValueError(f"prompt clicks: {len(points)} given, at most {MAX_CLICKS} (SAM takes that many points; "
                         "paint the concept with the brush instead)")
    check_clicks_on(image, shown_key, "prompt clicks")
    sam = click_sam(sam_model, preset)
    result = _segment_prompt(sam, image, points)
    if not result.mask.any():
        raise ValueError(f"prompt clicks: SAM `{sam}` found no mask under {clicks_text.strip()!r}; click elsewhere "
                         "or paint the concept with the brush")
    return result


def prompt_concepts(prompt_value, box_text, region_kind, shots_value, concepts_value, concept_name, clicked=None):
    """The tab's prompts -> IPSeg concepts: the editor's image (its painting, or the box, or the mask SAM
    made from the clicks (``clicked``, bool [H, W]), or the automatic region) with the extra k-shot images,
    then one concept per image of the other-concepts gallery (named after the file). Also returns the
    prompt files (to name them in messages)."""
    from vision.engines.ipseg import Concept, Prompt

    image, painted = form.editor_image_and_mask(prompt_value)
    box = form.parse_box(box_text, "prompt box")
    given = [name for name, value in (("a painted region", painted), ("a box", box), ("clicks", clicked))
             if value is not None]
    if len(given) > 1:
        raise ValueError(f"prompt: give one of a painted region, a box or clicks, not {' and '.join(given)} "
                         "(clear the others)")
    region = ({region_kind: painted} if painted is not None else {"box": box} if box is not None
              else {"mask": clicked} if clicked is not None else {})
    shots, others = form.gallery_paths(shots_value), form.gallery_paths(concepts_value)
    name = (concept_name or "").strip() or "concept"
    concepts = [Concept([Prompt(image, **region), *(Prompt(p) for p in shots)], name)]
    taken = {name}
    for path in others:
        other = storage.safe_name(Path(path).stem, "concept")
        while other in taken:
            other += "_"
        taken.add(other)
        concepts.append(Concept([Prompt(path)], other))
    return concepts, shots + others


@errors.friendly_errors
def run_ipseg(prompt_value, targets_value, region_kind, fast, instances, threshold, sam_model, features="preset",
              preset="default", box_text="", shots_value=None, concepts_value=None, concept_name="concept",
              kshot="mean", clicks_text="", shown_key=None, method="ipseg", max_points=128,
              progress=gr.Progress(track_tqdm=True), request: gr.Request = None):
    """Segment the prompt's concept(s) in every target image (IPSeg or GF-SAM: ``method``); a bad target is
    listed, not fatal. ``clicks_text``: clicks on the prompt image; SAM's mask there is the prompt region.
    ``max_points``: GF-SAM's cap on its point prompts. Beside the masks: IPSeg's similarity heatmaps, or
    GF-SAM's point graphs (its heatmaps are in the downloads)."""
    run = runs.Run(request, "ipseg")
    run.check()  # a request whose client left while it was queued does nothing (it stops between stages too)
    targets = form.require(form.gallery_paths(targets_value), "one or more target images")
    clicked = click_mask(form.editor_image_and_mask(prompt_value)[0], clicks_text, sam_model, preset, shown_key)
    concepts, prompt_files = prompt_concepts(prompt_value, box_text, region_kind, shots_value, concepts_value,
                                             concept_name, None if clicked is None else clicked.mask)
    config = ipseg_config(preset, features, sam_model, bool(fast), method or "ipseg", max_instances=int(instances),
                          kshot=kshot, presence_threshold=float(threshold) if threshold and threshold > 0 else None,
                          max_points=int(max_points or 128))
    names = [Path(t).name for t in targets]
    progress(0.0, desc=f"segmenting {len(targets)} target(s), {config.feature_source}")
    try:
        results = _ipseg_segment(config, concepts, targets, names, run.progress(progress))
    except ValueError as err:  # name uploads as the user knows them, not Gradio's temporary copies
        raise type(err)(uploads.name_uploads(str(err), prompt_files + targets)) from None
    failed = [f"{e.name}: {uploads.name_uploads(e.message, targets)}" for e in results.errors]
    if not results:
        raise ValueError("no target could be segmented:\n" + "\n".join(failed))
    if failed:
        notices.warn(f"{len(failed)} target(s) skipped:\n" + "\n".join(failed))
    folder = storage.output_folder()
    annotated, overlays, heatmaps, files, rows = [], [], [], [], []
    for result in results:
        views = _target_views(result, names, targets, folder)
        for collected, part in zip((annotated, overlays, heatmaps, files, rows), views, strict=True):
            collected.extend(part)
    notes = "; ".join(dict.fromkeys(n for r in results for n in r.notes))
    if notes:
        notices.warn(notes)
    summary = _run_summary(results, concepts, config, clicked, notes, failed)
    return annotated[0], overlays, heatmaps, files, rows, summary, annotated


def _target_views(result, names: list[str], targets: list[str], folder) -> tuple[list, ...]:
    """One target's ([annotated image], [overlay], heatmaps or GF-SAM's point graphs (one per concept),
    saved files, score rows)."""
    t = result.index
    stem = f"{t + 1:02d}_{storage.safe_name(Path(targets[t]).stem, 'target')}"
    labels = [(inst.mask, f"{c.name} {k + 1} (score {inst.score:.3f})")
              for c in result.concepts for k, inst in enumerate(c.instances)]
    presences = ", ".join(f"{c.name} {'present' if c.present else 'absent'} {c.presence:.3f} ({c.presence_kind})"
                          for c in result.concepts)
    overlay = (result.overlay(), f"{t + 1} {names[t]}: {presences}; {len(result.masks)} mask(s)")
    pictures, rows = [], []
    for k, c in enumerate(result.concepts):
        if c.graph is not None:
            pictures.append((result.graph_image(k), f"{t + 1} {names[t]}: {c.name} {_graph_caption(c.graph)}"))
        else:
            lo, hi = float(c.similarity.min()), float(c.similarity.max())
            pictures.append((result.heatmap(k),
                             f"{t + 1} {names[t]}: {c.name} similarity {lo:.2f} (blue) to {hi:.2f} (red)"))
        head = [t + 1, names[t], c.name, c.present, round(c.presence, 4)]
        rows += [head + [k + 1, round(inst.score, 4), round(inst.sam_iou, 4), int(inst.mask.sum())]
                 for k, inst in enumerate(c.instances)] or [head + [0, None, None, 0]]  # absent: no mask
    files = [storage.save_png(storage.mask_image(value), folder, f"{stem}_{Path(name).stem}")
             for name, value in result.to_files(heatmaps=True).items()]
    return [(result.image, labels)], [overlay], pictures, files, rows


def _run_summary(results, concepts, config, clicked, notes: str, failed: list[str]) -> str:
    """The run's summary: what ran (method, preset, features, reference mode, SAM), the prompts, time,
    failures and how to read the outputs."""
    gfsam = config.method == "gfsam"
    region = results[0].concepts[0].prompt_regions[0]
    shots = len(concepts[0].prompts)
    kshot = f" (k-shot {'maps averaged' if gfsam else config.kshot})" if shots > 1 else ""
    clicks = f" (SAM `{clicked.sam_model}` from {len(clicked.points)} click(s))" if clicked is not None else ""
    return (f"{tiny_prefix(get_hub())}{len(results)} target(s), method **{METHOD_NAMES[config.method]}**, "
            f"preset **{config.preset}**, features **{config.feature_source}**, "
            f"reference mode **{'on' if config.reference else 'off'}**, SAM `{config.sam_model}`, "
            f"{len(concepts)} concept(s) ({', '.join(c.name for c in concepts)}), {shots} prompt image(s) for "
            f"{concepts[0].name}{kshot}, prompt region from **{region['source']}**{clicks} ({region['grid']}), "
            f"{sum(r.timings['total'] for r in results):.2f} s." + (f" Notes: {notes}" if notes else "")
            + (f"\n\n**{len(failed)} target(s) failed:** " + "; ".join(failed) if failed else "")
            + f"\n\n{HOW_TO_READ_GFSAM if gfsam else HOW_TO_READ}")


HEATMAP_LABEL = ("IPSeg: similarity heatmaps (blue low, red high) and the points; GF-SAM: point graphs (colour: "
                 "cluster; filled: in the mask, ring: dropped by one gate, cross: by both)")


def _graph_caption(graph) -> str:
    """One line on a concept's point graph, e.g. "point graph: 37 points, 2 clusters, 12 in the mask"."""
    if graph.cluster_count == 0:
        return "point graph: no point, no cluster (absent)"
    kept = int((graph.states == 1).sum()) if graph.fallback is None else 1
    fallback = ", the best-scored cluster's mask (no point passed both gates)" if graph.fallback is not None else ""
    return (f"point graph: {len(graph.points)} points, {graph.cluster_count} cluster(s), {kept} in the mask"
            f"{fallback}")


@errors.friendly_errors
def prompt_mask_from_clicks(prompt_value, clicks_text, sam_model="preset", preset="default", shown_key=None):
    """Clicks on the prompt -> the click view (SAM's mask and the clicks drawn on the prompt image) and a
    line on that mask. A run makes the same mask from the same clicks (the embedding is cached)."""
    image, _ = form.editor_image_and_mask(prompt_value)
    result = form.require(click_mask(image, clicks_text, sam_model, preset, shown_key), "a click on the prompt image")
    return result.overlay(), (f"{tiny_prefix(get_hub())}SAM `{result.sam_model}` mask from {len(result.points)} "
                              f"click(s): {int(result.mask.sum())} px, score {result.scores[0]:.3f}. Segment uses "
                              "it as the prompt region.")


IPSEG_HEADERS = ["target #", "target", "concept", "present", "presence", "instance", "score", "SAM IoU", "area (px)"]


def ipseg_tab(hub: ModelHub, limits: dict) -> None:
    from vision.ui.layout import cpu_preset

    samples = examples.sample_paths()
    cpu = cpu_preset(hub)  # no GPU: SAM features and sam_t by default (seconds per target, not minutes)
    with gr.Tab("IPSeg", id="ipseg"):
        notices.missing_weights_note(hub, "ipseg", ipseg_config("default", "sam" if cpu else "preset", "sam_t" if cpu
                                                                else "preset", hub.tiny or not _sd_weights_present()))
        gr.Markdown("**IPSeg** or **GF-SAM**: show a concept in a prompt image and find it in target images. "
                    "Paint over the concept with the brush, click on it for SAM's mask, type a box, or leave the "
                    "prompt unpainted to use its automatic foreground. More prompt images of the concept (k-shot) "
                    "and other concepts are optional.")
        c = {"method": method_choice()}
        with gr.Row():
            with gr.Column():
                c.update(_prompt_controls(samples))
                c.update(_more_prompts())
                c.update(_options(hub, cpu))
                button = gr.Button("Segment", variant="primary", elem_id="ipseg-run")
            with gr.Column():
                out = _outputs()
        _wire(c, out, button, samples, limits)


def _prompt_controls(samples: dict) -> dict:
    """The prompt image (painted in the editor, or uploaded through the server's check), its clicks for
    SAM's mask, its box, and the target images."""
    prompt = gr.ImageEditor(label="Prompt image (paint the concept, or leave unpainted)",
                            type="filepath", image_mode=None, format="png", layers=False, transforms=(),
                            sources=("clipboard",), elem_id="ipseg-prompt", value=editor_start(samples["chelsea"]),
                            brush=gr.Brush(colors=["#ff3030"], color_mode="fixed"))
    check_before_decoding(prompt, "prompt image")
    with gr.Row():  # uploads go through the server's check (the editor's own ignores a bad file)
        prompt_upload = gr.UploadButton("Upload a prompt image", file_types=["image"], type="filepath",
                                        size="sm", elem_id="ipseg-prompt-upload")
        prompt_status = gr.Markdown("", elem_id="ipseg-prompt-status")
    # open: the components of a closed accordion mount only when it opens, and an Examples row
    # picked before that would not reach them
    with gr.Accordion("Click to mask the prompt with SAM (instead of painting)", open=True):
        # each new prompt fills it from its file, or the editor on request; clicks are checked against the editor
        click_view = gr.Image(None, label="Click on the concept: SAM masks it", type="numpy",
                              format="png", interactive=False, sources=(), height=260, elem_id="ipseg-click")
        with gr.Row():
            show_here = gr.Button("Show the prompt here", elem_id="ipseg-click-show")
            click_kind = gr.Radio(list(CLICK_LABELS), value=next(iter(CLICK_LABELS)),
                                  label="A click adds", elem_id="ipseg-click-kind")
        clicks = gr.Textbox("", label="Prompt clicks: x, y, label (1 on the concept, 0 not); ';' "
                            "between clicks", elem_id="ipseg-clicks")
        click_note = gr.Markdown("", elem_id="ipseg-click-note")
        shown_key = gr.State(None)  # content_key of the image in the click view
    box = gr.Textbox("", label="Prompt box: x0, y0, x1, y1 in pixels (instead of painting)",
                     placeholder="empty: the painting, else the automatic foreground", elem_id="ipseg-box")
    targets = gr.Gallery(label="Target images (one or more)", type="filepath", interactive=True,
                         columns=3, height=220, elem_id="ipseg-targets",
                         value=[samples["chelsea"], samples["coffee"]])
    return {"prompt": prompt, "prompt_upload": prompt_upload, "prompt_status": prompt_status,
            "click_view": click_view, "show_here": show_here, "click_kind": click_kind, "clicks": clicks,
            "click_note": click_note, "shown_key": shown_key, "box": box, "targets": targets}


def _more_prompts() -> dict:
    with gr.Accordion("More prompts: k-shot images, other concepts", open=False):
        concept_name = gr.Textbox(value="concept", label="Name of the prompt's concept")
        shots = gr.Gallery(label="More prompt images of this concept (k-shot; automatic region each)",
                           type="filepath", interactive=True, columns=4, height=140, elem_id="ipseg-shots")
        kshot = gr.Radio(["mean", "max"], value="mean", label="k-shot: combine the prompt images by",
                         info="mean of their prototypes, or the per-pixel max of their similarities")
        concepts = gr.Gallery(label="Other concepts (one prompt image each, named after the file; "
                                    "automatic region)", type="filepath", interactive=True, columns=4,
                              height=140, elem_id="ipseg-concepts")
    return {"concept_name": concept_name, "shots": shots, "kshot": kshot, "concepts": concepts}


def _options(hub: ModelHub, cpu: bool) -> dict:
    from vision.engines.ipseg.config import PRESETS

    with gr.Accordion("Options", open=False):
        c = {"preset": gr.Radio(list(PRESETS), value="default", label="Preset",
                                info="paper: reproduces IPSeg's reference code (reference mode, SAM-H); "
                                     "fast: DINOv2 only; gfsam: GF-SAM's reference (DINOv2-L, SAM-H); "
                                     "gfsam_fast: GF-SAM on sam_t's own features", elem_id="ipseg-preset"),
             "features": gr.Dropdown(FEATURE_CHOICES, value="sam" if cpu else "preset", label="Features"),
             "region_kind": gr.Radio(["mask", "scribble"], value="mask", label="Painting marks",
                                     info="mask: painted over the whole concept; scribble: a few strokes on it"),
             "fast": gr.Checkbox(value=hub.tiny or not _sd_weights_present(),
                                 label="Skip Stable Diffusion (DINOv2 + SD features become DINOv2 only)"),
             "instances": gr.Slider(1, 8, value=1, step=1, label="Instances per target (max)"),
             "threshold": gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Presence threshold",
                                    info="below it a target answers 'absent'; 0 = always a mask. With SAM features "
                                         "and sam_t the presence is calibrated: 0.5 = even odds"),
             "sam_model": gr.Dropdown(SAM_CHOICES, value="sam_t" if cpu else "preset", label="Segmenter (SAM)")}
        c["max_points"] = gfsam_points()
    return c


def _outputs() -> dict:
    annotated = gr.AnnotatedImage(label="Masks (click a result below to show another target)",
                                  format="png", elem_id="ipseg-annotated")
    with gr.Row():
        overlays = gr.Gallery(label="Masks and point prompts (green +, red -)", columns=2,
                              format="png", height=220, elem_id="ipseg-overlays")
        heatmaps = gr.Gallery(label=HEATMAP_LABEL, columns=2, format="png", height=220, elem_id="ipseg-heatmaps")
    summary = gr.Markdown(label="Summary", elem_id="ipseg-summary")
    scores = gr.Dataframe(headers=IPSEG_HEADERS, label="Scores", interactive=False)
    files = gr.File(label="Download masks, overlays and heatmaps (PNG)", file_count="multiple")
    return {"annotated": annotated, "overlays": overlays, "heatmaps": heatmaps, "summary": summary,
            "scores": scores, "files": files}


INPUT_ORDER = ("prompt", "targets", "region_kind", "fast", "instances", "threshold", "sam_model", "features",
               "preset", "box", "shots", "concepts", "concept_name", "kshot", "clicks", "shown_key", "method",
               "max_points")


def _wire(c: dict, out: dict, button, samples: dict, limits: dict) -> None:
    for shown in (out["annotated"], out["overlays"], out["heatmaps"], c["click_view"]):
        storage.written_once(shown)  # images written once per request (vision.ui.storage)
    state = gr.State([], time_to_live=3600)  # every target's annotated image
    examples_and_upload(c, samples)
    results = [out[k] for k in ("annotated", "overlays", "heatmaps", "files", "scores", "summary")]
    button.click(run_ipseg, [c[name] for name in INPUT_ORDER], [*results, state], api_name="ipseg", **limits)
    out["overlays"].select(_pick_target, state, out["annotated"], api_visibility="undocumented", queue=False)
    link_method_and_preset(c["method"], c["preset"])
    # the SAM mask is shown in the click view, never written into the editor (a painted layer written
    # back from the server froze the editor in headless Chromium); a run makes it again from the clicks
    c["click_view"].select(add_prompt_click, [c["clicks"], c["click_kind"]], c["clicks"], queue=False,
                           api_visibility="undocumented").then(
        prompt_mask_from_clicks, [c["prompt"], c["clicks"], c["sam_model"], c["preset"], c["shown_key"]],
        [c["click_view"], c["click_note"]], api_name="ipseg_prompt_mask", **limits)
    c["show_here"].click(show_prompt_for_clicks, c["prompt"], [c[k] for k in ("click_view", "clicks", "click_note",
                                                                             "shown_key")],
                         queue=False, api_visibility="undocumented")


def _pick_target(state: list, evt: gr.SelectData):
    return state[evt.index] if state and evt.index is not None and evt.index < len(state) else gr.skip()
