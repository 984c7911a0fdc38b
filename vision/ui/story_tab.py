"""The Story tab: Story-Adapter, one frame per line, updated after every round."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from vision.hub import ModelHub, get_hub
from vision.ui import helpers as ui
from vision.ui.helpers import tiny_prefix


def _story_round_view(result, r: int) -> tuple[list[tuple[str, str]], str]:
    """Gallery items (frame file, caption) of round ``r`` and its storyboard (the final one when done)."""
    entry = result.files["rounds"][str(r)]
    items = [(str(result.output_dir / name), f"{i + 1}. {prompt}")
             for i, (name, prompt) in enumerate(zip(entry["frames"], result.prompts))]
    board = result.files["storyboard"] if result.complete else entry["storyboard"]
    return items, str(result.output_dir / board)


@ui.GPU(duration=300)
def _story_round(prompts: list[str], config, out: Path, r: int, on_progress=None):
    """Run the story engine up to round ``r``; it resumes from its own folder, so each call adds one round.

    One GPU call per round keeps every call short (and its arguments picklable, as ZeroGPU needs).
    """
    from vision.engines.story import StoryEngine

    return StoryEngine(get_hub()).run(prompts, config, out, on_progress=on_progress, stop_after_round=r)


@ui.friendly_errors
def run_story(story_text, style, rounds, seed, steps, use_deepcache, interval,
              progress=gr.Progress(track_tqdm=True)):
    """Illustrate a story (one frame per line); yields the gallery after every round, then the storyboard."""
    from vision.engines.story import StoryConfig

    ui.require((story_text or "").strip(), "a story (one frame prompt per line)")
    config = StoryConfig(rounds=int(rounds), seed=int(seed), steps=int(steps), style=style,
                         deepcache=int(interval) if use_deepcache else 0)
    tiny = tiny_prefix(get_hub())
    out = ui.output_folder() / "story"
    # Frame-level progress from the engine; on ZeroGPU (separate GPU process) the page gets round-level only.
    on_progress = None if ui.ON_ZERO_GPU else (lambda p: progress(p.fraction, desc=p.message))
    for r in range(config.rounds + 1):
        progress(r / (config.rounds + 1), desc=f"round {r}/{config.rounds}")
        result = _story_round(story_text.splitlines(), config, out, r, on_progress)
        items, board = _story_round_view(result, r)
        status = (f"{tiny}Round {r}/{config.rounds} done ({len(items)} frames, reference weight "
                  f"{config.lambda_of(r):.2f}, {result.timings[r]['seconds']:.1f} s).")
        if result.complete:
            status += f" Finished: {len(items)} frames after {config.rounds + 1} passes."
        yield items, status, board, [str(p) for p in result.paths()] if result.complete else None


def story_tab(hub: ModelHub, limits: dict) -> None:
    from vision.engines.story import STYLES, StoryConfig

    defaults = StoryConfig()
    with gr.Tab("Story", id="story"):
        gr.Markdown("**Story-Adapter**: one frame per line. Round 0 draws each frame from its text; every "
                    "further round redraws all frames while attending to all frames of the round before, "
                    "so characters and style converge. The gallery updates after each round.")
        with gr.Row():
            with gr.Column():
                story = gr.Textbox(label="Story (one frame per line)", lines=6, elem_id="story-text",
                                   value="a red fox wakes up in a snowy forest\nthe fox crosses a frozen river\n"
                                         "the fox finds a warm cabin at dusk")
                with gr.Row():
                    style = gr.Dropdown(list(STYLES), value="comic", label="Style")
                    rounds = gr.Slider(0, 10, value=1 if hub.tiny else defaults.rounds, step=1,
                                       label="Rounds (after round 0)")
                with gr.Row():
                    seed = gr.Number(value=defaults.seed, precision=0, label="Seed (all frames, all rounds)")
                    steps = gr.Slider(1, 100, value=2 if hub.tiny else 30, step=1, label="Denoising steps")
                with gr.Row():
                    deepcache = gr.Checkbox(value=True, label="DeepCache")
                    interval = gr.Slider(2, 10, value=defaults.deepcache, step=1, label="DeepCache interval N")
                button = gr.Button("Illustrate the story", variant="primary", elem_id="story-run")
            with gr.Column():
                gallery = gr.Gallery(label="Frames (latest round)", columns=4, height="auto", elem_id="story-gallery")
                status = gr.Markdown(elem_id="story-status")
                board = gr.Image(label="Storyboard", type="filepath", interactive=False, elem_id="story-board")
                files = gr.File(label="Download: storyboard, final frames, manifest", file_count="multiple")
        button.click(run_story, [story, style, rounds, seed, steps, deepcache, interval],
                     [gallery, status, board, files], api_name="story", **limits)
