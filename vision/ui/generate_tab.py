"""The Generate tab: Stable Diffusion (SD1.5, SDXL, SD3.5, or the user's own checkpoint with LoRAs and a
ControlNet) text-to-image or image-to-image with a cache, and the with/without comparison as a
before/after slider with the measured speed-up.

The ``/generate`` and ``/generate_compare`` API keeps its first 15 inputs; the model, LoRA, ControlNet and
cache inputs trail them (old callers get their defaults)."""

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
HOW_TO_READ = ("How to read this: the summary gives the model, its LoRAs and ControlNet, the time of the run and "
               "what the cache skipped (DeepCache's partial calls run only the shallow branch). In *Compare*, drag "
               "the slider: left of the line is the image without the cache, right of it the image with it, from "
               "the same seed; the speed-up is the plain run's time over the cached run's, measured one after the "
               "other.")
CONTROL_NONE = "none"


@gpu.GPU(duration=180)
def _generate(prompt: str, config, image: str | None, on_progress=None, control_image: str | None = None):
    from vision.engines.generate import GenerateEngine

    return GenerateEngine(config, get_hub())(prompt, image=image, progress=on_progress, control_image=control_image)


def parse_loras(text: str | None) -> tuple:
    """The LoRA list as typed: one ``PATH[:SCALE]`` per line (the CLI's syntax)."""
    from vision.engines.generate import Lora

    return tuple(Lora.parse(line) for line in (text or "").splitlines() if line.strip())


def _generate_config(preset, negative, steps, guidance, seed, scheduler, family, size, use_cache, interval, branch,
                     schedule, strength, compare: bool, model=None, loras=None, control=None, controlnet=None,
                     control_scale=1.0, control_start=0.0, control_end=1.0, canny_low=100, canny_high=200,
                     cache="auto", dit_interval=2):
    """The preset's :class:`GenerateConfig` with the tab's settings; steps and size checked against
    :mod:`vision.limits` (the CLI's limits) before any model loads."""
    from vision.engines.generate import GenerateConfig
    from vision.limits import check_side, check_steps

    steps = check_steps(int(steps), "Steps")
    size = check_side(int(size), "Size") if size else None
    control = None if control in (None, "", CONTROL_NONE) else control
    return GenerateConfig.from_preset(
        preset or "default", family=family, scheduler=scheduler, steps=steps, guidance=float(guidance),
        negative_prompt=(negative or "").strip() or None, width=size, height=size, seed=int(seed),
        deepcache=int(interval), branch=int(branch), schedule=schedule, strength=float(strength), compare=compare,
        cache=(cache or "auto") if use_cache or compare else "none", dit_interval=int(dit_interval),
        model=(model or "").strip() or None, loras=parse_loras(loras), control=control,
        controlnet=(controlnet or "").strip() or None, control_scale=float(control_scale),
        control_start=float(control_start), control_end=float(control_end), canny_low=int(canny_low),
        canny_high=int(canny_high)).validate()


def _models_line(result) -> str | None:
    parts = []
    if result.checkpoint:
        c = result.checkpoint
        parts.append(f"model **{Path(c['source']).name}** ({c['detected']}, sha256 {c['sha256']})")
    if result.loras:
        parts.append("LoRA " + ", ".join(f"**{Path(x['path']).name}** x{x['scale']:g}" for x in result.loras))
    if result.control:
        c = result.control
        parts.append(f"ControlNet **{c['type']}** ({c['controlnet']}), scale {c['scale']:g}, steps "
                     f"{c['start']:.0%}-{c['end']:.0%}")
    return "; ".join(parts) + "." if parts else None


