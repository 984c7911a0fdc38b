"""The Story tab: Story-Adapter, one frame per line, updated after every round; every round's frames
stay viewable (the iteration is the method: a round selector steps through them)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from vision.hub import ModelHub, get_hub
from vision.ui import errors, examples, form, gpu, notices, runs, storage
from vision.ui.notices import tiny_prefix

TINY_ROUNDS, TINY_STEPS = 1, 2  # the tab's defaults in tiny mode (outputs are noise: keep runs short)
HOW_TO_READ = ("How to read this: round 0 draws each frame from its text alone; every later round redraws all "
               "frames while attending to all frames of the round before, so characters and style converge. "
               "Pick a round to see its frames and storyboard; the downloads are the last round's.")


def _story_round_view(result, r: int) -> tuple[list[tuple[str, str]], str]:
    """Gallery items (frame file, caption) of round ``r`` and its storyboard (the final one when done)."""
    entry = result.files["rounds"][str(r)]
    items = [(str(result.output_dir / name), f"{i + 1}. {prompt}")
             for i, (name, prompt) in enumerate(zip(entry["frames"], result.prompts))]
    board = result.files["storyboard"] if result.complete and r == result.config.rounds else entry["storyboard"]
    return items, str(result.output_dir / board)


@gpu.GPU(duration=300)
def _story_round(prompts: list[str], config, out: Path, r: int, on_progress=None):
    """Run the story engine up to round ``r``; it resumes from its own folder, so each call adds one round.

    One GPU call per round keeps every call short (and its arguments picklable, as ZeroGPU needs).
    """
    from vision.engines.story import StoryEngine

    return StoryEngine(config, get_hub())(prompts, out, progress=on_progress, stop_after_round=r)


def _round_choices(done: int) -> list[tuple[str, int]]:
    return [(f"round {r}", r) for r in range(done + 1)]


def story_config(preset, style, rounds, seed, steps, use_deepcache, interval):
    """The preset's :class:`StoryConfig` with the tab's settings (steps checked against :mod:`vision.limits`)."""
    from vision.engines.story import StoryConfig
    from vision.limits import check_steps

    return StoryConfig.from_preset(preset or "sd15", rounds=int(rounds), seed=int(seed),
                                   steps=check_steps(int(steps), "Denoising steps"), style=style,
                                   deepcache=int(interval) if use_deepcache else 0).validate()


def story_prompts(story_text: str | None) -> list[str]:
    """The story's frame prompts (one per non-blank line), within the app's limits (:mod:`vision.limits`)."""
    from vision.limits import MAX_APP_STORY_FRAMES, check_story

    prompts = [line.strip() for line in (story_text or "").splitlines() if line.strip()]
    form.require(prompts, "a story (one frame prompt per line)")
    return check_story(prompts, MAX_APP_STORY_FRAMES, "story",
                       where=" in the app, which shares one run slot (longer stories: python -m vision story "
                             "--story FILE, which also resumes)")


@errors.friendly_errors
def run_story(story_text, preset, style, rounds, seed, steps, use_deepcache, interval,
              progress=gr.Progress(), request: gr.Request = None):
    """Illustrate a story (one frame per line); yields the gallery after every round, then the storyboard,
    with the round selector and the stored rounds' views. Stops at the next denoising step when its client
    cancels or leaves (:mod:`vision.ui.runs`)."""
    from vision.wording import plural

    prompts = story_prompts(story_text)
    config = story_config(preset, style, rounds, seed, steps, use_deepcache, interval)
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
        result = yield from run.in_background(_story_round, prompts, config, out, r, on_progress,
                                              idle=(gr.skip(),) * 6)
        items, board = _story_round_view(result, r)
        views[str(r)] = (items, board)
        status = (f"{tiny}{config.describe()}, {config.base_model()}. Round {r}/{config.rounds} done "
                  f"({plural(len(items), 'frame')}, reference weight {config.lambda_of(r):.2f}, "
                  f"{result.timings[r]['seconds']:.1f} s).")
        if result.complete:
            status += (f" Finished: {plural(len(items), 'frame')} after "
                       f"{plural(config.rounds + 1, 'pass', 'passes')}.")
        files = [str(p) for p in result.paths()] if result.complete else None
        yield (items, status, board, files, gr.update(choices=_round_choices(r), value=r), dict(views))


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
    return (c.style, TINY_ROUNDS if tiny else c.rounds, TINY_STEPS if tiny else c.steps, c.deepcache > 0,
            max(2, c.deepcache or StoryConfig().deepcache))


def story_tab(hub: ModelHub, limits: dict) -> None:
    from vision.engines.story import PRESETS, STYLES, StoryConfig
    from vision.limits import MAX_STEPS

    defaults = StoryConfig()
    example = ("a red fox wakes up in a snowy forest\nthe fox crosses a frozen river\n"
               "the fox finds a warm cabin at dusk")
    with gr.Tab("Story", id="story"):
        notices.missing_weights_note(hub, "story")
        gr.Markdown("**Story-Adapter**: one frame per line. Round 0 draws each frame from its text; every "
                    "further round redraws all frames while attending to all frames of the round before, "
                    "so characters and style converge. The gallery updates after each round.")
        with gr.Row():
            with gr.Column():
                story = gr.Textbox(label="Story (one frame per line)", lines=6, elem_id="story-text", value=example)
                preset = gr.Dropdown(list(PRESETS), value=defaults.preset, label="Preset",
                                     info="sd15: SD1.5 (fits 16 GB); sdxl: RealVisXL V4.0; reference: the "
                                          "reference run (SDXL RealVisXL, DDIM 50, 10 rounds, no DeepCache)")
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
        inputs = [story, preset, style, rounds, seed, steps, deepcache, interval]
        example_rounds = TINY_ROUNDS if hub.tiny else 2
        examples.example_button(f"Example: {' / '.join(example.splitlines())} (sd15, comic, {example_rounds} rounds; "
                          "click, then Illustrate the story)",
                          [example, "sd15", "comic", example_rounds, 0, TINY_STEPS if hub.tiny else 30, True, 3],
                          inputs, "story-example")
        preset.input(lambda name: preset_settings(name, hub.tiny), preset, [style, rounds, steps, deepcache, interval],
                     queue=False, api_visibility="undocumented")
        run_event = button.click(run_story, inputs, [gallery, status, board, files, round_pick, views],
                                 api_name="story", **limits)
        # Gradio closes the running handler; the engine stops at its next step (vision.ui.runs)
        stop.click(None, None, None, cancels=[run_event], queue=False, api_visibility="undocumented")
        round_pick.input(show_round, [views, round_pick], [gallery, board], queue=False, api_visibility="undocumented")
