"""The Generate tab: Stable Diffusion text-to-image or image-to-image with DeepCache, and the
with/without comparison as a before/after slider with the measured speed-up."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from vision.hub import ModelHub, get_hub
from vision.ui import errors, examples, form, gpu, notices, runs, storage
from vision.ui.notices import tiny_prefix
from vision.ui.uploads import check_before_decoding

MODEL_HELP = ("sd15: Stable Diffusion 1.5 (512 px); sdxl: SDXL base 1.0 (1024 px); realvisxl: RealVisXL V4.0, "
              "an SDXL fine-tune; sd35_medium: Stable Diffusion 3.5 Medium and sd35_large: SD 3.5 Large (DiTs, "
              "1024 px)")
START_STRENGTH = 0.75  # img2img strength when a caller gives none (GenerateConfig's default)
TINY_STEPS = 4  # the tab's default steps in tiny mode (outputs are noise: keep runs short)
HOW_TO_READ = ("How to read this: the summary gives the time of the run and how many UNet calls DeepCache "
               "skipped (partial calls run only the shallow branch). In *Compare*, drag the slider: left of the "
               "line is the image without DeepCache, right of it the image with DeepCache, from the same seed; "
               "the speed-up is the plain run's time over the cached run's, measured one after the other.")


@gpu.GPU(duration=180)
def _generate(prompt: str, config, image: str | None, on_progress=None):
    from vision.engines.generate import GenerateEngine

    return GenerateEngine(config, get_hub())(prompt, image=image, progress=on_progress)


def _generate_config(preset, negative, steps, guidance, seed, scheduler, family, size, use_deepcache, interval,
                     branch, schedule, strength, compare: bool):
    """The preset's :class:`GenerateConfig` with the tab's settings; steps and size checked against
    :mod:`vision.limits` (the CLI's limits) before any model loads."""
    from vision.engines.generate import GenerateConfig
    from vision.limits import check_side, check_steps

    steps = check_steps(int(steps), "Steps")
    size = check_side(int(size), "Size") if size else None
    return GenerateConfig.from_preset(
        preset or "default", family=family, scheduler=scheduler, steps=steps, guidance=float(guidance),
        negative_prompt=(negative or "").strip() or None, width=size, height=size, seed=int(seed),
        deepcache=int(interval) if use_deepcache or compare else 0, branch=int(branch), schedule=schedule,
        strength=float(strength), compare=compare)


def _mode(config) -> str:
    return f"preset **{config.preset}**, {config.mode} mode"


def _generation_summary(result) -> str:
    from vision.wording import plural, speed_change

    config = result.config
    kind = f"image-to-image (strength {config.strength:g})" if result.img2img else "text-to-image"
    lines = [f"{tiny_prefix(get_hub())}{kind}, {result.width}x{result.height}, {plural(config.steps, 'step')} "
             f"({config.scheduler}), seed {result.seeds[0]}, {_mode(config)}: **{result.seconds:.2f} s**"]
    calls = result.deepcache
    if calls:
        lines.append(f"DeepCache N={config.deepcache}, branch {config.branch}, {config.schedule}: "
                     f"{plural(calls['full_calls'], 'full UNet call')} and "
                     f"{plural(calls['partial_calls'], 'partial call')} (full steps {calls['full_steps']}).")
    else:
        lines.append("DeepCache off: every step runs the full UNet.")
    if result.speedup is not None:
        diff = result.difference()
        lines.append(f"**Measured: {speed_change(result.baseline_seconds, result.seconds)} with DeepCache** (without "
                     f"{result.baseline_seconds:.2f} s, with {result.seconds:.2f} s; warm runs, same seed). Difference: mean "
                     f"{diff['mean_abs']:.2f}/255, PSNR {diff['psnr_db']} dB.")
    return "\n\n".join(lines)


def _generation_files(result) -> list[str]:
    folder = storage.output_folder()
    names = {"png": "deepcache" if result.deepcache else "image", "plain.png": "without_deepcache"}
    return [storage.save_png(image, folder, names.get(suffix, Path(suffix).stem))
            for suffix, image in result.to_files().items()]


def _step_progress(progress, run: runs.Run):
    """The engine's per-denoising-step reports as ``gr.Progress`` updates, stopping the run when its client
    leaves (None on ZeroGPU, whose GPU process cannot call back into the page)."""
    if gpu.ON_ZERO_GPU:
        return None
    return run.progress(progress)


@errors.friendly_errors
def run_generate(prompt, negative, preset, steps, guidance, seed, scheduler, family, size, use_deepcache, interval,
                 branch, schedule, init_image=None, strength=START_STRENGTH, progress=gr.Progress(),
                 request: gr.Request = None):
    """Text-to-image (or image-to-image from ``init_image``) with Stable Diffusion, DeepCache on or off."""
    form.require((prompt or "").strip(), "a prompt")
    config = _generate_config(preset, negative, steps, guidance, seed, scheduler, family, size, use_deepcache,
                              interval, branch, schedule, strength, compare=False)
    run = runs.Run(request, "generate")
    run.check()  # a request whose client left while it was queued does nothing
    progress(0.0, desc="loading the models")
    result = _generate(prompt, config, form.file_path(init_image), _step_progress(progress, run))
    return result.images[0], _generation_summary(result), _generation_files(result)


@errors.friendly_errors
def run_compare(prompt, negative, preset, steps, guidance, seed, scheduler, family, size, use_deepcache, interval,
                branch, schedule, init_image=None, strength=START_STRENGTH, progress=gr.Progress(),
                request: gr.Request = None):
    """The same seed without and with DeepCache: a before/after slider and the measured speed-up."""
    form.require((prompt or "").strip(), "a prompt")
    if int(interval) < 2:
        raise ValueError("DeepCache interval N must be at least 2 to compare (N=1 runs every step in full).")
    config = _generate_config(preset, negative, steps, guidance, seed, scheduler, family, size, use_deepcache,
                              interval, branch, schedule, strength, compare=True)
    run = runs.Run(request, "generate")
    run.check()  # a request whose client left while it was queued does nothing
    progress(0.0, desc="loading the models")
    result = _generate(prompt, config, form.file_path(init_image), _step_progress(progress, run))
    before_after = (result.baseline_images[0], result.images[0])
    return before_after, _generation_summary(result), _generation_files(result)


def preset_settings(name: str, tiny: bool) -> tuple:
    """The tab's controls as preset ``name`` sets them (steps, guidance, scheduler, family, size,
    DeepCache on, N, branch, schedule); tiny mode keeps its short runs and native size."""
    from vision.engines.generate import GenerateConfig

    c = GenerateConfig.from_preset(name)
    return (TINY_STEPS if tiny else c.steps, c.guidance, c.scheduler, c.family, 0 if tiny else (c.width or 0),
            c.deepcache > 0, max(1, c.deepcache), c.branch, c.schedule)


def generate_tab(hub: ModelHub, limits: dict) -> None:
    from vision.engines.generate import FAMILIES, PRESETS, SCHEDULERS, GenerateConfig
    from vision.limits import MAX_SIDE, MAX_STEPS, SIDE_MULTIPLE

    defaults = GenerateConfig()
    with gr.Tab("Generate", id="generate"):
        notices.missing_weights_note(hub, "generate")
        gr.Markdown("**Stable Diffusion with DeepCache**: DeepCache reuses the deep UNet features of a full "
                    "step for the next N-1 steps and runs only the shallow branch in between. "
                    "*Compare* runs the same seed with and without it and measures the speed-up. Upload a start "
                    "image for image-to-image.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="generate-prompt",
                                    value="a lighthouse on a cliff at sunset, oil painting")
                negative = gr.Textbox(label="Negative prompt", value="lowres, blurry, worst quality")
                preset = gr.Dropdown(list(PRESETS), value=defaults.preset, label="Preset",
                                     info="paper: the DeepCache paper's SD1.5 setting (PLMS 50 steps, N=5, "
                                          "reference mode)")
                with gr.Row():
                    steps = gr.Slider(1, MAX_STEPS, value=TINY_STEPS if hub.tiny else defaults.steps, step=1,
                                      label="Steps")
                    guidance = gr.Slider(0.0, 15.0, value=defaults.guidance, step=0.5, label="Guidance (CFG)")
                with gr.Row():
                    seed = gr.Number(value=defaults.seed, precision=0, minimum=0, label="Seed")
                    scheduler = gr.Dropdown(list(SCHEDULERS), value=defaults.scheduler, label="Scheduler")
                with gr.Row():
                    family = gr.Dropdown(list(FAMILIES), value=defaults.family, label="Model", info=MODEL_HELP)
                    size = gr.Slider(0, MAX_SIDE, value=0, step=SIDE_MULTIPLE,
                                     label="Size (0 = the model's native size, or the start image's)")
                with gr.Group():
                    with gr.Row():
                        use_deepcache = gr.Checkbox(value=True, label="DeepCache")
                        interval = gr.Slider(1, 10, value=defaults.deepcache, step=1, label="Interval N")
                        branch = gr.Slider(0, 5, value=defaults.branch, step=1, label="Branch",
                                           info="0 fastest, 1 the paper's")
                    schedule = gr.Radio(["uniform", "nonuniform"], value=defaults.schedule, label="Schedule")
                with gr.Accordion("Image-to-image", open=False):
                    init_image = gr.Image(label="Start image (empty = text-to-image)", type="filepath", image_mode=None,
                                          sources=["upload", "clipboard"], elem_id="generate-init")
                    check_before_decoding(init_image, "start image")  # a bad file: a message naming it
                    strength = gr.Slider(0.05, 1.0, value=defaults.strength, step=0.05, label="Strength",
                                         info="how much of the start image is re-drawn (1 = all of it)")
                with gr.Row():
                    button = gr.Button("Generate", variant="primary", elem_id="generate-run")
                    compare = gr.Button("Compare with and without DeepCache", elem_id="generate-compare")
            with gr.Column():
                image = gr.Image(label="Result (with DeepCache when on)", format="png", interactive=False,
                                 elem_id="generate-image")
                slider = gr.ImageSlider(label="Compare: without DeepCache | with DeepCache", format="png",
                                        interactive=False, elem_id="generate-slider")
                summary = gr.Markdown(label="Summary", elem_id="generate-summary")
                files = gr.File(label="Download (PNG)", file_count="multiple")
                gr.Markdown(HOW_TO_READ)
        for shown in (image, slider):  # images written once per request (vision.ui.storage)
            storage.written_once(shown)
        inputs = [prompt, negative, preset, steps, guidance, seed, scheduler, family, size, use_deepcache, interval,
                  branch, schedule, init_image, strength]
        example_steps = TINY_STEPS if hub.tiny else 30
        examples.example_button(
            f'Example: "a red fox in the snow, watercolour", negative "blurry", {example_steps} steps, '
            f"{defaults.scheduler}, DeepCache N=3 (click, then Generate or Compare)",
            ["a red fox in the snow, watercolour", "blurry", "default", example_steps, 7.5, 7,
             defaults.scheduler, "sd15", 0, True, 3, 1, "uniform", None, defaults.strength],
            inputs, "generate-example")
        preset.input(lambda name: preset_settings(name, hub.tiny), preset,
                     [steps, guidance, scheduler, family, size, use_deepcache, interval, branch, schedule],
                     queue=False, api_visibility="undocumented")
        button.click(run_generate, inputs, [image, summary, files], api_name="generate", **limits)
        compare.click(run_compare, inputs, [slider, summary, files], api_name="generate_compare", **limits)