def _cache_line(result) -> str:
    from vision.wording import plural

    config, cache = result.config, result.cache
    if cache is None:
        return "No cache: every step runs the whole model."
    if cache["method"] != "deepcache":
        name = {"taylorseer": "TaylorSeer", "pab": "Pyramid Attention Broadcast"}[cache["method"]]
        return f"{name} (diffusers' DiT cache), interval {config.dit_interval}."
    calls = cache["calls"]
    line = (f"DeepCache N={config.deepcache}, branch {config.branch}, {config.schedule}: "
            f"{plural(calls['full_calls'], 'full UNet call')} and {plural(calls['partial_calls'], 'partial call')} "
            f"(full steps {calls['full_steps']})")
    if calls["controlnet_partial_calls"]:
        line += f"; the ControlNet ran only its shallow part in {plural(calls['controlnet_partial_calls'], 'call')}"
    return line + "."


def _generation_summary(result) -> str:
    from vision.engines.generate.engine import CACHE_NAMES
    from vision.wording import plural, speed_change

    config = result.config
    kind = f"image-to-image (strength {config.strength:g})" if result.img2img else "text-to-image"
    lines = [f"{tiny_prefix(get_hub())}{kind}, {result.width}x{result.height}, {plural(config.steps, 'step')} "
             f"({config.scheduler}), seed {result.seeds[0]}, preset **{config.preset}**, {config.mode} mode: "
             f"**{result.seconds:.2f} s**"]
    lines += list(filter(None, [_models_line(result), _cache_line(result)]))
    if result.speedup is not None:
        diff = result.difference()
        name = CACHE_NAMES.get(config.cache_method, config.cache_method)
        change = speed_change(result.baseline_seconds, result.seconds)
        lines.append(f"**Measured: {change} with {name}** (without {name} "
                     f"{result.baseline_seconds:.2f} s, with {result.seconds:.2f} s; warm runs, same seed). "
                     f"Difference: mean "
                     f"{diff['mean_abs']:.2f}/255, PSNR {diff['psnr_db']} dB.")
    lines += [f"Note: {note}." for note in result.notes]
    return "\n\n".join(lines)


def _generation_files(result) -> list[str]:
    folder = storage.output_folder()
    cached = result.config.cache_method if result.cache else "image"
    names = {"png": cached, "plain.png": f"without_{result.config.cache_method}", "control.png": "control_map"}
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
                 branch, schedule, init_image=None, strength=START_STRENGTH, model=None, loras=None,
                 control=CONTROL_NONE, control_image=None, controlnet=None, control_scale=1.0, control_start=0.0,
                 control_end=1.0, canny_low=100, canny_high=200, cache="auto", dit_interval=2, progress=gr.Progress(),
                 request: gr.Request = None):
    """Text-to-image (or image-to-image from ``init_image``), cache on or off, with the model, LoRAs and
    ControlNet given."""
    form.require((prompt or "").strip(), "a prompt")
    config = _generate_config(preset, negative, steps, guidance, seed, scheduler, family, size, use_deepcache,
                              interval, branch, schedule, strength, False, model, loras, control, controlnet,
                              control_scale, control_start, control_end, canny_low, canny_high, cache, dit_interval)
    run = runs.Run(request, "generate")
    run.check()  # a request whose client left while it was queued does nothing
    progress(0.0, desc="loading the models")
    result = _generate(prompt, config, form.file_path(init_image), _step_progress(progress, run),
                       form.file_path(control_image))
    return result.images[0], _generation_summary(result), _generation_files(result)


