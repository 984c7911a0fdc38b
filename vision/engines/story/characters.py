"""Story characters: a name and reference images each, and which frames name them.

A character is declared with a name and 1..``MAX_CHARACTER_IMAGES`` reference images
(``--character NAME=IMG[,IMG]``, the Story tab's Characters table, or :class:`Character` in Python); a story
declares at most ``MAX_STORY_CHARACTERS`` (:mod:`vision.limits`). A frame's characters are

* its line's explicit ``[Name1, Name2]`` prefix, when it has one (``[]``: none); the prefix is removed from
  the prompt the model reads, and every name in it must be declared; else
* every declared name found in the frame's text, case-insensitively and as a whole word ("Ann" matches
  "ann's hat" but neither "Annabel" nor "Joanne"), in the order the characters were declared.

A declared character that no frame names is a warning (its images are never used), not an error.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vision.engines.story.config import StoryError
from vision.limits import MAX_CHARACTER_IMAGES, MAX_STORY_CHARACTERS

PREFIX = re.compile(r"^\s*\[([^\[\]]*)\]\s*")  # a line's leading "[Name1, Name2]"
FORBIDDEN = set("[],=")  # a name is written inside "[...]" lists and before "=" on the command line


@dataclass(frozen=True)
class Character:
    """A declared character: ``name`` and its reference ``images`` (file paths, PIL images or RGB arrays)."""

    name: str
    images: tuple[Any, ...]

    @classmethod
    def parse(cls, text: str) -> Character:
        """``NAME=IMG[,IMG]`` (the ``--character`` syntax) -> a Character of those image paths."""
        name, sep, files = str(text).partition("=")
        paths = tuple(f.strip() for f in files.split(",") if f.strip())
        if not sep or not name.strip() or not paths:
            raise StoryError(f"--character {text!r}: write NAME=IMAGE[,IMAGE...] (e.g. Ann=ann.png,ann_side.png)")
        return cls(name.strip(), paths)


@dataclass(frozen=True)
class LoadedCharacter:
    """A character with its images decoded: RGB uint8 arrays [H, W, 3], their sha256 digests (of the pixels:
    what decides the frames) and where each came from (a path, or ``<name> image k``)."""

    name: str
    images: tuple[np.ndarray, ...] = field(repr=False)
    digests: tuple[str, ...]
    sources: tuple[str, ...]

    def record(self) -> dict:
        return {"name": self.name, "images": list(self.sources), "sha256": [d[:16] for d in self.digests]}


def pixel_digest(image: np.ndarray) -> str:
    """sha256 of an RGB uint8 image's shape and pixels (a file re-saved in another format keeps it)."""
    return hashlib.sha256(repr(image.shape).encode() + np.ascontiguousarray(image).tobytes()).hexdigest()


def _image_source(image: Any, name: str, k: int) -> str:
    return str(image) if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__") else f"{name} image {k + 1}"


def load_character(character: Character) -> LoadedCharacter:
    """Decode a character's images with the project's one image loader; StoryError names the character and
    the file (no image, damaged, too large) or the count that is out of range."""
    from vision.imaging import ImageError, load_image

    name = str(character.name).strip()
    bad = sorted(FORBIDDEN & set(name))
    if not name or bad:
        raise StoryError(f"character name {character.name!r}: give a non-empty name without "
                         f"{' '.join(repr(c) for c in sorted(FORBIDDEN))}")
    images = list(character.images) if isinstance(character.images, (list, tuple)) else [character.images]
    if not 1 <= len(images) <= MAX_CHARACTER_IMAGES:
        raise StoryError(f"character {name!r} has {len(images)} reference images; give 1 to {MAX_CHARACTER_IMAGES} "
                         "(their embeddings are averaged into one identity)")
    arrays, sources = [], []
    for k, image in enumerate(images):
        source = _image_source(image, name, k)
        try:
            arrays.append(load_image(image))
        except ImageError as err:
            raise StoryError(f"character {name!r}: reference image {err}") from None
        sources.append(source)
    return LoadedCharacter(name, tuple(arrays), tuple(pixel_digest(a) for a in arrays), tuple(sources))


def load_characters(characters: Sequence[Character | LoadedCharacter | str] | None) -> list[LoadedCharacter]:
    """Every declared character, decoded (``NAME=IMG[,IMG]`` strings are parsed; loaded ones kept); names unique
    case-insensitively; at most ``MAX_STORY_CHARACTERS``."""
    declared = [c if isinstance(c, (Character, LoadedCharacter)) else Character.parse(c) for c in characters or ()]
    if len(declared) > MAX_STORY_CHARACTERS:
        raise StoryError(f"{len(declared)} characters declared; a story takes at most {MAX_STORY_CHARACTERS} "
                         "(a frame's characters share one reference attention, so more blend into each other)")
    loaded = [c if isinstance(c, LoadedCharacter) else load_character(c) for c in declared]
    seen: dict[str, str] = {}
    for c in loaded:
        if c.name.casefold() in seen:
            raise StoryError(f"character {c.name!r} is declared twice (names are matched case-insensitively: "
                             f"{seen[c.name.casefold()]!r})")
        seen[c.name.casefold()] = c.name
    return loaded


def _named_in(text: str, name: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, flags=re.IGNORECASE) is not None


def cast_frames(prompts: Sequence[str], names: Sequence[str]) -> tuple[list[str], list[tuple[str, ...]], list[str]]:
    """(prompts as the model reads them, each frame's characters, warnings) for a story's lines and the
    declared character ``names`` (see the module docstring). A prefix naming an undeclared character is a
    StoryError naming the line. Without declared characters, lines starting with ``[`` are left as they are
    (so that every story of before characters reads the same)."""
    if not names:
        return list(prompts), [() for _ in prompts], []
    canonical = {n.casefold(): n for n in names}
    texts, casts = [], []
    for number, line in enumerate(prompts, start=1):
        prefix = PREFIX.match(line)
        if prefix is None:
            texts.append(line)
            casts.append(tuple(n for n in names if _named_in(line, n)))
            continue
        listed = [n.strip() for n in prefix.group(1).split(",") if n.strip()]
        unknown = [n for n in listed if n.casefold() not in canonical]
        if unknown:
            raise StoryError(f"line {number}: {', '.join(repr(n) for n in unknown)} "
                             f"{'is' if len(unknown) == 1 else 'are'} not declared; characters: {', '.join(names)}")
        text = line[prefix.end():].strip()
        if not text:
            raise StoryError(f"line {number}: nothing after the character list {prefix.group(0).strip()}")
        texts.append(text)
        casts.append(tuple(dict.fromkeys(canonical[n.casefold()] for n in listed)))
    used = {n for cast in casts for n in cast}
    warnings = [f"character {n!r} is named in no frame: its images are not used (name it in a line, or start a "
                f"line with [{n}])" for n in names if n not in used]
    return texts, casts, warnings
