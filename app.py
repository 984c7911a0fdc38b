"""Training-free vision in one page: IPSeg, Trident, Stable Diffusion + DeepCache, Story-Adapter.

The Gradio app and the Hugging Face Space entry point. It holds no engine logic: every tab calls its
engine's pipeline (``vision.engines.*``) and shows the fields of the result.

    python app.py [--tiny] [--host HOST] [--port PORT] [--share] [--device DEVICE] [--concurrency N]

Every engine's run event has an API name (``/ipseg``, ``/trident``, ``/generate``, ``/story``) so
``gradio_client`` can call it. All engine events share one queue slot group (``concurrency_id="gpu"``)
whose size (``--concurrency``, default 1) protects the GPU; other requests wait in the queue.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from vision import ui_helpers as ui  # noqa: E402
from vision.hub import ModelHub, get_hub, set_hub, tiny_requested  # noqa: E402
from vision.tiny import TINY_NOTICE  # noqa: E402


GPU_GROUP = "gpu"  # every engine event shares this concurrency group
QUEUE_MAX = 64  # requests waiting beyond this are refused with "queue full" instead of piling up
CSS = """
#tiny-banner {background: #fff3cd; border: 2px solid #d39e00; border-radius: 8px; padding: 4px 12px;}
#tiny-banner p {color: #5c4400; font-weight: 700; margin: 4px 0;}
.toast-message-text {white-space: pre-wrap;}  /* multi-line errors (missing-weights advice) stay readable */
"""


def _tiny_prefix(hub: ModelHub) -> str:
    return f"**{TINY_NOTICE}**\n\n" if hub.tiny else ""


# ------------------------------------------------------------------------------------ models panel
def models_panel(hub: ModelHub):
    return ui.device_summary(hub), ui.models_table(hub), ui.weights_table()


def _models_tab(hub: ModelHub):
    with gr.Tab("Models", id="models"):
        summary = gr.Markdown(elem_id="models-summary")
        models = gr.Dataframe(headers=ui.MODELS_HEADERS, label="Models (shared by every engine)",
                              interactive=False, wrap=True, elem_id="models-table")
        weights = gr.Dataframe(headers=ui.WEIGHTS_HEADERS, label="Weights on disk (downloaded on first use)",
                               interactive=False, wrap=True)
        refresh = gr.Button("Refresh", elem_id="models-refresh")
        outputs = [summary, models, weights]
        refresh.click(lambda: models_panel(hub), outputs=outputs, api_name="models", queue=False)
    return outputs


# ------------------------------------------------------------------------------------------ layout
def build_demo(concurrency: int = 1) -> gr.Blocks:
    """The whole page, on the process-wide model hub (``set_hub`` it first; tiny with ``VISION_TINY=1``)."""
    hub = get_hub()
    ui.make_gradio_cache_atomic()
    limits = dict(concurrency_limit=concurrency, concurrency_id=GPU_GROUP)
    with gr.Blocks(title="Training-free vision", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# Training-free vision\nImage-prompt segmentation (IPSeg), open-vocabulary segmentation "
                    "(Trident), Stable Diffusion with DeepCache, and long-story visualisation (Story-Adapter), "
                    "all on shared foundation models.")
        if hub.tiny:
            gr.Markdown(f"⚠️ {TINY_NOTICE}", elem_id="tiny-banner")
        with gr.Tabs():
            for build_tab in TABS:
                build_tab(hub, limits)
            panel = _models_tab(hub)
        demo.load(lambda: models_panel(hub), outputs=panel, queue=False, api_visibility="undocumented")
    demo.queue(max_size=QUEUE_MAX, default_concurrency_limit=concurrency)
    return demo


# ------------------------------------------------------------------------------------------- IPSeg
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
    summary = (f"{_tiny_prefix(get_hub())}{len(results)} target(s), mode **{config.mode}**, "
               f"SAM `{config.sam_model}`, prompt region from **{region['source']}** ({region['grid']}), "
               f"{sum(r.timings['total'] for r in results):.2f} s." + (f" Notes: {notes}" if notes else ""))
    return annotated[0], overlays, files, rows, summary, annotated


IPSEG_HEADERS = ["target #", "target", "concept", "present", "presence", "instance", "score", "SAM IoU", "area (px)"]


def _ipseg_tab(hub: ModelHub, limits: dict) -> None:
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


# ----------------------------------------------------------------------------------------- Trident
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
    summary = (f"{_tiny_prefix(get_hub())}{len(names)} classes, preset **{config.preset}**, prob threshold "
               f"{config.prob_thd:g}, refinement {'on' if config.refine else 'off'} "
               f"({record.get('kept_masks', 0)} SAM masks kept), {result.timings['total']:.2f} s."
               + (f" Names truncated to CLIP's 77 tokens: {', '.join(truncated)}." if truncated else ""))
    return annotated, files, rows, summary


def _trident_tab(hub: ModelHub, limits: dict) -> None:
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


# ---------------------------------------------------------------------------------------- Generate
@ui.GPU(duration=180)
def _generate(prompt: str, config):
    from vision.engines.generate import generate

    return generate(prompt, config, hub=get_hub())


def _generate_config(negative, steps, guidance, seed, scheduler, family, size, use_deepcache, interval, branch,
                     schedule, compare: bool):
    from vision.engines.generate import GenerateConfig

    size = int(size) if size else None
    return GenerateConfig(family=family, scheduler=scheduler, steps=int(steps), guidance=float(guidance),
                          negative_prompt=(negative or "").strip() or None, width=size, height=size,
                          seed=int(seed), deepcache=int(interval) if use_deepcache or compare else 0,
                          branch=int(branch), schedule=schedule, compare=compare)


def _generation_summary(result) -> str:
    calls = result.deepcache
    lines = [f"{_tiny_prefix(get_hub())}{result.width}x{result.height}, {result.config['steps']} steps "
             f"({result.config['scheduler']}), seed {result.seeds[0]}: **{result.seconds:.2f} s**"]
    if calls:
        lines.append(f"DeepCache N={result.config['deepcache']}, branch {result.config['branch']}, "
                     f"{result.config['schedule']}: {calls['full_calls']} full and {calls['partial_calls']} "
                     f"partial UNet calls (full steps {calls['full_steps']}).")
    else:
        lines.append("DeepCache off: every step runs the full UNet.")
    if result.speedup is not None:
        diff = result.difference()
        lines.append(f"**Measured speed-up: {result.speedup:.2f}x** (without DeepCache "
                     f"{result.baseline_seconds:.2f} s, with {result.seconds:.2f} s; same seed). Difference: mean "
                     f"{diff['mean_abs']:.2f}/255, PSNR {diff['psnr_db']} dB.")
    return "\n\n".join(lines)


def _generation_files(result) -> list[str]:
    folder = ui.output_folder()
    names = {"png": "deepcache" if result.deepcache else "image", "plain.png": "without_deepcache"}
    return [ui.save_png(image, folder, names.get(suffix, Path(suffix).stem))
            for suffix, image in result.to_files().items()]


@ui.friendly_errors
def run_generate(prompt, negative, steps, guidance, seed, scheduler, family, size, use_deepcache, interval, branch,
                 schedule, progress=gr.Progress(track_tqdm=True)):
    """Text-to-image with Stable Diffusion, DeepCache on or off."""
    ui.require((prompt or "").strip(), "a prompt")
    config = _generate_config(negative, steps, guidance, seed, scheduler, family, size, use_deepcache, interval,
                              branch, schedule, compare=False)
    progress(0.0, desc="generating")
    result = _generate(prompt, config)
    return result.images[0], _generation_summary(result), _generation_files(result)


@ui.friendly_errors
def run_compare(prompt, negative, steps, guidance, seed, scheduler, family, size, use_deepcache, interval, branch,
                schedule, progress=gr.Progress(track_tqdm=True)):
    """The same seed with and without DeepCache: both images and the measured speed-up."""
    ui.require((prompt or "").strip(), "a prompt")
    if int(interval) < 2:
        raise ValueError("DeepCache interval N must be at least 2 to compare (N=1 runs every step in full).")
    config = _generate_config(negative, steps, guidance, seed, scheduler, family, size, use_deepcache, interval,
                              branch, schedule, compare=True)
    progress(0.0, desc="generating without and with DeepCache")
    result = _generate(prompt, config)
    return result.images[0], result.baseline_images[0], _generation_summary(result), _generation_files(result)


def _generate_tab(hub: ModelHub, limits: dict) -> None:
    from vision.engines.generate import FAMILIES, SCHEDULERS, GenerateConfig

    defaults = GenerateConfig()
    with gr.Tab("Generate", id="generate"):
        gr.Markdown("**Stable Diffusion with DeepCache**: DeepCache reuses the deep UNet features of a full "
                    "step for the next N-1 steps and runs only the shallow branch in between. "
                    "*Compare* runs the same seed with and without it and measures the speed-up.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="generate-prompt",
                                    value="a lighthouse on a cliff at sunset, oil painting")
                negative = gr.Textbox(label="Negative prompt", value="lowres, blurry, worst quality")
                with gr.Row():
                    steps = gr.Slider(1, 100, value=4 if hub.tiny else 50, step=1, label="Steps")
                    guidance = gr.Slider(0.0, 15.0, value=defaults.guidance, step=0.5, label="Guidance (CFG)")
                with gr.Row():
                    seed = gr.Number(value=defaults.seed, precision=0, minimum=0, label="Seed")
                    scheduler = gr.Dropdown(list(SCHEDULERS), value="pndm", label="Scheduler")
                with gr.Row():
                    family = gr.Dropdown(list(FAMILIES), value=defaults.family, label="Model")
                    size = gr.Slider(0, 1024, value=0, step=64, label="Size (0 = the model's native size)")
                with gr.Group():
                    with gr.Row():
                        use_deepcache = gr.Checkbox(value=True, label="DeepCache")
                        interval = gr.Slider(1, 10, value=defaults.deepcache, step=1, label="Interval N")
                        branch = gr.Slider(0, 5, value=defaults.branch, step=1, label="Branch",
                                           info="0 fastest, 1 the paper's")
                    schedule = gr.Radio(["uniform", "nonuniform"], value=defaults.schedule, label="Schedule")
                with gr.Row():
                    button = gr.Button("Generate", variant="primary", elem_id="generate-run")
                    compare = gr.Button("Compare with and without DeepCache", elem_id="generate-compare")
            with gr.Column():
                with gr.Row():
                    image = gr.Image(label="Result (with DeepCache when on)", format="png", interactive=False,
                                     elem_id="generate-image")
                    plain = gr.Image(label="Without DeepCache (compare)", format="png", interactive=False,
                                     elem_id="generate-plain")
                summary = gr.Markdown(elem_id="generate-summary")
                files = gr.File(label="Download (PNG)", file_count="multiple")
        inputs = [prompt, negative, steps, guidance, seed, scheduler, family, size, use_deepcache, interval, branch,
                  schedule]
        button.click(run_generate, inputs, [image, summary, files], api_name="generate", **limits)
        compare.click(run_compare, inputs, [image, plain, summary, files], api_name="generate_compare", **limits)


# ------------------------------------------------------------------------------------------- Story
def _story_round_view(result, r: int) -> tuple[list[tuple[str, str]], str]:
    """Gallery items (frame file, caption) of round ``r`` and its storyboard (the final one when done)."""
    entry = result.files["rounds"][str(r)]
    items = [(str(result.output_dir / name), f"{i + 1}. {prompt}")
             for i, (name, prompt) in enumerate(zip(entry["frames"], result.prompts))]
    board = result.files["storyboard"] if result.complete else entry["storyboard"]
    return items, str(result.output_dir / board)


@ui.GPU(duration=300)
def _story_round(prompts: list[str], config, out: Path, r: int, on_progress=None):
    """Run the story engine up to round ``r``; it resumes from its own folder, so each call adds one round.

    One GPU call per round keeps every call short (and its arguments picklable, as ZeroGPU needs).
    """
    from vision.engines.story import StoryEngine

    return StoryEngine(get_hub()).run(prompts, config, out, on_progress=on_progress, stop_after_round=r)


@ui.friendly_errors
def run_story(story_text, style, rounds, seed, steps, use_deepcache, interval,
              progress=gr.Progress(track_tqdm=True)):
    """Illustrate a story (one frame per line); yields the gallery after every round, then the storyboard."""
    from vision.engines.story import StoryConfig

    ui.require((story_text or "").strip(), "a story (one frame prompt per line)")
    config = StoryConfig(rounds=int(rounds), seed=int(seed), steps=int(steps), style=style,
                         deepcache=int(interval) if use_deepcache else 0)
    tiny = _tiny_prefix(get_hub())
    out = ui.output_folder() / "story"
    # Frame-level progress from the engine; on ZeroGPU (separate GPU process) the page gets round-level only.
    on_progress = None if ui.ON_ZERO_GPU else (lambda p: progress(p.fraction, desc=p.message))
    for r in range(config.rounds + 1):
        progress(r / (config.rounds + 1), desc=f"round {r}/{config.rounds}")
        result = _story_round(story_text.splitlines(), config, out, r, on_progress)
        items, board = _story_round_view(result, r)
        status = (f"{tiny}Round {r}/{config.rounds} done ({len(items)} frames, reference weight "
                  f"{config.lambda_of(r):.2f}, {result.timings[r]['seconds']:.1f} s).")
        if result.complete:
            status += f" Finished: {len(items)} frames after {config.rounds + 1} passes."
        yield items, status, board, [str(p) for p in result.paths()] if result.complete else None


def _story_tab(hub: ModelHub, limits: dict) -> None:
    from vision.engines.story import STYLES, StoryConfig

    defaults = StoryConfig()
    with gr.Tab("Story", id="story"):
        gr.Markdown("**Story-Adapter**: one frame per line. Round 0 draws each frame from its text; every "
                    "further round redraws all frames while attending to all frames of the round before, "
                    "so characters and style converge. The gallery updates after each round.")
        with gr.Row():
            with gr.Column():
                story = gr.Textbox(label="Story (one frame per line)", lines=6, elem_id="story-text",
                                   value="a red fox wakes up in a snowy forest\nthe fox crosses a frozen river\n"
                                         "the fox finds a warm cabin at dusk")
                with gr.Row():
                    style = gr.Dropdown(list(STYLES), value="comic", label="Style")
                    rounds = gr.Slider(0, 10, value=1 if hub.tiny else defaults.rounds, step=1,
                                       label="Rounds (after round 0)")
                with gr.Row():
                    seed = gr.Number(value=defaults.seed, precision=0, label="Seed (all frames, all rounds)")
                    steps = gr.Slider(1, 100, value=2 if hub.tiny else 30, step=1, label="Denoising steps")
                with gr.Row():
                    deepcache = gr.Checkbox(value=True, label="DeepCache")
                    interval = gr.Slider(2, 10, value=defaults.deepcache, step=1, label="DeepCache interval N")
                button = gr.Button("Illustrate the story", variant="primary", elem_id="story-run")
            with gr.Column():
                gallery = gr.Gallery(label="Frames (latest round)", columns=4, height="auto", elem_id="story-gallery")
                status = gr.Markdown(elem_id="story-status")
                board = gr.Image(label="Storyboard", type="filepath", interactive=False, elem_id="story-board")
                files = gr.File(label="Download: storyboard, final frames, manifest", file_count="multiple")
        button.click(run_story, [story, style, rounds, seed, steps, deepcache, interval],
                     [gallery, status, board, files], api_name="story", **limits)


TABS: list = [_ipseg_tab, _trident_tab, _generate_tab, _story_tab]


# -------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="tiny random-weight models: outputs are noise (for trying/testing the app)")
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1, or "
                        "GRADIO_SERVER_NAME; use 0.0.0.0 to serve the network)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860 or GRADIO_SERVER_PORT)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: best available)")
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("VISION_CONCURRENCY", 1)),
                        help="engine requests run at once (the rest queue); default 1 protects the GPU")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ui.limit_malloc_arenas()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.tiny:
        os.environ["VISION_TINY"] = "1"
    if args.tiny or args.device:
        set_hub(ModelHub(tiny=args.tiny or tiny_requested(), device=args.device))
    if get_hub().tiny:
        print(TINY_NOTICE, file=sys.stderr)
    demo = build_demo(concurrency=max(1, args.concurrency))
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True,
                ssr_mode=False, css=CSS)


if __name__ == "__main__":
    main()