@errors.friendly_errors
def run_compare(prompt, negative, preset, steps, guidance, seed, scheduler, family, size, use_deepcache, interval,
                branch, schedule, init_image=None, strength=START_STRENGTH, model=None, loras=None,
                control=CONTROL_NONE, control_image=None, controlnet=None, control_scale=1.0, control_start=0.0,
                control_end=1.0, canny_low=100, canny_high=200, cache="auto", dit_interval=2, progress=gr.Progress(),
                request: gr.Request = None):
    """The same seed without and with the cache: a before/after slider and the measured speed-up."""
    form.require((prompt or "").strip(), "a prompt")
    config = _generate_config(preset, negative, steps, guidance, seed, scheduler, family, size, use_deepcache,
                              interval, branch, schedule, strength, True, model, loras, control, controlnet,
                              control_scale, control_start, control_end, canny_low, canny_high, cache, dit_interval)
    if config.cache_method == "deepcache" and int(interval) < 2:
        raise ValueError("DeepCache interval N must be at least 2 to compare (N=1 runs every step in full).")
    run = runs.Run(request, "generate")
    run.check()  # a request whose client left while it was queued does nothing
    progress(0.0, desc="loading the models")
    result = _generate(prompt, config, form.file_path(init_image), _step_progress(progress, run),
                       form.file_path(control_image))
    before_after = (result.baseline_images[0], result.images[0])
    return before_after, _generation_summary(result), _generation_files(result)


def preset_settings(name: str, tiny: bool) -> tuple:
    """The tab's controls as preset ``name`` sets them (steps, guidance, scheduler, family, size,
    DeepCache on, N, branch, schedule); tiny mode keeps its short runs and native size."""
    from vision.engines.generate import GenerateConfig

    c = GenerateConfig.from_preset(name)
    return (TINY_STEPS if tiny else c.steps, c.guidance, c.scheduler, c.family, 0 if tiny else (c.width or 0),
            c.deepcache > 0, max(1, c.deepcache), c.branch, c.schedule)


def family_scheduler(family: str, scheduler: str) -> str:
    """The sampler when the family changes: SD3.5 samples with ``flow``, UNet models with any other."""
    from vision.engines.generate import FAMILIES

    if FAMILIES[family]["arch"] == "sd3":
        return "flow"
    return "ddim" if scheduler == "flow" else scheduler


def add_uploads(current: str | None, files) -> str:
    """Uploaded LoRA files appended to the typed list, one ``PATH:1`` line each."""
    paths = [form.file_path(f) for f in (files if isinstance(files, list) else [files]) if f]
    return "\n".join(filter(None, [(current or "").strip(), *[f"{p}:1" for p in paths]]))


def _model_controls(defaults) -> dict:
    """Model family, the user's checkpoint and LoRAs (typed paths, or uploads added to the list)."""
    from vision.engines.generate import FAMILIES

    with gr.Accordion("Model: family, your checkpoint, LoRAs", open=False):
        family = gr.Dropdown(list(FAMILIES), value=defaults.family, label="Model family", info=MODEL_HELP)
        with gr.Row():
            model = gr.Textbox(label="Your checkpoint (empty = the family's)", elem_id="generate-model",
                               placeholder="a .safetensors file (SD1.5 / SDXL, detected), a diffusers folder or a "
                                           "Hub repo id")
            model_upload = gr.UploadButton("Upload a checkpoint", file_types=[".safetensors"],
                                           elem_id="generate-model-upload")
        with gr.Row():
            loras = gr.Textbox(label="LoRAs, one PATH[:SCALE] per line (scale -2..2, default 1)", lines=2,
                               elem_id="generate-loras")
            lora_upload = gr.UploadButton("Add LoRA files", file_types=[".safetensors"], file_count="multiple",
                                          elem_id="generate-lora-upload")
    model_upload.upload(lambda f: form.file_path(f), model_upload, model, queue=False, api_visibility="undocumented")
    lora_upload.upload(add_uploads, [loras, lora_upload], loras, queue=False, api_visibility="undocumented")
    return {"family": family, "model": model, "loras": loras}


