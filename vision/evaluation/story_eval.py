"""``python -m vision eval story``: Story-Adapter's round-by-round curve (CLIP-T, aCCS and character
identity per round) over a folder of stories.

Stories: ``--stories DIR`` holds either

* one text file per story (``*.txt``), one frame prompt per non-blank line. Mark a character with a
  ``[name]`` tag where it appears: ``[Red] walks into the [wolf]'s den``. The tag's text stays in the
  prompt the engine draws (``Red walks into the wolf's den``); names match case-insensitively. These
  characters have no pictures: the engine draws them from text; or
* ViStoryBench's layout (:mod:`vision.evaluation.vistorybench`: ``<id>/story.json`` and
  ``<id>/image/<character>/``): each story's characters are declared to the engine with their pictures,
  each frame uses its shot's on-stage characters, and every round also gets the character identity
  scores of :mod:`vision.evaluation.identity` (per character: its frames' best crop vs its pictures,
  with ``--identity`` = the hub's DINOv2 by default, or a hub CLIP).

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    """A story: the prompts the engine draws and, per frame, the characters in it (tagged, or on stage);
    ``lines`` are what the engine is given (with ``[Name, ...]`` lists), ``references`` the characters'
    pictures (ViStoryBench), ``notes`` what the loader left out."""

    name: str
    path: Path
    prompts: tuple[str, ...]
    characters: tuple[tuple[str, ...], ...]
    lines: tuple[str, ...] = ()
    references: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def engine_lines(self) -> list[str]:
        return list(self.lines or self.prompts)

    def engine_characters(self) -> list:
        from vision.engines.story import Character

        return [Character(name, tuple(str(p) for p in paths)) for name, paths in self.references.items()]

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


def vistorybench_story(folder: Path, language: str = "en") -> Story:
    """A ViStoryBench story folder as a :class:`Story` (frames and their on-stage characters, pictures)."""
    from vision.engines.story import StoryError, cast_frames
    from vision.evaluation.vistorybench import load_vistorybench_story

    lines, pictures, notes = load_vistorybench_story(folder, language)
    try:
        prompts, casts, _ = cast_frames(lines, list(pictures))
    except StoryError as err:
        raise R.EvalError(f"{folder / 'story.json'}: {err}") from None
    return Story(folder.name, folder / "story.json", tuple(prompts), tuple(casts), tuple(lines),
                 {n: tuple(p) for n, p in pictures.items()}, tuple(notes))


def load_stories(folder: str | Path, limit: int | None = None, language: str = "en") -> list[Story]:
    """The stories of ``folder``: ViStoryBench's layout when it has one, else its ``*.txt`` files."""
    from vision.evaluation.vistorybench import is_vistorybench

    folder = Path(folder)
    if not folder.is_dir():
        raise R.EvalError(f"{folder} is not a folder: --stories must hold one .txt file per story, or "
                          "ViStoryBench's story folders (<id>/story.json)")
    if is_vistorybench(folder):
        dirs = sorted(d for d in folder.iterdir() if (d / "story.json").is_file())
        return [vistorybench_story(d, language) for d in (dirs if limit is None else dirs[: max(0, limit)])]
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
    first, later = zip(*pairs, strict=True)
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
    from vision.evaluation.identity import DEFAULT_IDENTITY

    parser.add_argument("--stories", required=True, metavar="DIR", help="folder of stories: one .txt per story "
                        "(one prompt per line, [name] tags mark characters), or ViStoryBench's layout "
                        "(<id>/story.json, <id>/image/<character>/)")
    parser.add_argument("--language", choices=("en", "ch"), default="en",
                        help="ViStoryBench: the language of the shots' texts (default en)")
    parser.add_argument("--identity", default=DEFAULT_IDENTITY, help="hub model of the character identity scores: "
                        "dinov2_b14 (default) or a CLIP (clip_h14, clip_g14, ...)")
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
    rows = [[r, f"{v['lambda']:.3f}", _num(v["clip_t"]), _num(v["accs"]), f"{v['fallback']}/{v['stories']}",
             _num(v.get("identity")), v.get("characters", 0)] for r, v in per_round.items()]
    return R.format_table(["round", "lambda", "CLIP-T", "aCCS", "all-pairs aCCS", "char identity", "characters"],
                          rows)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _log_round(log: R.ItemLog | None, story: Story, r: int, scores: dict) -> None:
    """One line per frame (CLIP-T, characters), per character (identity, its frames' crops) and per story."""
    if log is None:
        return
    for i, prompt in enumerate(story.prompts):
        log.write({"story": story.name, "round": r, "frame": i, "prompt": prompt,
                   "characters": list(story.characters[i]), "clip_t": R.clean(scores["clip_t"][i])})
    for name, entry in scores.get("identity", {}).items():
        log.write({"story": story.name, "round": r, "character": name, "identity": R.clean(entry["mean"]),
                   "frames": [{**f, "identity": R.clean(f["identity"])} for f in entry["frames"]]})
    log.write({"story": story.name, "round": r, "accs": R.clean(scores["accs"]), "pairs": scores["pairs"],
               "accs_basis": scores["basis"], "clip_t": R.clean(scores["clip_t_mean"])})


