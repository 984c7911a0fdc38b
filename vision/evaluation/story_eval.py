"""``python -m vision eval story``: Story-Adapter's round-by-round curve (CLIP-T and aCCS per round) over
a folder of stories.

Stories: ``--stories DIR`` holds one text file per story (``*.txt``), one frame prompt per non-blank
line. Mark a character with a ``[name]`` tag where it appears: ``[Red] walks into the [wolf]'s den``.
The tag's text stays in the prompt the engine draws (``Red walks into the wolf's den``); names match
case-insensitively.

Metrics per round r (the frames of round r, read from the engine's output folder), with the scorer of
:mod:`vision.evaluation.clip_scoring` (``clip_g14`` by default; ``--scorer`` picks another hub CLIP):

* CLIP-T: cos(frame, its prompt), mean over a story's frames;
* aCCS: for every character tagged in at least two frames, cos(image of its first frame, image of
  each later frame it appears in), mean over all those pairs of the story. A story without such a
  character falls back to the mean over ALL frame pairs (i < j); the table says how many stories did.
* Round values are means over stories. The Story-Adapter repositories ship no evaluation code, so the
  scorer of the paper's numbers is not known: CLIP-T / aCCS here are plain cosines (fractions).

Each story runs in ``--out/stories/<name>/`` with the engine's own resumable layout (rerunning the same
command continues unfinished stories). Outputs in ``--out``: ``items.jsonl`` (one line per frame and
round: CLIP-T, characters; one per story and round: aCCS and its basis), ``rounds.csv``,
``summary.json``, ``table.txt`` and ``rounds.png`` (aCCS and CLIP-T against the round).
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vision.evaluation import records as R

TAG = re.compile(r"\[([^\[\]]+)\]")
CSV_NAME = "rounds.csv"
PLOT = "rounds.png"
ALL_PAIRS = "all frame pairs"
CHARACTERS = "characters"


@dataclass(frozen=True)
class Story:
    """A story file: the prompts the engine draws and, per frame, the characters tagged in it."""

    name: str
    path: Path
    prompts: tuple[str, ...]
    characters: tuple[tuple[str, ...], ...]

    def appearances(self) -> dict[str, list[int]]:
        """character -> the frames (in order) it is tagged in."""
        out: dict[str, list[int]] = {}
        for i, names in enumerate(self.characters):
            for name in names:
                out.setdefault(name, []).append(i)
        return out


def parse_story(path: str | Path) -> Story:
    """A story file with ``[name]`` character tags (see the module docstring)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise R.EvalError(f"{path}: not a UTF-8 text file ({err})") from None
    prompts, characters = [], []
    for line in (raw.strip() for raw in lines):
        if not line:
            continue
        names = tuple(dict.fromkeys(m.strip().casefold() for m in TAG.findall(line) if m.strip()))
        prompts.append(re.sub(r"\s+", " ", TAG.sub(lambda m: m.group(1).strip(), line)).strip())
        characters.append(names)
    if not prompts:
        raise R.EvalError(f"{path} has no prompts: a story file holds one frame prompt per line")
    return Story(path.stem, path, tuple(prompts), tuple(characters))


def load_stories(folder: str | Path, limit: int | None = None) -> list[Story]:
    folder = Path(folder)
    if not folder.is_dir():
        raise R.EvalError(f"{folder} is not a folder: --stories must hold one .txt file per story")
    files = sorted(folder.glob("*.txt"))
    if limit is not None:
        files = files[: max(0, limit)]
    if not files:
        raise R.EvalError(f"{folder} holds no story (*.txt file, one frame prompt per line)")
    return [parse_story(f) for f in files]


def accs(embeddings: torch.Tensor, appearances: dict[str, list[int]]) -> tuple[float, int, str]:
    """(aCCS, number of pairs, basis) from L2-normalised frame embeddings [F, D] (see the module
    docstring); basis is "characters" or, without a character seen twice, "all frame pairs"."""
    e = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    pairs = [(frames[0], later) for frames in appearances.values() if len(frames) > 1 for later in frames[1:]]
    basis = CHARACTERS
    if not pairs:
        basis = ALL_PAIRS
        pairs = [(i, j) for i in range(len(e)) for j in range(i + 1, len(e))]
    if not pairs:
        return float("nan"), 0, basis
    first, later = zip(*pairs)
    sims = (e[list(first)] * e[list(later)]).sum(-1)
    return float(sims.mean()), len(pairs), basis


