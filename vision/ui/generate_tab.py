"""The Generate tab: Stable Diffusion text-to-image with DeepCache, and the with/without comparison."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from vision.hub import ModelHub, get_hub
from vision.ui import helpers as ui
from vision.ui.helpers import tiny_prefix


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
    lines = [f"{tiny_prefix(get_hub())}{result.width}x{result.height}, {result.config['steps']} steps "
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


def generate_tab(hub: ModelHub, limits: dict) -> None:
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
