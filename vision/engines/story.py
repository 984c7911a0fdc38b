"""Story-Adapter: consistent long-story illustration by iterative Global Reference Cross-Attention.

A story is a list of per-frame prompts. Round 0 draws every frame from its text alone (plain
text-to-image, exactly the generation engine's output for the same seed). Each round r = 1..R then
redraws every frame while it attends, through the IP-Adapter's cross-attention, to ALL frames of
round r-1 (itself included):

- the previous round's B images are resized to ``reference_size`` (256^2, as the reference code does),
  encoded by the CLIP image encoder in ONE batched call per round, and projected by the IP-Adapter's
  image projection to 4 tokens each;
- the B x 4 tokens are passed as one adapter's image list (``ip_adapter_image_embeds`` of shape
  [batch, B, dim]); diffusers' ``IPAdapterAttnProcessor2_0`` flattens them into ONE key/value sequence
  of 4B tokens under a single softmax (concatenation, not averaging), so every cross-attention layer
  computes ``Attn(Q, K_text, V_text) + lambda_r * Attn(Q, K_ip, V_ip)``;
- the unconditional branch of classifier-free guidance sees the projection of zero embeddings;
- ``lambda_r = linspace(lambda_start, lambda_end, R)[r - 1]`` (0.3 -> 0.5 by default);
- one seed for every frame of every round.

Models all come from the hub (SD1.5 + ``ip_adapter_sd15`` + ``ip_image_encoder_h`` by default; SDXL +
``ip_adapter_sdxl`` + ``ip_image_encoder_bigg`` with ``family="sdxl"``). The IP-Adapter weights are put
onto the SHARED UNet only inside :func:`ip_adapter_on`, which restores the UNet exactly afterwards.
DeepCache (interval N = 3 by default) accelerates every pass.

Output folder (written as rounds finish, every file atomically)::

    round_00/frame_000.png ... round_00/storyboard_round_00.png
    ...
    round_RR/...
    final/frame_000.png ...      the last round's frames
    storyboard.png               grid of the final frames
    manifest.json                arguments + hash, rounds done, file names, timings

Rerunning with the same arguments and folder continues after the last COMPLETE round (a round is
complete once its manifest entry is written) and gives the same final frames as an uninterrupted run.

Story text files: one frame per line; leading/trailing whitespace is stripped and blank lines are
skipped (they do not make empty frames). ``rounds=0`` runs round 0 only (text-to-image for every frame,
no reference attention); those frames are then the final frames.

Memory: besides the models, a run holds two rounds of frames (previous + current, B x H x W x 3 bytes
each: 200 frames at 512^2 = 150 MiB per round), the B CLIP embeddings and the 4B reference tokens; the
rounds before are on disk (:meth:`StoryResult.round_images` reads them back).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from vision.hub import model_lock

DEFAULT_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"

# (prefix, suffix) wrapped around every frame prompt.
STYLES: dict[str, tuple[str, str]] = {
    "none": ("", ""),
    "comic": ("comic book illustration, ", ", bold ink outlines, flat vivid colours, graphic novel panel"),
    "film": ("cinematic film still, ", ", 35mm photograph, film grain, dramatic lighting, shallow depth of field"),
    "realistic": ("photorealistic image, ", ", highly detailed, natural lighting, sharp focus, 8k photograph"),
}

# family -> (hub name of the IP-Adapter state dict, hub name of its CLIP image encoder, default size)
FAMILIES: dict[str, tuple[str, str, int]] = {
    "sd15": ("ip_adapter_sd15", "ip_image_encoder_h", 512),
    "sdxl": ("ip_adapter_sdxl", "ip_image_encoder_bigg", 1024),
}

TINY_SIZE = 64  # default frame size in tiny mode (the tiny UNet's native 8x8 latent)
MAX_FRAMES = 1000
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "vision-story/1"
STORYBOARD = "storyboard.png"
STORYBOARD_GAP = 4  # white gutter (pixels) around and between storyboard tiles
STORYBOARD_MAX_WIDTH = 4096  # tiles are scaled down so that a storyboard is at most this wide


class StoryError(ValueError):
    """A story, configuration or output folder that cannot be used; the message says why."""


# --------------------------------------------------------------------------------------------------
# Configuration and input
# --------------------------------------------------------------------------------------------------


@dataclass
class StoryConfig:
    """Settings of one story run. ``deepcache`` is the DeepCache interval N (0 = off; 1 = on with every
    step full, which equals off) on UNet skip branch ``deepcache_branch``."""

    rounds: int = 10
    lambda_start: float = 0.3
    lambda_end: float = 0.5
    steps: int = 50
    guidance: float = 7.5
    size: int | None = None  # square frames; None = the family's native size (64 in tiny mode)
    seed: int = 0
    style: str = "none"
    negative_prompt: str = DEFAULT_NEGATIVE
    deepcache: int = 3
    deepcache_branch: int = 1
    family: str = "sd15"
    scheduler: str = "ddim"
    reference_size: int = 256

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise StoryError(f"unknown model family {self.family!r}; choose one of {', '.join(FAMILIES)}")
        if self.style not in STYLES:
            raise StoryError(f"unknown style {self.style!r}; choose one of {', '.join(STYLES)}")
        if not isinstance(self.rounds, int) or self.rounds < 0:
            raise StoryError(f"rounds must be an integer >= 0 (0 = round 0 only), got {self.rounds!r}")
        if self.steps < 1:
            raise StoryError(f"steps must be >= 1, got {self.steps}")
        if self.size is not None and (self.size < 8 or self.size % 8):
            raise StoryError(f"size must be a positive multiple of 8, got {self.size}")
        for name, minimum in (("deepcache", 0), ("deepcache_branch", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise StoryError(f"{name} must be an integer >= {minimum}, got {value!r}"
                                 + (" (0 = DeepCache off)" if name == "deepcache" else ""))
        if self.scheduler != "ddim":
            from vision.engines.generate import GenerateError, scheduler_name

            try:
                self.scheduler = scheduler_name(self.scheduler)
            except GenerateError as err:
                raise StoryError(str(err)) from None
        if self.reference_size < 1:
            raise StoryError(f"reference_size must be >= 1, got {self.reference_size}")
        for name in ("lambda_start", "lambda_end", "guidance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise StoryError(f"{name} must be a finite number, got {value!r}")
        if self.guidance < 0:
            raise StoryError(f"guidance must be >= 0 (<= 1 disables classifier-free guidance), got {self.guidance}")

    def lambdas(self) -> list[float]:
        """The reference weight of rounds 1..R: ``linspace(lambda_start, lambda_end, R)``."""
        return [float(x) for x in np.linspace(self.lambda_start, self.lambda_end, self.rounds)]

    def lambda_of(self, round_index: int) -> float:
        return 0.0 if round_index == 0 else self.lambdas()[round_index - 1]

    def resolved_size(self, tiny: bool) -> int:
        if self.size is not None:
            return self.size
        return TINY_SIZE if tiny else FAMILIES[self.family][2]

    def styled(self, prompt: str) -> str:
        prefix, suffix = STYLES[self.style]
        return f"{prefix}{prompt}{suffix}"


def load_story(story: str | os.PathLike | Sequence[str]) -> list[str]:
    """Frame prompts from a text file (one frame per line) or a list of strings.

    Whitespace around a prompt is stripped; blank lines / blank strings are skipped (documented: they
    never make an empty frame). An empty story is a :class:`StoryError`.
    """
    if isinstance(story, (str, os.PathLike)):
        path = Path(story)
        if not path.is_file():
            raise StoryError(f"{path}: no such story file (one frame prompt per line)")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise StoryError(f"{path}: not a UTF-8 text file ({err})") from None
        source = str(path)
    else:
        lines = list(story)
        if not all(isinstance(line, str) for line in lines):
            raise StoryError("a story is a list of strings (one prompt per frame)")
        source = "the story"
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise StoryError(f"{source} has no frames: give at least one non-empty prompt (one frame per line)")
    if len(prompts) > MAX_FRAMES:
        raise StoryError(f"{source} has {len(prompts)} frames; at most {MAX_FRAMES} are supported per run")
    return prompts


# --------------------------------------------------------------------------------------------------
# IP-Adapter on the shared UNet
# --------------------------------------------------------------------------------------------------

_MISSING = object()


@contextlib.contextmanager
def ip_adapter_on(unet: Any, state_dict: dict) -> Iterator[Any]:
    """Load an IP-Adapter (``{"image_proj": ..., "ip_adapter": ...}``) onto ``unet`` for the block.

    Uses diffusers' own loader (``unet._load_ip_adapter_weights``), which puts an
    ``IPAdapterAttnProcessor2_0`` on every cross-attention layer and an image projection in
    ``unet.encoder_hid_proj``. On exit the UNet gets back exactly what it had: the same attention
    processor objects, the same ``encoder_hid_proj`` and ``config.encoder_hid_dim_type``, so that the
    other engines sharing it see the plain UNet again. Yields the list of IP processors.

    Holds the UNet's :func:`vision.hub.model_lock` meanwhile: other engines running the shared UNet
    (generation, IPSeg's features) take the same lock, so none of them sees the adapter, and two story
    runs never save each other's adapter as "the original".
    """
    with model_lock(unet):
        yield from _ip_adapter_on(unet, state_dict)


def _ip_adapter_on(unet: Any, state_dict: dict) -> Iterator[Any]:
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from diffusers.utils import logging as diffusers_logging

    saved_procs = dict(unet.attn_processors)
    saved_proj = unet.encoder_hid_proj
    saved_type = unet.config.__dict__.get("encoder_hid_dim_type", _MISSING)
    saved_text_proj = getattr(unet, "text_encoder_hid_proj", _MISSING)
    verbosity = diffusers_logging.get_verbosity()
    try:
        diffusers_logging.set_verbosity_error()  # its `.to()` warns about fp32 modules it does not have
        try:
            unet._load_ip_adapter_weights([state_dict], low_cpu_mem_usage=False)
        finally:
            diffusers_logging.set_verbosity(verbosity)
        yield [p for p in unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)]
    finally:
        unet.set_attn_processor(saved_procs)
        unet.encoder_hid_proj = saved_proj
        if saved_type is _MISSING:
            unet.config.__dict__.pop("encoder_hid_dim_type", None)
        else:
            object.__setattr__(unet.config, "encoder_hid_dim_type", saved_type)
        if saved_text_proj is _MISSING:
            if hasattr(unet, "text_encoder_hid_proj"):
                delattr(unet, "text_encoder_hid_proj")
        else:
            unet.text_encoder_hid_proj = saved_text_proj


def set_reference_scale(processors: Sequence[Any], scale: float) -> None:
    """Set lambda on every IP-Adapter attention processor (one adapter each)."""
    for proc in processors:
        proc.scale = [float(scale)] * len(proc.scale)


def reference_pixels(images: Sequence[np.ndarray], reference_size: int, encoder_size: int) -> torch.Tensor:
    """Previous-round frames -> CLIP pixel batch [B, 3, S, S].

    Each frame is resized to ``reference_size``^2 (bicubic, as the reference code does) and then given
    CLIP's own preprocessing (``CLIPImageProcessor``: shortest side to the encoder's size, centre crop,
    OpenAI mean/std).
    """
    from transformers import CLIPImageProcessor

    resized = [Image.fromarray(np.asarray(im, dtype=np.uint8)).resize((reference_size, reference_size),
                                                                      Image.BICUBIC) for im in images]
    processor = CLIPImageProcessor(size={"shortest_edge": encoder_size},
                                   crop_size={"height": encoder_size, "width": encoder_size})
    return processor(images=resized, return_tensors="pt").pixel_values


# --------------------------------------------------------------------------------------------------
# Storyboard
# --------------------------------------------------------------------------------------------------


def storyboard_columns(n: int) -> int:
    """Columns of the storyboard grid for ``n`` frames: ``min(n, max(4, ceil(sqrt(n))))``.

    A comic-strip row of 4 up to 16 frames (1 -> 1x1, 3 -> 3x1, 7 -> 4x2, 12 -> 4x3, 16 -> 4x4), then a
    near-square grid (17 -> 5x4, 100 -> 10x10, 200 -> 15x14). Frames fill rows left to right; the
    unused cells of the last row stay white.
    """
    if n < 1:
        raise StoryError("a storyboard needs at least one frame")
    return min(n, max(4, math.ceil(math.sqrt(n))))


def storyboard_layout(n: int) -> tuple[int, int]:
    """(rows, columns) of the storyboard for ``n`` frames."""
    cols = storyboard_columns(n)
    return math.ceil(n / cols), cols


def make_storyboard(frames: Sequence[np.ndarray], gap: int = STORYBOARD_GAP,
                    max_width: int = STORYBOARD_MAX_WIDTH) -> np.ndarray:
    """Grid of frames (RGB uint8, all the same size) with a white ``gap`` around every tile.

    Tile (i) sits at row ``i // cols``, column ``i % cols``, top-left corner
    ``(gap + row * (h + gap), gap + col * (w + gap))``. Tiles are scaled down (never up) so that the
    whole grid is at most ``max_width`` pixels wide.
    """
    rows, cols = storyboard_layout(len(frames))
    h, w = frames[0].shape[:2]
    scale = min(1.0, (max_width - gap * (cols + 1)) / (cols * w))
    if scale < 1.0:
        h, w = max(1, int(h * scale)), max(1, int(w * scale))
    board = np.full((gap + rows * (h + gap), gap + cols * (w + gap), 3), 255, dtype=np.uint8)
    for i, frame in enumerate(frames):
        if frame.shape[:2] != (h, w):
            frame = np.asarray(Image.fromarray(frame).resize((w, h), Image.BICUBIC))
        r, c = divmod(i, cols)
        y, x = gap + r * (h + gap), gap + c * (w + gap)
        board[y : y + h, x : x + w] = frame
    return board


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_png(path: Path, image: np.ndarray) -> None:
    _atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG"))


def save_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True)
    _atomic_write(path, lambda f: f.write(text), mode="w")


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def frame_name(i: int, n: int) -> str:
    return f"frame_{i:0{max(3, len(str(n - 1)))}d}.png"


def round_dir(r: int) -> str:
    return f"round_{r:02d}"


# --------------------------------------------------------------------------------------------------
# Progress and result
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoryProgress:
    """One progress event: after each frame (``frame`` = frames done in ``round``) and each round.

    ``fraction`` is the share of all (rounds + 1) x frames generations done, counting resumed rounds
    as done. The app maps it to ``gr.Progress(fraction, desc=message)``; the CLI to tqdm.
    """

    round: int
    rounds: int
    frame: int
    frames: int
    message: str

    @property
    def fraction(self) -> float:
        return min(1.0, (self.round * self.frames + self.frame) / ((self.rounds + 1) * self.frames))


@dataclass
class StoryResult:
    """What a story run made. Images are RGB uint8 [H, W, 3]; only the final frames and storyboard
    are held in memory, every round's frames are files under ``output_dir``."""

    prompts: list[str]
    config: StoryConfig
    output_dir: Path
    size: int
    rounds_done: list[int]
    timings: dict[int, dict[str, float]]
    files: dict[str, Any]
    final: list[np.ndarray] | None = None
    storyboard: np.ndarray | None = None
    resumed_from: int | None = None  # the last complete round found in the folder, if any
    tiny: bool = False
    stopped_early: bool = False

    @property
    def complete(self) -> bool:
        return bool(self.rounds_done) and self.rounds_done[-1] == self.config.rounds

    def round_images(self, r: int) -> list[np.ndarray]:
        """The frames of round ``r`` (read from the output folder)."""
        if r not in self.rounds_done:
            raise StoryError(f"round {r} was not generated (rounds done: {self.rounds_done})")
        return [_read_png(self.output_dir / name) for name in self.files["rounds"][str(r)]["frames"]]

    def to_record(self) -> dict[str, Any]:
        """A JSON-able summary: settings, prompts, rounds, lambdas, timings, files (relative paths)."""
        from vision.tiny import TINY_NOTICE

        record = {
            "engine": "story",
            "prompts": self.prompts,
            "styled_prompts": [self.config.styled(p) for p in self.prompts],
            "config": asdict(self.config),
            "size": self.size,
            "frames": len(self.prompts),
            "rounds_done": self.rounds_done,
            "complete": self.complete,
            "lambdas": [self.config.lambda_of(r) for r in range(self.config.rounds + 1)],
            "timings": {str(r): t for r, t in self.timings.items()},
            "total_seconds": round(sum(t["seconds"] for t in self.timings.values()), 3),
            "resumed_from": self.resumed_from,
            "output_dir": str(self.output_dir),
            "files": self.files,
            "tiny": self.tiny,
        }
        if self.tiny:
            record["notice"] = TINY_NOTICE
        return record

    def to_files(self) -> dict[str, Any]:
        """``{suffix: image | dict}`` in the engine-result contract of :mod:`vision.batch`: the
        storyboard, the final frames and the record (empty images for a run stopped early)."""
        files: dict[str, Any] = {}
        if self.storyboard is not None:
            files["storyboard.png"] = self.storyboard
        for i, frame in enumerate(self.final or []):
            files[frame_name(i, len(self.prompts))] = frame
        files["record.json"] = self.to_record()
        return files

    def paths(self) -> list[Path]:
        """The files a user downloads, as written: storyboard, final frames, manifest (absolute)."""
        out = []
        if "storyboard" in self.files:
            out.append(self.output_dir / self.files["storyboard"])
        out += [self.output_dir / name for name in self.files.get("final", [])]
        out.append(self.output_dir / MANIFEST)
        return out


