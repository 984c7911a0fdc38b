"""ViStoryBench's data layout for ``eval story``: its stories and character pictures read from a folder.

The layout (the benchmark's dataset as downloaded, e.g. ``data/dataset/ViStory/``)::

    <folder>/<story id>/story.json
    <folder>/<story id>/image/<character>/<pictures: 00.jpg, 01.png, ...>

``story.json``: ``"Characters"``: {key: {"name_en", "name_ch", "prompt_en", ...}} and ``"Shots"``: [{"index",
"Setting Description", "Static Shot Description", "Shot Perspective Design", "Characters Appearing", ...}],
each text field ``{"en": ..., "ch": ...}`` (keys matched case-insensitively). A shot becomes one frame:
its static shot description, then its setting description (joined with ". "), with its on-stage characters
as the frame's explicit ``[Name1, Name2]`` list (``[]`` when none). A character is named by its ``name_en``
(else its key); its pictures are the image files of ``image/<key>/`` (else ``image/<name_en>/``), sorted,
at most ``MAX_CHARACTER_IMAGES``. Characters without pictures are left out (said in the story's notes), and
of a cast over ``MAX_STORY_CHARACTERS`` the ones on stage most often are kept (said too).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from vision.evaluation import records as R
from vision.limits import MAX_CHARACTER_IMAGES, MAX_PROMPT_CHARS, MAX_STORY_CHARACTERS

PICTURES = (".png", ".jpg", ".jpeg", ".webp")


def is_vistorybench(folder: Path) -> bool:
    """``folder`` holds story folders with a ``story.json`` each."""
    return folder.is_dir() and any((d / "story.json").is_file() for d in folder.iterdir() if d.is_dir())


def _field(entry: dict, name: str, language: str) -> Any:
    """A shot's field in ``language`` (the other language when missing); keys case-insensitive."""
    value = next((v for k, v in entry.items() if k.lower() == name.lower()), None)
    if isinstance(value, dict):
        other = "ch" if language == "en" else "en"
        return value.get(language) or value.get(other) or ""
    return value or ""


def _clean(name: str) -> str:
    return " ".join("".join(" " if c in "[],=" else c for c in str(name)).split())


def _characters(folder: Path, data: dict, notes: list[str]) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """(name -> pictures, every spelling -> name) of the story's characters that have pictures."""
    pictures, spellings = {}, {}
    for key, info in (data.get("Characters") or {}).items():
        info = info if isinstance(info, dict) else {}
        name = _clean(info.get("name_en") or key)
        found = []
        for sub in (key, info.get("name_en")):
            if sub and (folder / "image" / sub).is_dir():
                found = sorted(p for p in (folder / "image" / sub).iterdir() if p.suffix.lower() in PICTURES)
                break
        if not found:
            notes.append(f"character {name!r} has no pictures under {folder / 'image'}: left out")
            continue
        pictures[name] = found[:MAX_CHARACTER_IMAGES]
        for spelling in (key, info.get("name_en"), info.get("name_ch"), name):
            if spelling:
                spellings[_clean(spelling).casefold()] = name
    return pictures, spellings


def load_vistorybench_story(folder: Path, language: str = "en") -> tuple[list[str], dict[str, list[Path]], list[str]]:
    """(frame lines with their ``[Name, ...]`` lists, character pictures, notes) of one ViStoryBench story."""
    path = folder / "story.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise R.EvalError(f"{path}: not a readable ViStoryBench story.json ({err})") from None
    shots = data.get("Shots") or data.get("shots")
    if not isinstance(shots, list) or not shots:
        raise R.EvalError(f"{path}: no \"Shots\" list")
    notes: list[str] = []
    pictures, spellings = _characters(folder, data, notes)
    casts = []
    for shot in shots:
        on_stage = _field(shot, "Characters Appearing", language)
        on_stage = on_stage if isinstance(on_stage, list) else []
        casts.append([spellings[_clean(n).casefold()] for n in on_stage if _clean(n).casefold() in spellings])
    if len(pictures) > MAX_STORY_CHARACTERS:
        counts = Counter(n for cast in casts for n in cast)
        kept = sorted(pictures, key=lambda n: -counts[n])[:MAX_STORY_CHARACTERS]
        notes.append(f"{len(pictures)} characters with pictures; kept the {MAX_STORY_CHARACTERS} on stage most often "
                     f"({', '.join(kept)})")
        pictures = {n: pictures[n] for n in kept}
        casts = [[n for n in cast if n in pictures] for cast in casts]
    lines = []
    for shot, cast in zip(shots, casts, strict=True):
        text = ". ".join(t.strip().rstrip(".") for t in (_field(shot, "Static Shot Description", language),
                                                          _field(shot, "Setting Description", language))
                         if isinstance(t, str) and t.strip())
        text = text[: MAX_PROMPT_CHARS - 200] or "a scene"
        lines.append(f"[{', '.join(dict.fromkeys(cast))}] {text}" if pictures else text)
    return lines, pictures, notes