def score_round(scorer: Any, story: Story, frames: Sequence[np.ndarray]) -> dict:
    """CLIP-T per frame and the story's aCCS for one round's frames."""
    images = scorer.image_embeddings(frames)
    texts = scorer.text_embeddings(list(story.prompts))
    clip_t = (images * texts).sum(-1).double().numpy()
    value, pairs, basis = accs(images, story.appearances())
    return {"clip_t": clip_t, "clip_t_mean": float(clip_t.mean()), "accs": value, "pairs": pairs, "basis": basis}


def engine_config(args: argparse.Namespace) -> Any:
    from vision.engines.story import StoryConfig

    overrides = {**R.parse_settings(args.set), "rounds": args.rounds, "steps": args.steps, "size": args.size,
                 "deepcache": args.deepcache, "seed": args.seed, "style": args.style, "family": args.family}
    return R.make_config(StoryConfig, args.preset, overrides).validate()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stories", required=True, metavar="DIR", help="folder of stories, one .txt per story "
                        "(one prompt per line, [name] tags mark characters)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the stories' rounds, JSONL, CSV, "
                        "summary and plot")
    parser.add_argument("--limit", type=int, metavar="N", help="the first N stories only")
    parser.add_argument("--rounds", type=int, help="refinement rounds after round 0 (default 10)")
    parser.add_argument("--steps", type=int, help="denoising steps (default 50)")
    parser.add_argument("--size", type=int, help="square frame size (default 512 SD1.5, 64 tiny)")
    parser.add_argument("--deepcache", type=int, metavar="N", help="DeepCache interval (default 3; 0 = off)")
    parser.add_argument("--seed", type=int, help="one seed for every frame and round")
    parser.add_argument("--style", help="style preset (none, comic, film, realistic)")
    parser.add_argument("--family", help="sd15 | sdxl")
    parser.add_argument("--scorer", default="clip_g14", help="hub CLIP model of CLIP-T and aCCS (default clip_g14)")
    parser.add_argument("--preset", help="StoryConfig.from_preset(NAME) (e.g. reference)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other StoryConfig field")
    parser.add_argument("--overwrite", action="store_true", help="restart a story folder that holds a run with "
                        "other settings")
    parser.add_argument("--json", metavar="FILE", help="also write the summary here")


def round_table(per_round: dict[int, dict]) -> str:
    rows = [[r, f"{v['lambda']:.3f}", _num(v["clip_t"]), _num(v["accs"]), f"{v['fallback']}/{v['stories']}"]
            for r, v in per_round.items()]
    return R.format_table(["round", "lambda", "CLIP-T", "aCCS", "all-pairs aCCS"], rows)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def evaluate_stories(engine: Any, scorer: Any, stories: Sequence[Story], config: Any, out: Path,
                     log: R.ItemLog | None = None, on_frames: Any = None, overwrite: bool = False) -> dict[int, list]:
    """Run (or resume) every story in ``out/stories/<name>`` and score each of its rounds; returns
    {round: [per-story scores]}. ``on_frames(n)``: n frames of all stories and rounds are done."""
    by_round: dict[int, list[dict]] = {}
    done_before = 0
    for story in stories:
        frames = len(story.prompts)
        result = engine(list(story.prompts), out / "stories" / story.name, overwrite=overwrite,
                        progress=lambda p: on_frames and on_frames(done_before + p["round"] * p["frames"] + p["frame"]))
        done_before += frames * (config.rounds + 1)
        for r in result.rounds_done:
            scores = score_round(scorer, story, result.round_images(r))
            if log is not None:
                for i, prompt in enumerate(story.prompts):
                    log.write({"story": story.name, "round": r, "frame": i, "prompt": prompt,
                               "characters": list(story.characters[i]), "clip_t": R.clean(scores["clip_t"][i])})
                log.write({"story": story.name, "round": r, "accs": R.clean(scores["accs"]), "pairs": scores["pairs"],
                           "accs_basis": scores["basis"], "clip_t": R.clean(scores["clip_t_mean"])})
            by_round.setdefault(r, []).append(scores)
    return by_round