# --------------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------------


def _deepcache(pipe: Any, config: "StoryConfig"):
    """Our DeepCache on the pipeline for the block (interval N, branch 1, uniform); off for N = 0.

    It begins a fresh cache at every ``pipe(...)`` call, i.e. every frame, and is active only in this
    thread."""
    if not config.deepcache:
        return contextlib.nullcontext()
    from vision.deepcache import DeepCache, DeepCacheError

    try:
        return DeepCache(pipe, interval=config.deepcache, branch=config.deepcache_branch)
    except DeepCacheError as err:
        raise StoryError(str(err)) from None


class StoryEngine:
    """Runs Story-Adapter on the shared hub models. See the module docstring."""

    def __init__(self, hub: Any = None):
        from vision.hub import get_hub

        self.hub = hub or get_hub()

    # -- pieces -------------------------------------------------------------------------------------

    def pipeline(self, config: StoryConfig) -> Any:
        """The generation engine's text-to-image pipeline over the hub's shared modules."""
        from vision.engines.generate import build_pipeline

        pipe = build_pipeline(self.hub, family=config.family, scheduler=config.scheduler, img2img=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def image_encoder(self, config: StoryConfig) -> Any:
        return self.hub.get(FAMILIES[config.family][1])

    def encode_references(self, images: Sequence[np.ndarray], config: StoryConfig) -> torch.Tensor:
        """All previous-round frames -> CLIP image embeddings [B, D], in ONE encoder call."""
        encoder = self.image_encoder(config)
        pixels = reference_pixels(images, config.reference_size, encoder.config.image_size)
        param = next(encoder.parameters())
        with torch.no_grad():
            return encoder(pixels.to(device=param.device, dtype=param.dtype)).image_embeds

    def _generate(self, pipe: Any, prompt: str, config: StoryConfig, size: int,
                  ip_embeds: torch.Tensor | None) -> np.ndarray:
        from vision.engines import generate

        kwargs = {}
        if ip_embeds is not None:
            kwargs["ip_adapter_image_embeds"] = [ip_embeds]
        images = pipe(prompt=config.styled(prompt), negative_prompt=config.negative_prompt or None,
                      height=size, width=size, num_inference_steps=config.steps,
                      guidance_scale=float(config.guidance), generator=generate.make_generator(config.seed),
                      output_type="np", **kwargs).images
        return (np.clip(images[0], 0, 1) * 255).round().astype(np.uint8)

    # -- manifest -----------------------------------------------------------------------------------

    def run_arguments(self, prompts: list[str], config: StoryConfig, size: int) -> dict[str, Any]:
        """Everything that decides the frames; its hash identifies a run for resuming."""
        adapter, encoder, _ = FAMILIES[config.family]
        return {"prompts": prompts, "config": asdict(config), "size": size, "tiny": bool(self.hub.tiny),
                "models": {"ip_adapter": adapter, "image_encoder": encoder, "family": config.family}}

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

    def run(self, story: str | os.PathLike | Sequence[str], config: StoryConfig | None = None,
            output_dir: str | os.PathLike | None = None,
            on_progress: Callable[[StoryProgress], Any] | None = None,
            stop_after_round: int | None = None, overwrite: bool = False) -> StoryResult:
        """Illustrate ``story`` (file or list of prompts), resuming from ``output_dir`` when it holds an
        unfinished run with the same arguments.

        ``stop_after_round=k`` returns after round k is written (``stopped_early``), as an interrupted
        run would; rerunning continues from round k + 1. A folder that holds a run with OTHER arguments
        is refused unless ``overwrite=True`` (which starts afresh there).
        """
        config = config or StoryConfig()
        config.validate()
        prompts = load_story(story)
        tiny = bool(getattr(self.hub, "tiny", False))
        size = config.resolved_size(tiny)
        n, rounds = len(prompts), config.rounds
        out = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="vision-story-"))
        out.mkdir(parents=True, exist_ok=True)

        arguments = self.run_arguments(prompts, config, size)
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
                        "rounds_total": rounds, "rounds_done": [], "rounds": {}}
        done = self._valid_rounds(manifest, out, n, size)
        manifest["rounds_done"] = done
        manifest["rounds"] = {str(r): manifest["rounds"][str(r)] for r in done}
        manifest.pop("final", None)
        manifest.pop("storyboard", None)
        resumed_from = done[-1] if done else None
        if tiny:
            from vision.tiny import TINY_NOTICE

            manifest["notice"] = TINY_NOTICE
        save_json(out / MANIFEST, manifest)

        def report(r: int, frame: int, message: str) -> None:
            if on_progress is not None:
                on_progress(StoryProgress(r, rounds, frame, n, message))

        previous = ([_read_png(out / name) for name in manifest["rounds"][str(resumed_from)]["frames"]]
                    if resumed_from is not None else None)
        first = 0 if resumed_from is None else resumed_from + 1
        stopped = False
        if first <= rounds:
            report(first, 0, f"round {first}/{rounds}" + (f" (resumed after round {resumed_from})"
                                                          if resumed_from is not None else ""))
            pipe = self.pipeline(config)
            adapter_ctx = contextlib.ExitStack()
            with adapter_ctx:
                processors = None
                for r in range(first, rounds + 1):
                    if r >= 1 and processors is None:
                        state_dict = self.hub.get(FAMILIES[config.family][0])
                        processors = adapter_ctx.enter_context(ip_adapter_on(pipe.unet, state_dict))
                    previous = self._round(pipe, processors, r, prompts, previous, config, size, out,
                                           manifest, report)
                    if stop_after_round is not None and r == stop_after_round and r < rounds:
                        stopped = True
                        break

        files: dict[str, Any] = {"manifest": MANIFEST, "rounds": manifest["rounds"]}
        result = StoryResult(prompts, config, out, size, list(manifest["rounds_done"]),
                             {int(r): e["timings"] for r, e in manifest["rounds"].items()}, files,
                             resumed_from=resumed_from, tiny=tiny, stopped_early=stopped)
        if stopped:
            return result
        final = previous
        final_names = [f"final/{frame_name(i, n)}" for i in range(n)]
        for name, image in zip(final_names, final):
            save_png(out / name, image)
        board = make_storyboard(final)
        save_png(out / STORYBOARD, board)
        manifest["final"] = final_names
        manifest["storyboard"] = STORYBOARD
        save_json(out / MANIFEST, manifest)
        files.update(final=final_names, storyboard=STORYBOARD)
        result.final, result.storyboard = final, board
        report(rounds + 1, 0, f"done: {n} frames, {rounds + 1} passes")
        return result

    def generate_round(self, pipe: Any, processors: list | None, r: int, prompts: list[str],
                       previous: list[np.ndarray] | None, config: StoryConfig, size: int,
                       on_frame: Callable[[int, np.ndarray], Any] | None = None) -> tuple[list[np.ndarray], float]:
        """All frames of round ``r`` (no files written) and the seconds spent encoding references.

        Round 0 is plain text-to-image (``processors`` unused). Round r >= 1 needs the IP processors of
        :func:`ip_adapter_on` on ``pipe.unet`` and the frames of round r-1: they are encoded once, and
        every frame attends to all their 4B tokens at scale lambda_r.
        """
        ip_embeds, encode_s = None, 0.0
        if r >= 1:
            start = time.perf_counter()
            set_reference_scale(processors, config.lambda_of(r))
            embeds = self.encode_references(previous, config)  # [B, D], one call for the whole round
            encode_s = time.perf_counter() - start
            unet_param = next(pipe.unet.parameters())
            positive = embeds[None].to(device=unet_param.device, dtype=unet_param.dtype)  # [1, B, D]
            # CFG: the pipeline splits [uncond; cond] along dim 0; uncond = projected zero embeddings.
            ip_embeds = torch.cat([torch.zeros_like(positive), positive]) if config.guidance > 1 else positive
        frames = []
        with _deepcache(pipe, config):
            for i, prompt in enumerate(prompts):
                frames.append(self._generate(pipe, prompt, config, size, ip_embeds))
                if on_frame is not None:
                    on_frame(i, frames[-1])
        return frames, encode_s

    def _round(self, pipe: Any, processors: list | None, r: int, prompts: list[str],
               previous: list[np.ndarray] | None, config: StoryConfig, size: int, out: Path,
               manifest: dict, report: Callable[[int, int, str], None]) -> list[np.ndarray]:
        """:meth:`generate_round`, writing each frame as it is made, then the round's storyboard and
        manifest entry (the round counts as done only once the manifest says so)."""
        n, rounds = len(prompts), config.rounds
        folder = round_dir(r)
        names = [f"{folder}/{frame_name(i, n)}" for i in range(n)]

        def on_frame(i: int, image: np.ndarray) -> None:
            save_png(out / names[i], image)
            report(r, i + 1, f"round {r}/{rounds}: frame {i + 1}/{n}")

        start = time.perf_counter()
        frames, encode_s = self.generate_round(pipe, processors, r, prompts, previous, config, size, on_frame)
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


def run_story(story: str | os.PathLike | Sequence[str], config: StoryConfig | None = None,
              output_dir: str | os.PathLike | None = None, hub: Any = None, **kwargs: Any) -> StoryResult:
    """Convenience wrapper: ``StoryEngine(hub).run(story, config, output_dir, **kwargs)``."""
    return StoryEngine(hub).run(story, config, output_dir, **kwargs)
