"""The Story-Adapter engine: rounds of generation over the hub's shared models, written as they finish."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from vision.engines.contract import Engine, ProgressCallback
from vision.engines.story.adapter import clip_pixels, ip_adapter_on, reference_pixels
from vision.engines.story.characters import Character, cast_frames, load_characters
from vision.engines.story.conditioning import Cast, ip_inputs
from vision.engines.story.config import FAMILIES, StoryConfig, StoryError, load_story
from vision.engines.story.files import MANIFEST, STORYBOARD, frame_name, read_png, round_dir, save_json, save_png
from vision.engines.story.manifest import start_manifest
from vision.engines.story.memory import check_memory_options, memory_options
from vision.engines.story.results import StoryResult, story_progress
from vision.engines.story.run_models import StoryModels, run_context
from vision.engines.story.storyboard import make_storyboard
from vision.weights import ensure_present, models_for


def _deepcache(pipe: Any, config: StoryConfig) -> Any:
    """Our DeepCache on the pipeline for the block (interval N, branch b, uniform); off for N = 0.

    It begins a fresh cache at every ``pipe(...)`` call, i.e. every frame, and is active only in this
    thread. Reference mode numbers its steps as the DeepCache paper's loop does."""
    from vision.deepcache import cache_for

    cache = cache_for(pipe, StoryError, config.deepcache, branch=config.deepcache_branch, reference=config.reference)
    return cache if cache is not None else contextlib.nullcontext()