def round_summary(by_round: dict[int, list[dict]], config: Any) -> dict[int, dict]:
    """Per round: lambda, stories, mean CLIP-T and aCCS over stories, stories whose aCCS used all pairs."""
    out = {}
    for r, scores in sorted(by_round.items()):
        accs_values = [s["accs"] for s in scores if math.isfinite(s["accs"])]
        out[r] = {"lambda": config.lambda_of(r), "stories": len(scores),
                  "clip_t": R.clean(np.mean([s["clip_t_mean"] for s in scores])),
                  "accs": R.clean(np.mean(accs_values)) if accs_values else None,
                  "fallback": sum(s["basis"] == ALL_PAIRS for s in scores)}
    return out


def run(args: argparse.Namespace) -> int:
    from vision.engines.story import StoryEngine
    from vision.evaluation.clip_scoring import ClipScorer

    try:
        out = R.output_folder(args.out)
        stories = load_stories(args.stories, args.limit)
        config = engine_config(args)
        engine = StoryEngine(config)
        scorer = ClipScorer.from_hub(args.scorer, engine.hub)
    except R.USER_ERRORS as err:
        print(f"error: {R.message(err)}", file=sys.stderr)
        return 2
    tiny = bool(getattr(engine.hub, "tiny", False))
    total = sum(len(s.prompts) for s in stories) * (config.rounds + 1)
    bar = R.progress(total, "story", "frame")
    started = time.perf_counter()

    def on_frames(n: int) -> None:
        bar.n = min(total, n)
        bar.refresh()

    with R.ItemLog(out / R.ITEMS) as log:
        try:
            by_round = evaluate_stories(engine, scorer, stories, config, out, log, on_frames, args.overwrite)
        except R.USER_ERRORS as err:
            bar.close()
            print(f"error: {R.message(err)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            bar.close()
            print(f"interrupted: rerun the same command to continue (finished rounds are kept in {out / 'stories'})",
                  file=sys.stderr)
            return 130
    bar.close()
    write_report(out, args, stories, config, scorer.name, round_summary(by_round, config), tiny,
                 time.perf_counter() - started)
    print(f"results: {out}")
    return 0


def write_report(out: Path, args: argparse.Namespace, stories: Sequence[Story], config: Any, scorer: str,
                 per_round: dict[int, dict], tiny: bool, seconds: float) -> None:
    """The CSV, the printed table, ``summary.json`` and the per-round plot of a finished evaluation."""
    with open(out / CSV_NAME, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["round", "lambda", "clip_t", "accs", "stories", "stories_all_pairs_accs"])
        for r, v in per_round.items():
            writer.writerow([r, round(v["lambda"], 4), v["clip_t"], v["accs"], v["stories"], v["fallback"]])
    notice = R.tiny_notice(tiny)
    header = (f"Story-Adapter: {len(stories)} stories, {sum(len(s.prompts) for s in stories)} frames, "
              f"{config.rounds} rounds, {config.family}, {config.steps} steps, scorer {scorer}; {seconds:.1f} s")
    fallback = sum(v["fallback"] for v in per_round.values())
    note = (f"aCCS fell back to all frame pairs for {fallback} story-round(s) without a [name] tag seen twice"
            if fallback else None)
    text = "\n".join(filter(None, [notice, header, round_table(per_round), note]))
    print(text)
    summary = {"engine": "story", "stories_folder": str(args.stories), "stories": [s.name for s in stories],
               "tiny": tiny, "notice": notice, "config": R.config_record(config), "scorer": scorer,
               "clip_t": "cos(frame, its prompt), mean over frames, then over stories",
               "accs": "cos(first appearance, later appearance) per [name] character, mean over pairs; all frame "
                       "pairs when a story has no character tagged twice; then mean over stories",
               "machine": R.machine(), "rounds": {str(r): v for r, v in per_round.items()},
               "files": {"csv": CSV_NAME, "items": R.ITEMS, "plot": PLOT, "stories": "stories/"}}
    R.write_results(out, summary, text, args.json)
    from vision.evaluation.plots import round_curves

    rounds = list(per_round)
    round_curves(rounds, {"aCCS": [per_round[r]["accs"] for r in rounds],
                          "CLIP-T": [per_round[r]["clip_t"] for r in rounds]}, out / PLOT,
                 "Story-Adapter: consistency and text alignment per round", tiny=tiny)
