"""The Story tab: Story-Adapter, one frame per line, updated after every round; every round's frames
stay viewable (the iteration is the method: a round selector steps through them)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from vision.hub import ModelHub, get_hub
from vision.ui import errors, examples, form, gpu, notices, runs, storage
from vision.ui import story_characters as characters_ui
from vision.ui.notices import tiny_prefix

TINY_ROUNDS, TINY_STEPS = 1, 2  # the tab's defaults in tiny mode (outputs are noise: keep runs short)
HOW_TO_READ = ("How to read this: round 0 draws each frame from its text alone; every later round redraws all "
               "frames while attending to all frames of the round before, so characters and style converge. "
               "Pick a round to see its frames and storyboard; the downloads are the last round's.")


def _story_round_view(result, r: int) -> tuple[list[tuple[str, str]], str]:
    """Gallery items (frame file, caption with the frame's characters) of round ``r`` and its storyboard (the
    final one when done)."""
    entry = result.files["rounds"][str(r)]
    casts = result.frame_characters or [[] for _ in result.prompts]
    items = [(str(result.output_dir / name), characters_ui.caption(i, prompt, cast))
             for i, (name, prompt, cast) in enumerate(zip(entry["frames"], result.prompts, casts, strict=True))]
    board = result.files["storyboard"] if result.complete and r == result.config.rounds else entry["storyboard"]
    return items, str(result.output_dir / board)


@gpu.GPU(duration=300)
def _story_round(prompts: list[str], config, out: Path, r: int, on_progress=None, characters=()):
    """Run the story engine up to round ``r``; it resumes from its own folder, so each call adds one round.

    One GPU call per round keeps every call short (and its arguments picklable, as ZeroGPU needs: the
    characters are names and file paths).
    """
    from vision.engines.story import StoryEngine

    return StoryEngine(config, get_hub())(prompts, out, progress=on_progress, stop_after_round=r,
                                          characters=list(characters))


def _round_choices(done: int) -> list[tuple[str, int]]:
    return [(f"round {r}", r) for r in range(done + 1)]


def story_config(preset, style, rounds, seed, steps, use_deepcache, interval, model=None, loras=None):
    """The preset's :class:`StoryConfig` with the tab's settings (steps checked against :mod:`vision.limits`;
    ``model`` a checkpoint, ``loras`` one ``PATH[:SCALE]`` per line)."""
    from vision.engines.story import StoryConfig
    from vision.limits import check_steps

    lora_lines = tuple(line.strip() for line in (loras or "").splitlines() if line.strip())
    return StoryConfig.from_preset(preset or "sd15", rounds=int(rounds), seed=int(seed),
                                   steps=check_steps(int(steps), "Denoising steps"), style=style,
                                   deepcache=int(interval) if use_deepcache else 0,
                                   model=(model or "").strip() or None, loras=lora_lines).validate()


def memory_note(config, tiny: bool) -> str:
    """Which memory options a run of ``config`` on this server has on (:mod:`vision.engines.story.memory`)."""
    from vision.engines.story import describe_memory, memory_options

    hub = get_hub()
    return describe_memory(memory_options(config, config.resolved_size(tiny), hub.device)) + "."


def story_prompts(story_text: str | None) -> list[str]:
    """The story's frame prompts (one per non-blank line), within the app's limits (:mod:`vision.limits`)."""
    from vision.limits import MAX_APP_STORY_FRAMES, check_story

    prompts = [line.strip() for line in (story_text or "").splitlines() if line.strip()]
    form.require(prompts, "a story (one frame prompt per line)")
    return check_story(prompts, MAX_APP_STORY_FRAMES, "story",
                       where=" in the app, which shares one run slot (longer stories: python -m vision story "
                             "--story FILE, which also resumes)")


@errors.friendly_errors
def run_story(story_text, preset, style, rounds, seed, steps, use_deepcache, interval, model=None, loras=None,
              character_files=None, character_table=None, progress=gr.Progress(), request: gr.Request = None):
    """Illustrate a story (one frame per line) with its characters (uploaded pictures, named in the
    Characters table); yields the gallery after every round, then the storyboard, with the round selector
    and the stored rounds' views. Stops at the next denoising step when its client cancels or leaves
    (:mod:`vision.ui.runs`)."""
    prompts = story_prompts(story_text)
    config = story_config(preset, style, rounds, seed, steps, use_deepcache, interval, model, loras)
    characters = characters_ui.characters_from(character_files, character_table)
    run = runs.Run(request, "story")
    run.check()  # a request whose client left while it was queued does nothing
    tiny = tiny_prefix(get_hub())
    out = storage.output_folder() / "story"
    views: dict[str, tuple[list, str]] = {}
    # Step-level progress (and so cancellation) from the engine; on ZeroGPU (a separate GPU process that
    # cannot call back into the page) round-level only.
    on_progress = None if gpu.ON_ZERO_GPU else run.progress(progress)
    for r in range(config.rounds + 1):
        progress(r / (config.rounds + 1), desc=f"round {r}/{config.rounds}")
        run.check()
        result = yield from run.in_background(_story_round, prompts, config, out, r, on_progress, characters,
                                              idle=(gr.skip(),) * 6)
        if r == 0:
            for warning in result.warnings:
                notices.warn(warning)
        items, board = _story_round_view(result, r)
        views[str(r)] = (items, board)
        files = [str(p) for p in result.paths()] if result.complete else None
        yield (items, round_status(result, config, r, tiny), board, files,
               gr.update(choices=_round_choices(r), value=r), dict(views))


def round_status(result, config, r: int, tiny: str) -> str:
    """The status after round ``r``: preset and model, the round's numbers, each frame's characters, the
    warnings, the memory options, and the end of the run."""
    from vision.wording import plural

    frames = len(result.prompts)
    model = (result.models.get("checkpoint") or {}).get("source") or config.base_model()
    lines = [f"{tiny}{config.describe()}, {model}. Round {r}/{config.rounds} done ({plural(frames, 'frame')}, "
             f"reference weight {config.lambda_of(r):.2f}, {result.timings[r]['seconds']:.1f} s)."]
    if result.complete:
        lines[0] += f" Finished: {plural(frames, 'frame')} after {plural(config.rounds + 1, 'pass', 'passes')}."
    lines.append(characters_ui.cast_text(result.prompts, result.frame_characters))
    lines += [f"Warning: {w}" for w in result.warnings]
    if result.models.get("loras"):
        lines.append("LoRAs: " + ", ".join(f"{Path(x['path']).name} x{x['scale']:g}" for x in result.models["loras"]))
    lines.append(memory_note(config, result.tiny))
    return "\n\n".join(line for line in lines if line)


def show_round(views: dict | None, r):
    """The stored frames and storyboard of round ``r`` (from the run's state; nothing is recomputed)."""
    if not views or r is None or str(int(r)) not in views:
        raise gr.Error("Run the story first: the rounds appear here as they finish.")
    items, board = views[str(int(r))]
    return gr.update(value=items, label=f"Frames (round {int(r)})"), board


def preset_settings(name: str, tiny: bool) -> tuple:
    """The tab's controls as story preset ``name`` sets them (style, rounds, steps, DeepCache on, N);
    tiny mode keeps its short runs."""
    from vision.engines.story import StoryConfig

    c = StoryConfig.from_preset(name)
    steps = min(c.steps, TINY_STEPS) if tiny else c.steps
    return (c.style, TINY_ROUNDS if tiny else c.rounds, steps, c.deepcache > 0,
            max(2, c.deepcache or StoryConfig().deepcache), memory_note(c, tiny))


def _settings(hub: ModelHub) -> list:
    """The settings column's controls, in the order ``run_story`` takes them (story .. interval)."""
    from vision.engines.story import PRESETS, STYLES, StoryConfig
    from vision.limits import MAX_STEPS

    defaults = StoryConfig()
    preset = gr.Dropdown(list(PRESETS), value=defaults.preset, label="Preset", elem_id="story-preset",
                         info="sd15: SD1.5 (fits 16 GB); sdxl: RealVisXL V4.0; reference: the reference run (SDXL "
                              "RealVisXL, DDIM 50, 10 rounds, no DeepCache); fast: LCM-LoRA, 4 steps per round")
    with gr.Row():
        style = gr.Dropdown(list(STYLES), value=defaults.style, label="Style")
        rounds = gr.Slider(0, 10, value=TINY_ROUNDS if hub.tiny else defaults.rounds, step=1,
                           label="Rounds (after round 0)")
    with gr.Row():
        seed = gr.Number(value=defaults.seed, precision=0, label="Seed (all frames, all rounds)")
        steps = gr.Slider(1, MAX_STEPS, value=TINY_STEPS if hub.tiny else defaults.steps, step=1,
                          label="Denoising steps")
    with gr.Row():
        deepcache = gr.Checkbox(value=defaults.deepcache > 0, label="DeepCache")
        interval = gr.Slider(2, 10, value=defaults.deepcache, step=1, label="DeepCache interval N")
    return [preset, style, rounds, seed, steps, deepcache, interval]


def _characters_and_models() -> list:
    """The Characters (pictures + table) and the user's model and LoRAs: ``run_story``'s last inputs."""
    with gr.Accordion("Characters (optional)", open=True):
        gr.Markdown(characters_ui.HELP)
        pictures = gr.File(label="Character pictures", file_count="multiple", file_types=["image"],
                           elem_id="story-character-files")
        table = gr.Dataframe(headers=characters_ui.HEADERS, datatype=["str", "str"], col_count=(2, "fixed"),
                             row_count=(1, "dynamic"), type="array", interactive=True, label="Characters",
                             elem_id="story-characters")
    with gr.Accordion("Your model and LoRAs (optional)", open=False):
        model = gr.Textbox(label="Model: an SD1.5 / SDXL checkpoint (.safetensors file, diffusers folder or Hub "
                                 "repo id); empty: the preset's", elem_id="story-model")
        loras = gr.Textbox(label="LoRAs: one PATH[:SCALE] per line", lines=2, elem_id="story-loras")
    pictures.upload(characters_ui.fill_table, [pictures, table], table, queue=False, api_visibility="undocumented")
    return [model, loras, pictures, table]


def story_tab(hub: ModelHub, limits: dict) -> None:
    from vision.engines.story import StoryConfig

    example = ("a red fox wakes up in a snowy forest\nthe fox crosses a frozen river\n"
               "the fox finds a warm cabin at dusk")
    with gr.Tab("Story", id="story"):
        notices.missing_weights_note(hub, "story")
        gr.Markdown("**Story-Adapter**: one frame per line. Round 0 draws each frame from its text (and its "
                    "characters' pictures); every further round redraws all frames while attending to all frames "
                    "of the round before, so characters and style converge. The gallery updates after each round.")
        with gr.Row():
            with gr.Column():
                story = gr.Textbox(label="Story (one frame per line)", lines=6, elem_id="story-text", value=example)
                settings = _settings(hub)
                memory = gr.Markdown(memory_note(StoryConfig(), hub.tiny), elem_id="story-memory")
                extra = _characters_and_models()
                with gr.Row():
                    button = gr.Button("Illustrate the story", variant="primary", elem_id="story-run")
                    stop = gr.Button("Stop", variant="stop", elem_id="story-stop")
            with gr.Column():
                round_pick = gr.Radio([], label="Round to view", elem_id="story-round")
                gallery = gr.Gallery(label="Frames (latest round)", columns=4, height="auto", elem_id="story-gallery")
                status = gr.Markdown(label="Status", elem_id="story-status")
                board = gr.Image(label="Storyboard", type="filepath", interactive=False, elem_id="story-board")
                files = gr.File(label="Download: storyboard, final frames, manifest", file_count="multiple")
                gr.Markdown(HOW_TO_READ)
        views = gr.State({})
        inputs = [story, *settings, *extra]
        example_rounds = TINY_ROUNDS if hub.tiny else 2
        examples.example_button(f"Example: {' / '.join(example.splitlines())} (sd15, comic, {example_rounds} rounds; "
                                "click, then Illustrate the story)",
                                [example, "sd15", "comic", example_rounds, 0, TINY_STEPS if hub.tiny else 30, True, 3],
                                inputs[:8], "story-example")
        preset = settings[0]
        preset.input(lambda name: preset_settings(name, hub.tiny), preset, [*settings[1:], memory],
                     queue=False, api_visibility="undocumented")
        run_event = button.click(run_story, inputs, [gallery, status, board, files, round_pick, views],
                                 api_name="story", **limits)
        # Gradio closes the running handler; the engine stops at its next step (vision.ui.runs)
        stop.click(None, None, None, cancels=[run_event], queue=False, api_visibility="undocumented")
        round_pick.input(show_round, [views, round_pick], [gallery, board], queue=False, api_visibility="undocumented")
