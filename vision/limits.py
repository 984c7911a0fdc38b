"""Limits on what a user asks for (diffusion settings, story length, videos), in one place for the CLI, the app and
the engines.

Checked up front, before any model loads, so that a value out of range is a clear message naming the
option rather than an allocator error or a scheduler's complaint after the start-up:

* ``MAX_STEPS``: the schedulers of SD1.5 and SDXL are trained on 1000 timesteps; diffusers refuses more
  denoising steps, but only once the pipeline runs.
* ``MAX_SIDE``: pixels per image side. 2048 is twice SDXL's native side (four times SD1.5's); memory
  grows with the square of the side (``--size 100000`` asks for a 10-gigapixel image), and the VAE
  works on 8x8-pixel latents, so a side is a multiple of ``SIDE_MULTIPLE``.
* ``MAX_STORY_FRAMES``: frames (lines) of one story run; every round attends to all frames of the round
  before (4 tokens each), so memory and time grow with it.
* ``MAX_APP_STORY_FRAMES``: the same in the app, which serves everyone from one run slot: a 500-line
  story held it about 11 minutes (tiny models) while other requests timed out behind it. Longer stories run
  from the CLI (``python -m vision story``, which also resumes). ``VISION_APP_MAX_STORY_FRAMES`` raises it
  on a private server.
* ``MAX_PROMPT_CHARS``: characters of one frame's prompt; the text encoders read 77 tokens (a few hundred
  characters), so a longer line is a paste gone wrong, not a prompt.
* ``MAX_STORY_CHARACTERS``: characters declared in one story. The characters a frame names share one
  reference softmax (each gets about 1/K of the character weight), so identities already blend with three
  or four in one frame; 8 covers a cast (ViStoryBench's 80 stories have 344 characters, 4.3 per story) and
  is the Story tab's number of character rows.
* ``MAX_CHARACTER_IMAGES``: reference images per character; their CLIP embeddings are averaged into one
  identity, and more views of the same character change that mean less and less.

And on the videos the video engine reads (:mod:`vision.videoio`), each overridable by an environment
variable of the same name prefixed ``VISION_``:

* ``MAX_VIDEO_BYTES``: 8 GiB per file (a feature film at high bitrate; larger is refused before decoding).
* ``MAX_VIDEO_SIDE``: 4096 pixels per frame side (DCI 4K); each frame is encoded by SAM at 1024 anyway.
* ``MAX_VIDEO_FRAMES``: 20,000 frames per run (after ``--every`` / ``--max-frames``): about 14 minutes at
  24 fps, hours of work per run on a CPU; longer runs are split with ``--every`` or ``--max-frames``.
"""

from __future__ import annotations

import numbers
import os

MAX_STEPS = 1000
MAX_SIDE = 2048
SIDE_MULTIPLE = 8
MAX_STORY_FRAMES = 1000
MAX_APP_STORY_FRAMES = int(os.environ.get("VISION_APP_MAX_STORY_FRAMES", 50))
MAX_PROMPT_CHARS = 1000
MAX_VIDEO_BYTES = int(os.environ.get("VISION_MAX_VIDEO_BYTES", str(8 * 2**30)))
MAX_VIDEO_SIDE = int(os.environ.get("VISION_MAX_VIDEO_SIDE", "4096"))
MAX_VIDEO_FRAMES = int(os.environ.get("VISION_MAX_VIDEO_FRAMES", "20000"))
MAX_STORY_CHARACTERS = 8
MAX_CHARACTER_IMAGES = 4


class LimitError(ValueError):
    """A setting outside its limit; the message names the setting and the allowed range."""


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_steps(steps: object, name: str = "steps") -> int:
    """``steps`` if it is an integer in 1..MAX_STEPS, else :class:`LimitError` naming ``name``."""
    if not _is_int(steps) or not 1 <= steps <= MAX_STEPS:
        raise LimitError(f"{name} must be an integer from 1 to {MAX_STEPS} (the schedulers are trained on "
                         f"{MAX_STEPS} timesteps), got {steps!r}")
    return steps


def check_side(side: object, name: str = "size") -> int:
    """``side`` (pixels) if it is a multiple of 8 in 8..MAX_SIDE, else :class:`LimitError` naming ``name``."""
    if not _is_int(side) or not SIDE_MULTIPLE <= side <= MAX_SIDE or side % SIDE_MULTIPLE:
        raise LimitError(f"{name} must be a multiple of {SIDE_MULTIPLE} from {SIDE_MULTIPLE} to {MAX_SIDE} pixels "
                         f"(the VAE works on 8x8-pixel latents; memory grows with the square of the side), "
                         f"got {side!r}")
    return side


def check_story(prompts: list[str], max_frames: int = MAX_STORY_FRAMES, source: str = "the story",
                where: str = "") -> list[str]:
    """``prompts`` (one per frame) if there are at most ``max_frames`` of at most MAX_PROMPT_CHARS characters,
    else :class:`LimitError` naming ``source``, the line and the limit (``where`` says whose limit it is)."""
    if len(prompts) > max_frames:
        raise LimitError(f"{source} has {len(prompts)} frames (lines); at most {max_frames} are allowed per run"
                         f"{where}")
    for number, prompt in enumerate(prompts, start=1):
        if len(prompt) > MAX_PROMPT_CHARS:
            raise LimitError(f"{source}: line {number} has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} "
                             "are allowed (the text encoders read the first 77 tokens only)")
    return prompts