def evaluate_stories(engine: Any, scorer: Any, stories: Sequence[Story], config: Any, out: Path,
                     log: R.ItemLog | None = None, on_frames: Any = None, overwrite: bool = False,
                     identity: Any = None) -> dict[int, list]:
    """Run (or resume) every story in ``out/stories/<name>`` with its characters and score each of its
    rounds (identity too, with ``identity``, for stories with character pictures); returns {round:
    [per-story scores]}. ``on_frames(n)``: n frames of all stories and rounds are done."""
    from vision.evaluation.identity import character_consistency
    from vision.imaging import load_image

    by_round: dict[int, list[dict]] = {}
    done_before = 0
    for story in stories:
        result = engine(story.engine_lines(), out / "stories" / story.name, overwrite=overwrite,
                        characters=story.engine_characters(),
                        progress=lambda p, before=done_before: on_frames and on_frames(
                            before + p["round"] * p["frames"] + p["frame"]))
        done_before += len(story.prompts) * (config.rounds + 1)
        references = ({name: identity.reference([load_image(p) for p in paths])
                       for name, paths in story.references.items()} if identity is not None else {})
        for r in result.rounds_done:
            frames = result.round_images(r)
            scores = score_round(scorer, story, frames)
            if references:
                scores["identity"] = character_consistency(identity, frames, story.characters, references)
            _log_round(log, story, r, scores)
            by_round.setdefault(r, []).append(scores)
    return by_round


def round_summary(by_round: dict[int, list[dict]], config: Any) -> dict[int, dict]:
    """Per round: lambda, stories, mean CLIP-T and aCCS over stories, stories whose aCCS used all pairs, and
    the mean character identity over every character of every story (None without character pictures)."""
    out = {}
    for r, scores in sorted(by_round.items()):
        accs_values = [s["accs"] for s in scores if math.isfinite(s["accs"])]
        identities = [c["mean"] for s in scores for c in s.get("identity", {}).values()]
        out[r] = {"lambda": config.lambda_of(r), "stories": len(scores),
                  "clip_t": R.clean(np.mean([s["clip_t_mean"] for s in scores])),
                  "accs": R.clean(np.mean(accs_values)) if accs_values else None,
                  "fallback": sum(s["basis"] == ALL_PAIRS for s in scores),
                  "identity": R.clean(np.mean(identities)) if identities else None, "characters": len(identities)}
    return out


def run(args: argparse.Namespace) -> int:
    from vision.engines.story import StoryEngine
    from vision.evaluation.clip_scoring import ClipScorer
    from vision.evaluation.identity import IdentityScorer

    try:
        out = R.output_folder(args.out)
        stories = load_stories(args.stories, args.limit, args.language)
        config = engine_config(args)
        engine = StoryEngine(config)
        scorer = ClipScorer.from_hub(args.scorer, engine.hub)
        identity = IdentityScorer(args.identity, engine.hub) if any(s.references for s in stories) else None
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
            by_round = evaluate_stories(engine, scorer, stories, config, out, log, on_frames, args.overwrite,
                                        identity)
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
                 time.perf_counter() - started, identity.name if identity is not None else None)
    print(f"results: {out}")
    return 0


def write_report(out: Path, args: argparse.Namespace, stories: Sequence[Story], config: Any, scorer: str,
                 per_round: dict[int, dict], tiny: bool, seconds: float, identity: str | None = None) -> None:
    """The CSV, the printed table, ``summary.json`` and the per-round plot of a finished evaluation."""
    with open(out / CSV_NAME, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["round", "lambda", "clip_t", "accs", "stories", "stories_all_pairs_accs",
                         "character_identity", "characters"])
        for r, v in per_round.items():
            writer.writerow([r, round(v["lambda"], 4), v["clip_t"], v["accs"], v["stories"], v["fallback"],
                             v["identity"], v["characters"]])
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
               "character_identity": "per character with pictures: mean over its frames of the best crop's cosine "
                                     f"to its pictures' mean embedding ({identity}); then mean over all characters",
               "notes": {s.name: list(s.notes) for s in stories if s.notes},
               "machine": R.machine(), "rounds": {str(r): v for r, v in per_round.items()},
               "files": {"csv": CSV_NAME, "items": R.ITEMS, "plot": PLOT, "stories": "stories/"}}
    R.write_results(out, summary, text, args.json)
    from vision.evaluation.plots import round_curves

    rounds = list(per_round)
    curves = {"aCCS": [per_round[r]["accs"] for r in rounds], "CLIP-T": [per_round[r]["clip_t"] for r in rounds]}
    if any(per_round[r]["identity"] is not None for r in rounds):
        curves["character identity"] = [per_round[r]["identity"] for r in rounds]
    round_curves(rounds, curves, out / PLOT,
                 "Story-Adapter: consistency and text alignment per round", tiny=tiny)