def _cache_controls(defaults) -> dict:
    with gr.Group():
        with gr.Row():
            use_cache = gr.Checkbox(value=True, label="Cache")
            cache = gr.Radio(["auto", "deepcache", "taylorseer", "pab"], value="auto", label="Method",
                             info="auto: DeepCache for UNets, TaylorSeer for SD3.5", elem_id="generate-cache")
        with gr.Row():
            interval = gr.Slider(1, 10, value=defaults.deepcache, step=1, label="DeepCache interval N")
            branch = gr.Slider(0, 5, value=defaults.branch, step=1, label="Branch", info="0 fastest, 1 the paper's")
            dit_interval = gr.Slider(1, 6, value=defaults.dit_interval, step=1, label="SD3.5 cache interval")
        schedule = gr.Radio(["uniform", "nonuniform"], value=defaults.schedule, label="DeepCache schedule")
    return {"use_cache": use_cache, "cache": cache, "interval": interval, "branch": branch,
            "dit_interval": dit_interval, "schedule": schedule}


def _control_controls(defaults) -> dict:
    with gr.Accordion("ControlNet", open=False):
        control = gr.Radio([CONTROL_NONE, "canny", "depth", "image"], value=CONTROL_NONE, label="Control type",
                           info="canny: edges (OpenCV); depth: Depth Anything V2; image: your own map (pose, "
                                "scribble...) with its ControlNet", elem_id="generate-control")
        control_image = gr.Image(label="Control image (empty = the start image)", type="filepath",
                                 sources=["upload", "clipboard"], elem_id="generate-control-image")
        controlnet = gr.Textbox(label="ControlNet (empty = the standard one for the type and model)",
                                placeholder="a diffusers folder or a Hub repo id", elem_id="generate-controlnet")
        with gr.Row():
            control_scale = gr.Slider(0.0, 2.0, value=defaults.control_scale, step=0.05, label="Conditioning scale")
            control_start = gr.Slider(0.0, 1.0, value=defaults.control_start, step=0.05, label="Start")
            control_end = gr.Slider(0.0, 1.0, value=defaults.control_end, step=0.05, label="End")
        with gr.Row():
            canny_low = gr.Slider(0, 500, value=defaults.canny_low, step=5, label="Canny low threshold")
            canny_high = gr.Slider(0, 1000, value=defaults.canny_high, step=5, label="Canny high threshold")
    return {"control": control, "control_image": control_image, "controlnet": controlnet,
            "control_scale": control_scale, "control_start": control_start, "control_end": control_end,
            "canny_low": canny_low, "canny_high": canny_high}


def _sampling_controls(hub: ModelHub, defaults) -> dict:
    from vision.engines.generate import PRESETS, SCHEDULERS
    from vision.limits import MAX_SIDE, MAX_STEPS, SIDE_MULTIPLE

    preset = gr.Dropdown(list(PRESETS), value=defaults.preset, label="Preset",
                         info="paper: the DeepCache paper's SD1.5 setting (PLMS 50 steps, N=5, reference mode)")
    with gr.Row():
        steps = gr.Slider(1, MAX_STEPS, value=TINY_STEPS if hub.tiny else defaults.steps, step=1, label="Steps")
        guidance = gr.Slider(0.0, 15.0, value=defaults.guidance, step=0.5, label="Guidance (CFG)")
    with gr.Row():
        seed = gr.Number(value=defaults.seed, precision=0, minimum=0, label="Seed")
        scheduler = gr.Dropdown(list(SCHEDULERS), value=defaults.scheduler, label="Scheduler")
        size = gr.Slider(0, MAX_SIDE, value=0, step=SIDE_MULTIPLE,
                         label="Size (0 = the model's native size, or the start image's)")
    return {"preset": preset, "steps": steps, "guidance": guidance, "seed": seed, "scheduler": scheduler,
            "size": size}


INPUT_ORDER = ("prompt", "negative", "preset", "steps", "guidance", "seed", "scheduler", "family", "size",
               "use_cache", "interval", "branch", "schedule", "init_image", "strength", "model", "loras", "control",
               "control_image", "controlnet", "control_scale", "control_start", "control_end", "canny_low",
               "canny_high", "cache", "dit_interval")


