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

Every prompt is wrapped in a style template (the reference's comic / film / realistic texts, default
comic, or none) and the reference's negative prompt is the default. Models all come from the hub:
SD1.5 + ``ip_adapter_sd15`` + ``ip_image_encoder_h`` (``family="sd15"``, CFG 7.5, IP-Adapter's own
default) or SDXL + ``ip_adapter_sdxl`` + ``ip_image_encoder_bigg`` (``family="sdxl"``, CFG 5.0, the SDXL
pipeline default that the reference runs with) on the base checkpoint ``checkpoint``: RealVisXL V4.0
(``realvisxl``, the paper's) by default for SDXL, or SDXL base 1.0 (``sdxl``). The IP-Adapter weights
are put onto the SHARED UNet only inside :func:`ip_adapter_on`, which restores the UNet exactly
afterwards. DeepCache (interval N = 3 by default) accelerates every pass.

Characters (issue 27): a story may declare characters, each a name and 1-4 reference pictures
(:mod:`.characters`: ``characters=["Ann=ann.png,ann_side.png"]``; at most 8, :mod:`vision.limits`). A frame
uses the characters it names (whole words, any case) or those of a leading ``[Name1, Name2]``; the record
lists them per frame (``frame_characters``). With characters two copies of the IP-Adapter are on the UNet
from round 0 on, and every cross-attention layer computes ``Attn(text) + lambda_r * Attn(round tokens) +
w_c * Attn(the frame's characters' tokens)`` (separate softmaxes; w_c = ``character_scale``, 0.6;
lambda_0 = 0; each character's identity = the mean CLIP embedding of its pictures, 4 tokens):
:mod:`.conditioning` says exactly how and why. Without characters nothing of this runs and the frames
are bit-identical to the engine before characters.

Models: the base model is the family's checkpoint or the user's own (``model``: a single file, a diffusers
folder or a Hub repo id) with the user's ``loras``, all through the generation engine's loader
(:mod:`vision.engines.generate.models`; :mod:`.run_models`). Memory (:mod:`.memory`): VAE tiling, the
image encoder on the CPU between rounds, diffusers' model CPU offload.

Presets (``StoryConfig.from_preset(name, **overrides)``; the manifest and the record name the preset and
the mode): ``sd15`` (the default, fits a 16 GB GPU: SD1.5 at 512^2, DDIM 50 steps, DeepCache N = 3),
``sdxl`` (RealVisXL V4.0 at 1024^2, DeepCache N = 3, VAE tiling and image-encoder offload on CUDA),
``reference`` (the reference run: RealVisXL V4.0, DDIM 50 steps with scaled_linear betas 0.00085-0.012,
steps_offset 1, clip_sample and set_alpha_to_one off, 1024^2, CFG 5.0, comic style, 10 rounds, lambda
0.3 -> 0.5, frames resized to 256^2 before encoding, DeepCache off, untiled VAE decode,
``reference=True``) and ``fast`` (the family's LCM-LoRA from the weights registry with the LCM sampler,
4 steps per round, guidance 1 = no CFG, DeepCache off: it does not pay at 4 steps,
``bench/results/story_fast.md``).

Reference mode (``reference=True``) changes one behaviour: DeepCache, if a user turns it on, numbers its
steps as the DeepCache paper's loop does (:mod:`vision.deepcache.steps`; identical for DDIM). Everything
else the reference does is either what every mode does (GRCA as above, round 0 = text only, 256^2
reference frames, CLIP's 224 preprocessing, zero-embedding uncond tokens, one seed) or a setting of the
preset. Differences kept in every mode, with the reason: the initial noise comes from a CPU generator
(the reference draws it on the GPU: ours does not depend on the device, and the reference's pixels
cannot be matched anyway, as its attention processor computes baddbmm + softmax where diffusers calls
scaled_dot_product_attention); the seed is ``seed`` (the reference draws a random one per run); the story
comes from a file or a list (the reference hard-codes its stories and Robinson/Friday substitutions).

The package: :mod:`.config` (settings, presets, styles, story input), :mod:`.characters` (declaring and
finding characters), :mod:`.conditioning` (each frame's IP-Adapter input), :mod:`.adapter` (the IP-Adapter
on the shared UNet, CLIP pixels), :mod:`.run_models` and :mod:`.memory` (the run's models and memory
options), :mod:`.engine` (the rounds), :mod:`.manifest` (resuming), :mod:`.results` (progress events,
the result), :mod:`.storyboard`, :mod:`.files` (the output folder's files).

Output folder (written as rounds finish, every file atomically)::

    round_00/frame_000.png ... round_00/storyboard_round_00.png
    ...
    round_RR/...
    characters/<name>_<k>.png    the characters' pictures (with characters)
    final/frame_000.png ...      the last round's frames
    storyboard.png               grid of the final frames
    manifest.json                arguments + hash, rounds done, file names, timings

Rerunning with the same arguments (prompts, characters and their pictures' pixels, settings; the offload
switches may change) and folder continues after the last COMPLETE round (a round is complete once its
manifest entry is written) and gives the same final frames as an uninterrupted run.

Story text files: one frame per line; leading/trailing whitespace is stripped and blank lines are
skipped (they do not make empty frames). ``rounds=0`` runs round 0 only (text-to-image for every frame,
no reference attention); those frames are then the final frames.

Memory: besides the models, a run holds two rounds of frames (previous + current, B x H x W x 3 bytes
each: 200 frames at 512^2 = 150 MiB per round), the B CLIP embeddings and the 4B reference tokens; the
rounds before are on disk (:meth:`StoryResult.round_images` reads them back).
"""

from vision.engines.story.adapter import clip_pixels, ip_adapter_on, reference_pixels
from vision.engines.story.characters import Character, LoadedCharacter, cast_frames, load_characters
from vision.engines.story.conditioning import Cast, ip_inputs
from vision.engines.story.config import (
                                         DEFAULT_NEGATIVE,
                                         FAMILIES,
                                         LCM_MAX_STEPS,
                                         MAX_FRAMES,
                                         PRESETS,
                                         STYLES,
                                         TINY_SIZE,
                                         StoryConfig,
                                         StoryError,
                                         StoryFamily,
                                         load_story,
)
from vision.engines.story.engine import StoryEngine
from vision.engines.story.files import (
                                         MANIFEST,
                                         MANIFEST_FORMAT,
                                         STORYBOARD,
                                         atomic_write,
                                         frame_name,
                                         read_png,
                                         round_dir,
                                         save_json,
                                         save_png,
)
from vision.engines.story.manifest import arguments_hash
from vision.engines.story.memory import describe_memory, memory_options
from vision.engines.story.results import StoryResult, story_progress
from vision.engines.story.storyboard import (
                                         STORYBOARD_GAP,
                                         STORYBOARD_MAX_WIDTH,
                                         make_storyboard,
                                         storyboard_columns,
                                         storyboard_layout,
)

__all__ = ["StoryConfig", "StoryEngine", "StoryError", "StoryResult", "StoryFamily", "story_progress",
           "load_story", "ip_adapter_on", "reference_pixels", "clip_pixels", "make_storyboard",
           "Character", "LoadedCharacter", "load_characters", "cast_frames", "Cast", "ip_inputs", "arguments_hash",
           "memory_options", "describe_memory",
           "storyboard_columns", "storyboard_layout", "frame_name", "round_dir", "save_png", "save_json", "read_png",
           "atomic_write", "DEFAULT_NEGATIVE", "FAMILIES", "LCM_MAX_STEPS", "MAX_FRAMES", "PRESETS", "STYLES",
           "TINY_SIZE", "MANIFEST", "MANIFEST_FORMAT", "STORYBOARD", "STORYBOARD_GAP", "STORYBOARD_MAX_WIDTH"]
