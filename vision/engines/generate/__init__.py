"""Stable Diffusion text-to-image and image-to-image on the hub's shared models, with a cache.

The engine follows the contract of :mod:`vision.engines.contract`::

    from vision.engines.generate import GenerateConfig, GenerateEngine

    config = GenerateConfig.from_preset("default", steps=30, deepcache=3, compare=True).validate()
    result = GenerateEngine(config)(["a red fox in snow"], progress=lambda p: print(p.fraction, p.message))
    result.images        # list of RGB uint8 [H, W, 3]
    result.timings       # {"seconds", "seconds_per_image"; compare: "baseline_seconds", "speedup"}
    result.to_record()   # engine_record's fields, then prompts, seeds, config, cache decisions, models
    result.to_files()    # {"png": image} (one prompt) / {"0.png": ..., "1.png": ...}, plus the plain ones

    pipe = build_pipeline(hub, family="sd15", scheduler="ddim", img2img=False)
    # a diffusers StableDiffusion(XL)(Img2Img)Pipeline over the hub's UNet, VAE, text encoder(s) and
    # tokenizer(s) (no copies), safety_checker=None, and a fresh scheduler made from the hub's scheduler
    # config; the Story-Adapter engine builds on it, make_generator and step_callback.

Settings (:class:`GenerateConfig`, frozen; ``validate()`` returns it normalised, e.g. ``plms`` -> ``pndm``):
family ``sd15`` | ``sdxl`` | ``realvisxl`` (RealVisXL V4.0, an SDXL fine-tune) | ``sd35_medium`` |
``sd35_large``; scheduler ``ddim``, ``pndm``/``plms`` (PNDM with SD's ``skip_prk_steps``), ``euler``,
``dpm++`` (DPMSolverMultistep, dpmsolver++), ``heun``, ``flow`` (SD3's flow-matching Euler; ``ddim``, the
default, means ``flow`` for SD3.5); ``steps``, ``guidance`` (CFG scale; <= 1 disables CFG),
``negative_prompt``, ``width``/``height`` (multiples of 8; default the family's native side, 64 in tiny
mode, the input's size for img2img), ``seed`` (image i of a call uses ``seed + i``, on a CPU generator, so
results do not depend on the device's RNG or on the batch), ``strength`` (img2img). The cache: ``cache``
``auto`` (DeepCache for UNets, TaylorSeer for SD3.5) | ``none`` | ``deepcache`` | ``taylorseer`` | ``pab``
(:mod:`~vision.engines.generate.dit`); DeepCache ``deepcache`` = interval N (0 = off, 1 = on with every
step full), ``branch``, ``schedule`` (``uniform`` | ``nonuniform``), ``center``, ``power``, ``reference``; DiT caches
``dit_interval`` (steps between full computations). The user's models (:mod:`~vision.engines.generate.models`):
``model`` (an SD1.5 / SDXL checkpoint: single ``.safetensors``, diffusers folder or Hub repo id), ``loras``
(``Lora(path, scale)`` or ``"PATH[:SCALE]"``). ControlNet (:mod:`~vision.engines.generate.control`):
``control`` ``canny`` | ``depth`` | ``image`` with the call's ``control_image``, ``controlnet`` (default: the
registry's for the type and family), ``control_scale``, ``control_start`` / ``control_end``, ``canny_low`` /
``canny_high``. ``compare=True`` also runs the plain pipeline with the same seeds (after a short warm-up)
and reports both times and the speed-up.

Presets (``GenerateConfig.from_preset(name, **changes)``): ``default`` (the fields' defaults) and
``paper``, the DeepCache paper's Stable Diffusion setting: SD1.5, 512^2, PLMS (PNDM) 50 steps, CFG 7.5,
DeepCache N = 5 on branch 1, uniform schedule, ``reference=True``. Every record says which preset, mode
and cache method ran, and the step numbering DeepCache used.

Reference mode (``reference=True``) changes one behaviour: DeepCache numbers the steps as the paper's
pipeline loop does (PNDM's duplicated timestep is a step of its own; see :mod:`vision.deepcache.steps`),
because the paper's SD numbers were measured so. Kept in every mode, with the reason: the initial noise
of image i comes from a CPU generator seeded ``seed + i`` (the paper's script seeds the global CUDA RNG
once per batch of 16 prompts; noise is not part of the method and ours does not depend on the batch or the
device), and images are rounded to uint8 (diffusers' ``output_type="pil"``; the paper's evaluation script
truncates: at most 1/255).

In tiny mode (random-weight models) the outputs are noise; records say so (``tiny``, ``notice``).
"""

from vision.engines.generate.config import (
                                            CACHES,
                                            CONTROLS,
                                            DIT_CACHES,
                                            FAMILIES,
                                            PRESETS,
                                            SCHEDULER_ALIASES,
                                            SCHEDULERS,
                                            GenerateConfig,
                                            GenerateError,
                                            scheduler_name,
)
from vision.engines.generate.engine import GenerateEngine, check_prompts
from vision.engines.generate.models import Lora, ModelFileError
from vision.engines.generate.pipelines import (
                                            build_pipeline,
                                            default_size,
                                            make_generator,
                                            make_scheduler,
                                            step_callback,
)
from vision.engines.generate.results import GenerationResult

__all__ = ["GenerateConfig", "GenerateEngine", "GenerationResult", "GenerateError", "ModelFileError", "Lora",
           "build_pipeline", "make_generator", "make_scheduler", "step_callback", "scheduler_name", "default_size",
           "check_prompts", "FAMILIES", "SCHEDULERS", "SCHEDULER_ALIASES", "PRESETS", "CACHES", "DIT_CACHES",
           "CONTROLS"]
