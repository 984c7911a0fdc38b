"""The IPSeg tab: segment the concept of a prompt image in target images."""

from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr

from vision.hub import ModelHub, get_hub
from vision.ui import helpers as ui
from vision.ui.helpers import tiny_prefix


@functools.lru_cache(maxsize=4)
def _ipseg_engine(config):
    """One IPSeg engine per settings (each keeps its prompt-feature cache across requests)."""
    from vision.engines.ipseg import IPSeg

    return IPSeg(config, hub=get_hub())


def _sd_weights_present() -> bool:
    from vision import weights

    return all(weights.status(n) != "missing" for n in ("sd15_unet", "sd15_vae", "sd15_text_encoder"))


@ui.GPU(duration=120)
def _ipseg_segment(config, prompt, targets: list[str]):
    return _ipseg_engine(config).segment_batch(prompt, targets)


@ui.friendly_errors
def run_ipseg(prompt_value, targets_value, region_kind, fast, instances, threshold, sam_model,
              progress=gr.Progress(track_tqdm=True)):
    """Segment the prompt's concept in every target image (IPSeg)."""
    from vision.engines.ipseg import IPSegConfig, Prompt

    image, painted = ui.editor_image_and_mask(prompt_value)
    targets = ui.require(ui.gallery_paths(targets_value), "one or more target images")
    prompt = Prompt(image, **({region_kind: painted} if painted is not None else {}))
    settings = dict(max_instances=int(instances), sam_model=sam_model,
                    presence_threshold=float(threshold) if threshold and threshold > 0 else None)
    config = IPSegConfig.fast(**settings) if fast else IPSegConfig(**settings)
    progress(0.0, desc=f"segmenting {len(targets)} target(s), {config.mode}")
    results = _ipseg_segment(config, prompt, targets)
    folder = ui.output_folder()
    annotated, overlays, files, rows = [], [], [], []
    for t, result in enumerate(results):
        stem = f"{t + 1:02d}_{ui.safe_name(Path(targets[t]).stem, 'target')}"
        labels = [(inst.mask, f"{c.name} {k + 1} (score {inst.score:.3f})")
                  for c in result.concepts for k, inst in enumerate(c.instances)]
        annotated.append((result.image, labels))
        overlay = result.overlay()
        c0 = result.concepts[0]
        overlays.append((overlay, f"{t + 1}: {'present' if c0.present else 'absent'}, "
                                  f"presence {c0.presence:.3f}, {len(result.masks)} mask(s)"))
        for name, value in result.to_files().items():
            files.append(ui.save_png(ui.mask_image(value), folder, f"{stem}_{Path(name).stem}"))
        for c in result.concepts:
            head = [t + 1, Path(targets[t]).name, c.name, c.present, round(c.presence, 4)]
            rows += [head + [k + 1, round(inst.score, 4), round(inst.sam_iou, 4), int(inst.mask.sum())]
                     for k, inst in enumerate(c.instances)] or [head + [0, None, None, 0]]  # absent: no mask
    region = results[0].concepts[0].prompt_regions[0]
    notes = "; ".join(dict.fromkeys(n for r in results for n in r.notes))
    if notes:
        ui.warn(notes)
    summary = (f"{tiny_prefix(get_hub())}{len(results)} target(s), mode **{config.mode}**, "
               f"SAM `{config.sam_model}`, prompt region from **{region['source']}** ({region['grid']}), "
               f"{sum(r.timings['total'] for r in results):.2f} s." + (f" Notes: {notes}" if notes else ""))
    return annotated[0], overlays, files, rows, summary, annotated


IPSEG_HEADERS = ["target #", "target", "concept", "present", "presence", "instance", "score", "SAM IoU", "area (px)"]


def ipseg_tab(hub: ModelHub, limits: dict) -> None:
    samples = ui.sample_paths()
    with gr.Tab("IPSeg", id="ipseg"):
        gr.Markdown("**IPSeg**: show a concept in a prompt image and find it in target images. Paint over the "
                    "concept with the brush, or leave the prompt unpainted to use its automatic foreground.")
        with gr.Row():
            with gr.Column():
                prompt = gr.ImageEditor(label="Prompt image (paint the concept, or leave unpainted)",
                                        type="numpy", format="png", layers=False, transforms=(),
                                        sources=("upload", "clipboard"), elem_id="ipseg-prompt",
                                        value=samples["chelsea"],
                                        brush=gr.Brush(colors=["#ff3030"], color_mode="fixed"))
                targets = gr.Gallery(label="Target images (one or more)", type="filepath", interactive=True,
                                     columns=3, height=220, elem_id="ipseg-targets",
                                     value=[samples["chelsea"], samples["coffee"]])
                with gr.Accordion("Options", open=False):
                    region_kind = gr.Radio(["mask", "scribble"], value="mask", label="Painting marks",
                                           info="mask: painted over the whole concept; scribble: a few strokes on it")
                    fast = gr.Checkbox(value=hub.tiny or not _sd_weights_present(),
                                       label="Fast mode (DINOv2 only, no Stable Diffusion features)")
                    instances = gr.Slider(1, 8, value=1, step=1, label="Instances per target (max)")
                    threshold = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Presence threshold",
                                          info="below it a target answers 'absent'; 0 = always a mask")
                    sam_model = gr.Dropdown(["sam_b", "sam_h"], value="sam_b", label="Segmenter (SAM)")
                button = gr.Button("Segment", variant="primary", elem_id="ipseg-run")
            with gr.Column():
                annotated = gr.AnnotatedImage(label="Masks (click a result below to show another target)",
                                              format="png", elem_id="ipseg-annotated")
                overlays = gr.Gallery(label="All targets: masks and point prompts (green +, red -)", columns=3,
                                      format="png", height=220, elem_id="ipseg-overlays")
                summary = gr.Markdown(elem_id="ipseg-summary")
                scores = gr.Dataframe(headers=IPSEG_HEADERS, label="Scores", interactive=False)
                files = gr.File(label="Download masks and overlays (PNG)", file_count="multiple")
        state = gr.State([], time_to_live=3600)  # every target's annotated image
        gr.Examples([[samples["astronaut"], [samples["astronaut"], samples["rocket"]]],
                     [samples["coffee"], [samples["coffee"], samples["chelsea"]]]],
                    inputs=[prompt, targets], label="Examples (skimage.data photographs)")
        button.click(run_ipseg, [prompt, targets, region_kind, fast, instances, threshold, sam_model],
                     [annotated, overlays, files, scores, summary, state], api_name="ipseg", **limits)
        overlays.select(_pick_target, state, annotated, api_visibility="undocumented", queue=False)


def _pick_target(state: list, evt: gr.SelectData):
    return state[evt.index] if state and evt.index is not None and evt.index < len(state) else gr.skip()
