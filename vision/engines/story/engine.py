"""The Story-Adapter engine: rounds of generation over the hub's shared models, written as they finish."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from PIL import Image

from vision.engines.contract import Engine, ProgressCallback
from vision.engines.story.adapter import ip_adapter_on, reference_pixels
from vision.engines.story.config import FAMILIES, StoryConfig, StoryError, load_story
from vision.engines.story.files import (MANIFEST, MANIFEST_FORMAT, STORYBOARD, frame_name, read_png, round_dir,
                                        save_json, save_png)
from vision.engines.story.results import StoryResult, story_progress
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
    """Runs Story-Adapter on the shared hub models. See the module docstring.

    >>> result = StoryEngine(StoryConfig.from_preset("sd15"))(["a knight rides out", "a dragon waits"], "out/")
    >>> result.final, result.storyboard, result.to_record()["rounds_done"]
    """

    CONFIG: ClassVar[type[StoryConfig]] = StoryConfig

    # -- pieces -------------------------------------------------------------------------------------

    def pipeline(self) -> Any:
        """The generation engine's text-to-image pipeline of the base model (``config.base_model()``) over
        the hub's shared modules."""
        from vision.engines.generate import build_pipeline

        config = self.config
        pipe = build_pipeline(self.hub, family=config.base_model(), scheduler=config.scheduler, img2img=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def image_encoder(self) -> Any:
        return self.hub.get(FAMILIES[self.config.family].image_encoder)

    def encode_references(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """All previous-round frames -> CLIP image embeddings [B, D], in ONE encoder call."""
        encoder = self.image_encoder()
        pixels = reference_pixels(images, self.config.reference_size, encoder.config.image_size)
        param = next(encoder.parameters())
        with torch.no_grad():
            return encoder(pixels.to(device=param.device, dtype=param.dtype)).image_embeds

    def _generate(self, pipe: Any, prompt: str, size: int, ip_embeds: torch.Tensor | None,
                  on_step: Callable[[int, int], Any] | None = None) -> np.ndarray:
        """One frame (RGB uint8); ``on_step(steps done, loop length)`` after each denoising step."""
        from vision.common import to_uint8
        from vision.engines import generate

        config = self.config
        kwargs: dict[str, Any] = {}
        if ip_embeds is not None:
            kwargs["ip_adapter_image_embeds"] = [ip_embeds]
        if on_step is not None:
            kwargs["callback_on_step_end"] = generate.step_callback(on_step)
        images = pipe(prompt=config.styled(prompt), negative_prompt=config.negative_prompt or None,
                      height=size, width=size, num_inference_steps=config.steps,
                      guidance_scale=config.guidance_scale(), generator=generate.make_generator(config.seed),
                      output_type="np", **kwargs).images
        return to_uint8(images[0])

    # -- manifest -----------------------------------------------------------------------------------

    def run_arguments(self, prompts: list[str], size: int) -> dict[str, Any]:
        """Everything that decides the frames; its hash identifies a run for resuming. ``preset`` and
        ``mode`` say which preset and mode ran; ``guidance`` and ``models`` are the resolved defaults."""
        config = self.config
        family = FAMILIES[config.family]
        return {"prompts": prompts, "config": asdict(config), "size": size, "tiny": self.tiny,
                "preset": config.preset, "mode": config.mode, "guidance": config.guidance_scale(),
                "models": {"ip_adapter": family.ip_adapter, "image_encoder": family.image_encoder,
                           "family": config.family, "checkpoint": config.base_model()}}

    @staticmethod
    def arguments_hash(arguments: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(arguments, sort_keys=True).encode()).hexdigest()

    @staticmethod
    def _valid_rounds(manifest: dict, out: Path, frames: int, size: int) -> list[int]:
        """Rounds 0..k that the manifest marks done and whose frame files are all present and readable."""
        done = []
        for r in range(len(manifest.get("rounds_done", []))):
            entry = manifest.get("rounds", {}).get(str(r))
            if r not in manifest["rounds_done"] or not entry or len(entry.get("frames", [])) != frames:
                break
            try:
                ok = all(Image.open(out / name).size == (size, size) for name in entry["frames"])
            except OSError:
                ok = False
            if not ok:
                break
            done.append(r)
        return done

    # -- the run ------------------------------------------------------------------------------------

    def __call__(self, story: str | os.PathLike | Sequence[str], output_dir: str | os.PathLike | None = None,
                 progress: ProgressCallback | None = None, stop_after_round: int | None = None,
                 overwrite: bool = False) -> StoryResult:
        """Illustrate ``story`` (file or list of prompts), resuming from ``output_dir`` when it holds an
        unfinished run with the same arguments.

        ``progress`` gets a :class:`~vision.engines.contract.Progress` per round start, frame and
        denoising step (:func:`~vision.engines.story.results.story_progress`); raising
        :class:`~vision.engines.contract.Cancelled` from it stops the run after the last finished frame
        (finished rounds stay on disk: a rerun resumes). ``stop_after_round=k`` returns after round k is
        written (``stopped_early``), as an interrupted run would; rerunning continues from round k + 1. A
        folder that holds a run with OTHER arguments is refused unless ``overwrite=True`` (which starts
        afresh there).
        """
        config = self.config
        prompts = load_story(story)
        ensure_present(self.hub, models_for("story", config), "story")  # every missing model named at once
        size = config.resolved_size(self.tiny)
        n, rounds = len(prompts), config.rounds
        out = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="vision-story-"))
        out.mkdir(parents=True, exist_ok=True)
        manifest = self._start_manifest(out, prompts, size, overwrite)
        done = manifest["rounds_done"]
        resumed_from = done[-1] if done else None

        def report(r: int, frame: int, message: str, step: int = 0, steps: int = 0) -> None:
            if progress is not None:
                progress(story_progress(r, rounds, frame, n, message, step, steps))

        previous = ([read_png(out / name) for name in manifest["rounds"][str(resumed_from)]["frames"]]
                    if resumed_from is not None else None)
        first = 0 if resumed_from is None else resumed_from + 1
        previous, stopped = self._rounds(prompts, first, previous, size, out, manifest, report, stop_after_round,
                                         resumed_from)
        files: dict[str, Any] = {"manifest": MANIFEST, "rounds": manifest["rounds"]}
        result = StoryResult(prompts, config, out, size, list(manifest["rounds_done"]),
                             {int(r): e["timings"] for r, e in manifest["rounds"].items()}, files,
                             resumed_from=resumed_from, tiny=self.tiny, stopped_early=stopped)
        if stopped:
            return result
        self._finish(result, previous, manifest)
        report(rounds + 1, 0, f"done: {n} frames, {rounds + 1} passes")
        return result

    def _start_manifest(self, out: Path, prompts: list[str], size: int, overwrite: bool) -> dict:
        """The run's manifest in ``out``: the one there when its arguments match (finished rounds kept),
        else a fresh one (refused when ``out`` holds another run, unless ``overwrite``). Saved."""
        arguments = self.run_arguments(prompts, size)
        digest = self.arguments_hash(arguments)
        manifest = self._load_manifest(out)
        if manifest is not None and manifest.get("args_hash") != digest and not overwrite:
            raise StoryError(
                f"{out} holds a story run with different arguments (prompts, settings or models); "
                "use another output folder, or overwrite=True / --overwrite to start afresh there")
        if manifest is None or manifest.get("args_hash") != digest:
            if manifest is not None:  # overwrite: drop the other run's images so none is mistaken for ours
                self._remove_run_files(out, manifest)
            manifest = {"format": MANIFEST_FORMAT, "args_hash": digest, "arguments": arguments,
                        "rounds_total": self.config.rounds, "rounds_done": [], "rounds": {}}
        done = self._valid_rounds(manifest, out, len(prompts), size)
        manifest["rounds_done"] = done
        manifest["rounds"] = {str(r): manifest["rounds"][str(r)] for r in done}
        manifest.pop("final", None)
        manifest.pop("storyboard", None)
        if self.tiny:
            from vision.tiny import TINY_NOTICE

            manifest["notice"] = TINY_NOTICE
        save_json(out / MANIFEST, manifest)
        return manifest

    def _rounds(self, prompts: list[str], first: int, previous: list[np.ndarray] | None, size: int, out: Path,
                manifest: dict, report: Callable[..., None], stop_after_round: int | None,
                resumed_from: int | None) -> tuple[list[np.ndarray] | None, bool]:
        """Rounds ``first``..R, each written as it finishes; the IP-Adapter is on the UNet from round 1.
        Returns the last round's frames and whether the run stopped early (``stop_after_round``)."""
        rounds = self.config.rounds
        if first > rounds:
            return previous, False
        report(first, 0, f"round {first}/{rounds}" + (f" (resumed after round {resumed_from})"
                                                      if resumed_from is not None else ""))
        pipe = self.pipeline()
        with contextlib.ExitStack() as adapter:
            for r in range(first, rounds + 1):
                if r == max(first, 1):
                    adapter.enter_context(ip_adapter_on(pipe, self.hub.get(FAMILIES[self.config.family].ip_adapter)))
                previous = self._round(pipe, r, prompts, previous, size, out, manifest, report)
                if stop_after_round is not None and r == stop_after_round and r < rounds:
                    return previous, True
        return previous, False

    def _finish(self, result: StoryResult, final: list[np.ndarray], manifest: dict) -> None:
        """The final frames and the storyboard: written, put in the manifest and the result."""
        out, n = result.output_dir, len(result.prompts)
        final_names = [f"final/{frame_name(i, n)}" for i in range(n)]
        for name, image in zip(final_names, final):
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
                       on_step: Callable[[int, int, int], Any] | None = None) -> tuple[list[np.ndarray], float]:
        """All frames of round ``r`` (no files written) and the seconds spent encoding references.

        Round 0 is plain text-to-image. Round r >= 1 needs the IP-Adapter on ``pipe``
        (:func:`ip_adapter_on`) and the frames of round r-1: they are encoded once, and every frame attends
        to all their 4B tokens at scale lambda_r. ``on_frame(i, frame)`` after frame i, ``on_step(i, steps
        done, loop length)`` after each denoising step of frame i.
        """
        config = self.config
        ip_embeds, encode_s = None, 0.0
        if r >= 1:
            start = time.perf_counter()
            pipe.set_ip_adapter_scale(config.lambda_of(r))
            embeds = self.encode_references(previous)  # [B, D], one call for the whole round
            encode_s = time.perf_counter() - start
            unet_param = next(pipe.unet.parameters())
            positive = embeds[None].to(device=unet_param.device, dtype=unet_param.dtype)  # [1, B, D]
            # CFG: the pipeline splits [uncond; cond] along dim 0; uncond = projected zero embeddings.
            cfg = config.guidance_scale() > 1
            ip_embeds = torch.cat([torch.zeros_like(positive), positive]) if cfg else positive
        frames = []
        with _deepcache(pipe, config):
            for i, prompt in enumerate(prompts):
                step_report = None if on_step is None else functools.partial(on_step, i)
                frames.append(self._generate(pipe, prompt, size, ip_embeds, step_report))
                if on_frame is not None:
                    on_frame(i, frames[-1])
        return frames, encode_s

    def _round(self, pipe: Any, r: int, prompts: list[str], previous: list[np.ndarray] | None, size: int,
               out: Path, manifest: dict, report: Callable[..., None]) -> list[np.ndarray]:
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
        frames, encode_s = self.generate_round(pipe, r, prompts, previous, size, on_frame, on_step)
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

    @staticmethod
    def _remove_run_files(out: Path, manifest: dict) -> None:
        names = list(manifest.get("final", []))
        if manifest.get("storyboard"):
            names.append(manifest["storyboard"])
        for entry in manifest.get("rounds", {}).values():
            names += list(entry.get("frames", [])) + [entry.get("storyboard", "")]
        for name in names:
            path = out / name
            if name and path.is_file() and out.resolve() in path.resolve().parents:
                path.unlink()

    @staticmethod
    def _load_manifest(out: Path) -> dict | None:
        path = out / MANIFEST
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise StoryError(f"{path} is not a readable story manifest ({err}); remove it or use another "
                             "output folder") from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise StoryError(f"{path} is not a story manifest ({MANIFEST_FORMAT}); use another output folder")
        return data