def _outputs() -> dict:
    image = gr.Image(label="Result (with the cache when on)", format="png", interactive=False, elem_id="generate-image")
    slider = gr.ImageSlider(label="Compare: without the cache | with it", format="png", interactive=False,
                            elem_id="generate-slider")
    summary = gr.Markdown(label="Summary", elem_id="generate-summary")
    files = gr.File(label="Download (PNG)", file_count="multiple")
    gr.Markdown(HOW_TO_READ)
    return {"image": image, "slider": slider, "summary": summary, "files": files}


def generate_tab(hub: ModelHub, limits: dict) -> None:
    from vision.engines.generate import GenerateConfig

    defaults = GenerateConfig()
    with gr.Tab("Generate", id="generate"):
        notices.missing_weights_note(hub, "generate")
        gr.Markdown("**Stable Diffusion with a cache**: DeepCache reuses the deep UNet features of a full step for "
                    "the next N-1 steps; SD3.5 uses diffusers' DiT caches. Bring your own checkpoint, LoRAs and a "
                    "ControlNet. *Compare* runs the same seed with and without the cache and measures the speed-up.")
        with gr.Row():
            with gr.Column():
                c = {"prompt": gr.Textbox(label="Prompt", lines=2, elem_id="generate-prompt",
                                          value="a lighthouse on a cliff at sunset, oil painting"),
                     "negative": gr.Textbox(label="Negative prompt", value="lowres, blurry, worst quality")}
                c.update(_sampling_controls(hub, defaults))
                c.update(_model_controls(defaults))
                c.update(_cache_controls(defaults))
                c.update(_control_controls(defaults))
                with gr.Accordion("Image-to-image", open=False):
                    c["init_image"] = gr.Image(label="Start image (empty = text-to-image)", type="filepath",
                                               image_mode=None, sources=["upload", "clipboard"],
                                               elem_id="generate-init")
                    check_before_decoding(c["init_image"], "start image")  # a bad file: a message naming it
                    c["strength"] = gr.Slider(0.05, 1.0, value=defaults.strength, step=0.05, label="Strength",
                                              info="how much of the start image is re-drawn (1 = all of it)")
                with gr.Row():
                    button = gr.Button("Generate", variant="primary", elem_id="generate-run")
                    compare = gr.Button("Compare with and without the cache", elem_id="generate-compare")
            with gr.Column():
                out = _outputs()
        _wire(hub, limits, c, out, button, compare, defaults)


def _wire(hub: ModelHub, limits: dict, c: dict, out: dict, button, compare, defaults) -> None:
    inputs = [c[name] for name in INPUT_ORDER]
    for shown in (out["image"], out["slider"]):  # images written once per request (vision.ui.storage)
        storage.written_once(shown)
    example_steps = TINY_STEPS if hub.tiny else 30
    examples.example_button(f'Example: "a red fox in the snow, watercolour", negative "blurry", {example_steps} steps, '
                      f"{defaults.scheduler}, DeepCache N=3 (click, then Generate or Compare)",
                      ["a red fox in the snow, watercolour", "blurry", "default", example_steps, 7.5, 7,
                       defaults.scheduler, "sd15", 0, True, 3, 1, "uniform", None, defaults.strength],
                      inputs[:15], "generate-example")
    c["preset"].input(lambda name: preset_settings(name, hub.tiny), c["preset"],
                      [c[k] for k in ("steps", "guidance", "scheduler", "family", "size", "use_cache", "interval",
                                      "branch", "schedule")], queue=False, api_visibility="undocumented")
    c["family"].input(family_scheduler, [c["family"], c["scheduler"]], c["scheduler"], queue=False,
                      api_visibility="undocumented")
    button.click(run_generate, inputs, [out["image"], out["summary"], out["files"]], api_name="generate", **limits)
    compare.click(run_compare, inputs, [out["slider"], out["summary"], out["files"]], api_name="generate_compare",
                  **limits)