class StoryEngine(Engine):
    """Runs Story-Adapter on the shared hub models. See the package docstring.

    >>> result = StoryEngine(StoryConfig.from_preset("sd15"))(["Ann rides out", "a dragon waits"], "out/",
    ...                                                       characters=["Ann=ann.png"])
    >>> result.final, result.storyboard, result.to_record()["frame_characters"]
    """

    CONFIG: ClassVar[type[StoryConfig]] = StoryConfig

    # -- pieces -------------------------------------------------------------------------------------

    def models(self) -> StoryModels:
        """The text-to-image pipeline of the base model (the family's checkpoint or the user's ``model``,
        through :mod:`vision.engines.generate.models`) over the hub's shared modules, and what it is made of."""
        return StoryModels.build(self.hub, self.config)

    def pipeline(self) -> Any:
        """:meth:`models`' pipeline."""
        return self.models().pipe

    def image_encoder(self) -> Any:
        return self.hub.get(FAMILIES[self.config.family].image_encoder)

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP pixels [N, 3, S, S] -> image embeddings [N, D] in ONE encoder call; the encoder goes back to the
        CPU afterwards when ``offload_image_encoder`` applies (:mod:`.memory`)."""
        from vision.hub import model_lock

        encoder = self.image_encoder()
        with model_lock(encoder):
            param = next(encoder.parameters())
            with torch.no_grad():
                embeds = encoder(pixels.to(device=param.device, dtype=param.dtype)).image_embeds
            if memory_options(self.config, 0, self.hub.device)["offload_image_encoder"]:
                self.hub.offload(FAMILIES[self.config.family].image_encoder)
        return embeds

    def encode_references(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """All previous-round frames -> CLIP image embeddings [B, D], in ONE encoder call."""
        size = self.image_encoder().config.image_size
        return self._encode(reference_pixels(images, self.config.reference_size, size))

    def encode_characters(self, characters: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Each loaded character's identity [D]: the mean CLIP image embedding of its reference images
        (IP-Adapter's preprocessing, no resize to ``reference_size``), all images in ONE encoder call."""
        images = [im for c in characters for im in c.images]
        embeds = self._encode(clip_pixels(images, self.image_encoder().config.image_size)).float().cpu()
        out, start = {}, 0
        for c in characters:
            out[c.name] = embeds[start:start + len(c.images)].mean(0)
            start += len(c.images)
        return out

    def _generate(self, pipe: Any, prompt: str, size: int, ip_embeds: list[torch.Tensor] | None,
                  on_step: Callable[[int, int], Any] | None = None) -> np.ndarray:
        """One frame (RGB uint8); ``on_step(steps done, loop length)`` after each denoising step."""
        from vision.common import to_uint8
        from vision.engines import generate

        config = self.config
        kwargs: dict[str, Any] = {}
        if ip_embeds is not None:
            kwargs["ip_adapter_image_embeds"] = ip_embeds
        if on_step is not None:
            kwargs["callback_on_step_end"] = generate.step_callback(on_step)
        images = pipe(prompt=config.styled(prompt), negative_prompt=config.negative_prompt or None,
                      height=size, width=size, num_inference_steps=config.steps,
                      guidance_scale=config.guidance_scale(), generator=generate.make_generator(config.seed),
                      output_type="np", **kwargs).images
        return to_uint8(images[0])

    # -- manifest -----------------------------------------------------------------------------------

    def run_arguments(self, prompts: list[str], size: int, characters: Sequence[Any] = (),
                      casts: Sequence[tuple[str, ...]] = ()) -> dict[str, Any]:
        """Everything that decides the frames; its hash identifies a run for resuming. ``preset`` and
        ``mode`` say which preset and mode ran; ``guidance`` and ``models`` are the resolved defaults. With
        characters: their names and images (sha256 of the pixels) and each frame's characters."""
        config = self.config
        family = FAMILIES[config.family]
        models = {"ip_adapter": family.ip_adapter, "image_encoder": family.image_encoder, "family": config.family,
                  "checkpoint": config.base_model()}
        if config.lcm:
            models["lcm_lora"] = config.lcm_lora()
        arguments = {"prompts": prompts, "config": asdict(config), "size": size, "tiny": self.tiny,
                     "preset": config.preset, "mode": config.mode, "guidance": config.guidance_scale(),
                     "models": models}
        if characters:
            arguments["characters"] = [{"name": c.name, "sha256": list(c.digests)} for c in characters]
            arguments["frame_characters"] = [list(cast) for cast in casts]
        return arguments

    # -- the run ------------------------------------------------------------------------------------

    def __call__(self, story: str | os.PathLike | Sequence[str], output_dir: str | os.PathLike | None = None,
                 progress: ProgressCallback | None = None, stop_after_round: int | None = None,
                 overwrite: bool = False, characters: Sequence[Character | str] | None = None) -> StoryResult:
        """Illustrate ``story`` (file or list of prompts) with its ``characters`` (:class:`Character`, or
        ``NAME=IMG[,IMG]`` strings), resuming from ``output_dir`` when it holds an unfinished run with the
        same arguments (prompts, characters and their images, settings).

        ``progress`` gets a :class:`~vision.engines.contract.Progress` per round start, frame and
        denoising step (:func:`~vision.engines.story.results.story_progress`); raising
        :class:`~vision.engines.contract.Cancelled` from it stops the run after the last finished frame
        (finished rounds stay on disk: a rerun resumes). ``stop_after_round=k`` returns after round k is
        written (``stopped_early``), as an interrupted run would; rerunning continues from round k + 1. A
        folder that holds a run with OTHER arguments is refused unless ``overwrite=True`` (which starts
        afresh there).
        """
        config = self.config
        # 1. the story, its characters and which frames name them; every missing model named at once
        loaded = load_characters(characters)
        prompts, casts, warnings = cast_frames(load_story(story), [c.name for c in loaded])
        ensure_present(self.hub, models_for("story", config), "story")
        check_memory_options(config, self.hub.device)
        size = config.resolved_size(self.tiny)
        n, rounds = len(prompts), config.rounds
        # 2. the output folder: a fresh manifest, or the one of the run to resume
        out = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="vision-story-"))
        out.mkdir(parents=True, exist_ok=True)
        manifest = self._start_manifest(out, prompts, size, overwrite, loaded, casts, warnings)
        done = manifest["rounds_done"]
        resumed_from = done[-1] if done else None

        def report(r: int, frame: int, message: str, step: int = 0, steps: int = 0) -> None:
            if progress is not None:
                progress(story_progress(r, rounds, frame, n, message, step, steps))

        previous = ([read_png(out / name) for name in manifest["rounds"][str(resumed_from)]["frames"]]
                    if resumed_from is not None else None)
        first = 0 if resumed_from is None else resumed_from + 1
        # 3. the rounds left, each written as it finishes
        previous, stopped = self._rounds(prompts, first, previous, size, out, manifest, report, stop_after_round,
                                         resumed_from, loaded, casts)
        result = StoryResult.from_manifest(prompts, config, out, size, manifest, resumed_from, self.tiny, stopped)
        if stopped:
            return result
        # 4. the final frames and the storyboard
        self._finish(result, previous, manifest)
        report(rounds + 1, 0, f"done: {n} frames, {rounds + 1} passes")
        return result

    def _start_manifest(self, out: Path, prompts: list[str], size: int, overwrite: bool, characters: list,
                        casts: list, warnings: list[str]) -> dict:
        """:func:`.manifest.start_manifest` with this run's arguments; the characters' images are copied into
        ``characters/`` (the folder holds all a rerun needs to know) and the warnings recorded."""
        from vision.tiny import TINY_NOTICE

        arguments = self.run_arguments(prompts, size, characters, casts)
        manifest = start_manifest(out, arguments, self.config.rounds, len(prompts), size, overwrite,
                                  TINY_NOTICE if self.tiny else None)
        names = []
        for c in characters:
            for k, image in enumerate(c.images):
                names.append(f"characters/{c.name}_{k}.png")
                save_png(out / names[-1], image)
        manifest.update(characters=[c.record() for c in characters], character_files=names, warnings=warnings,
                        memory=memory_options(self.config, size, self.hub.device))
        save_json(out / MANIFEST, manifest)
        return manifest

    def _rounds(self, prompts: list[str], first: int, previous: list[np.ndarray] | None, size: int, out: Path,
                manifest: dict, report: Callable[..., None], stop_after_round: int | None, resumed_from: int | None,
                characters: list, casts: list) -> tuple[list[np.ndarray] | None, bool]:
        """Rounds ``first``..R, each written as it finishes. The IP-Adapter is on the UNet from round 1, or
        from round 0 (twice) when characters are declared. Returns the last round's frames and whether the
        run stopped early (``stop_after_round``)."""
        config = self.config
        rounds = config.rounds
        if first > rounds:
            return previous, False
        report(first, 0, f"round {first}/{rounds}" + (f" (resumed after round {resumed_from})"
                                                      if resumed_from is not None else ""))
        built = self.models()
        cast = Cast(casts, self.encode_characters(characters), config.character_scale) if characters else None
        adapter = self.hub.get(FAMILIES[config.family].ip_adapter)
        with run_context(self.hub, config, built, size) as applied, contextlib.ExitStack() as ip:
            manifest["models"] = built.record(applied)
            for r in range(first, rounds + 1):
                if r == (first if cast is not None else max(first, 1)):
                    ip.enter_context(ip_adapter_on(built.pipe, adapter, copies=2 if cast is not None else 1))
                previous = self._round(built.pipe, r, prompts, previous, size, out, manifest, report, cast)
                if stop_after_round is not None and r == stop_after_round and r < rounds:
                    return previous, True
        return previous, False

    def _finish(self, result: StoryResult, final: list[np.ndarray], manifest: dict) -> None:
        """The final frames and the storyboard: written, put in the manifest and the result."""
        out, n = result.output_dir, len(result.prompts)
        final_names = [f"final/{frame_name(i, n)}" for i in range(n)]
        for name, image in zip(final_names, final, strict=True):
            save_png(out / name, image)
        board = make_storyboard(final)
        save_png(out / STORYBOARD, board)
        manifest["final"] = final_names
        manifest["storyboard"] = STORYBOARD
        save_json(out / MANIFEST, manifest)
        result.files.update(final=final_names, storyboard=STORYBOARD)
        result.final, result.storyboard = final, board

    def generate_round(self, pipe: Any, r: int, prompts: list[str], previous: list[np.ndarray] | None, size: int,
                       on_frame: Callable[[int, np.ndarray], Any] | None = None,
                       on_step: Callable[[int, int, int], Any] | None = None,
                       cast: Cast | None = None) -> tuple[list[np.ndarray], float]:
        """All frames of round ``r`` (no files written) and the seconds spent encoding references.

        Without a ``cast``, round 0 is plain text-to-image; round r >= 1 needs the IP-Adapter on ``pipe``
        (:func:`ip_adapter_on`) and the frames of round r-1: they are encoded once, and every frame attends
        to all their 4B tokens at scale lambda_r. With a cast (characters declared: two adapters on
        ``pipe`` in every round), each frame also attends to its characters' tokens at w_c
        (:mod:`.conditioning`). ``on_frame(i, frame)`` after frame i, ``on_step(i, steps done, loop
        length)`` after each denoising step of frame i.
        """
        config = self.config
        round_embeds, encode_s = None, 0.0
        if r >= 1:
            start = time.perf_counter()
            round_embeds = self.encode_references(previous)  # [B, D], one call for the whole round
            encode_s = time.perf_counter() - start
        like = next(pipe.unet.parameters())
        cfg = config.guidance_scale() > 1  # CFG: the pipeline splits [uncond; cond] along dim 0
        frames = []
        with _deepcache(pipe, config):
            for i, prompt in enumerate(prompts):
                scale, ip_embeds = ip_inputs(round_embeds, config.lambda_of(r), cast, i, cfg, like)
                if scale is not None:
                    pipe.set_ip_adapter_scale(scale)
                step_report = None if on_step is None else functools.partial(on_step, i)
                frames.append(self._generate(pipe, prompt, size, ip_embeds, step_report))
                if on_frame is not None:
                    on_frame(i, frames[-1])
        return frames, encode_s

    def _round(self, pipe: Any, r: int, prompts: list[str], previous: list[np.ndarray] | None, size: int,
               out: Path, manifest: dict, report: Callable[..., None], cast: Cast | None) -> list[np.ndarray]:
        """:meth:`generate_round`, writing each frame as it is made, then the round's storyboard and
        manifest entry (the round counts as done only once the manifest says so)."""
        config = self.config
        n, rounds = len(prompts), config.rounds
        folder = round_dir(r)
        names = [f"{folder}/{frame_name(i, n)}" for i in range(n)]

        def on_frame(i: int, image: np.ndarray) -> None:
            save_png(out / names[i], image)
            report(r, i + 1, f"round {r}/{rounds}: frame {i + 1}/{n}")

        def on_step(i: int, step: int, steps: int) -> None:
            report(r, i, f"round {r}/{rounds}: frame {i + 1}/{n}, step {step}/{steps}", step, steps)

        start = time.perf_counter()
        frames, encode_s = self.generate_round(pipe, r, prompts, previous, size, on_frame, on_step, cast)
        board_name = f"{folder}/storyboard_{folder}.png"
        save_png(out / board_name, make_storyboard(frames))
        seconds = time.perf_counter() - start
        manifest["rounds"][str(r)] = {
            "frames": names, "storyboard": board_name, "lambda": config.lambda_of(r),
            "timings": {"seconds": round(seconds, 3), "encode_seconds": round(encode_s, 3),
                        "seconds_per_frame": round((seconds - encode_s) / n, 3)},
        }
        manifest["rounds_done"] = sorted(set(manifest["rounds_done"]) | {r})
        save_json(out / MANIFEST, manifest)
        return frames
