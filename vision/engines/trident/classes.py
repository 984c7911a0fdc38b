"""Trident's class names: checking and normalising a class list, and per-class probabilities from the
per-name logits (a class's probability is the max over its names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vision.classnames import CLASS_SEPARATOR, SYNONYM_SEPARATOR, ClassList

MAX_CLASSES = 255  # label maps are written as 8-bit indexed PNGs


@dataclass(frozen=True)
class Classes:
    """Parsed class names: ``names[i]`` are class i's names, ``background`` its background index.

    ``queries`` lists every name in class order (a benchmark list may repeat one across classes);
    ``unique_queries`` the distinct ones, which are what CLIP encodes; ``query_index[q]`` is the index
    of query q in ``unique_queries``."""

    names: tuple[tuple[str, ...], ...]
    background: int | None = None
    display: tuple[str, ...] = ()

    @property
    def queries(self) -> tuple[str, ...]:
        return tuple(n for names in self.names for n in names)

    @property
    def unique_queries(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.queries))

    @property
    def query_index(self) -> list[int]:
        position = {q: i for i, q in enumerate(self.unique_queries)}
        return [position[q] for q in self.queries]


def parse_class_text(text: str) -> list[list[str]]:
    """The one class syntax (app, CLI, library): ``;`` separates classes, ``|`` a class's synonyms.
    ``"cat; dog|puppy; background"`` -> ``[["cat"], ["dog", "puppy"], ["background"]]``; empty parts
    and surrounding spaces are dropped."""
    return [[n.strip() for n in part.split(SYNONYM_SEPARATOR) if n.strip()]
            for part in text.split(CLASS_SEPARATOR) if part.strip()]


def parse_classes(classes: Any, background: int | None = None) -> Classes:
    """Check and normalise class names.

    ``classes``: a text in the class syntax (:func:`parse_class_text`: ``"cat|kitten; dog"``); a list
    with one entry per class, an entry being ``"name|synonym|..."`` or a list of names; a benchmark
    :class:`~vision.classnames.ClassList`; or a :class:`Classes`. Errors
    (:class:`ValueError`, with the reason): no classes, a single class, more than :data:`MAX_CLASSES`,
    an empty class, a name used twice (case-insensitive) in a user's list, a ";" inside one class's
    entry, a background index out of range. A benchmark list runs as it is: a name it repeats across
    classes (COCO-Object's "bed") is kept and ties with its first class, which wins. The background
    class is ``background``, else the benchmark's, else the class one of whose names is "background".
    """
    if isinstance(classes, Classes) and background is None:
        return classes
    display: tuple[str, ...] = ()
    benchmark = isinstance(classes, (ClassList, Classes))  # a Classes was checked when it was parsed
    if isinstance(classes, Classes):
        display, classes = classes.display, classes.names
    if benchmark:
        display, background = classes.display, classes.background if background is None else background
        classes = classes.names
    if isinstance(classes, str):
        classes = parse_class_text(classes)
    parsed: list[tuple[str, ...]] = []
    for i, entry in enumerate(classes or ()):
        if isinstance(entry, str) and CLASS_SEPARATOR in entry:
            raise ValueError(f"class {i} ({entry!r}) contains {CLASS_SEPARATOR!r}, which separates classes: give one "
                             f"entry per class and separate a class's synonyms with {SYNONYM_SEPARATOR!r}")
        parts = entry.split(SYNONYM_SEPARATOR) if isinstance(entry, str) else list(entry)
        names = tuple(" ".join(str(p).split()) for p in parts if str(p).strip())
        if not names:
            raise ValueError(f"class {i} has no name (entry {entry!r})")
        parsed.append(names)
    if not parsed:
        raise ValueError("no class names given: pass at least two classes, e.g. 'cat; dog; background'")
    if len(parsed) < 2:
        raise ValueError(f"at least two classes are needed to segment, got one: {SYNONYM_SEPARATOR.join(parsed[0])!r} "
                         "(add e.g. 'background', or check the separator between classes)")
    if len(parsed) > MAX_CLASSES:
        raise ValueError(f"{len(parsed)} classes given; at most {MAX_CLASSES} are supported "
                         "(label maps are 8-bit indexed PNGs)")
    seen: dict[str, int] = {}
    for i, names in enumerate(parsed):
        for name in names:
            key = name.casefold()
            if key in seen and not benchmark:
                where = f"classes {seen[key]} and {i}" if seen[key] != i else f"class {i}"
                raise ValueError(f"duplicate class name {name!r} ({where}); each name may appear once")
            seen.setdefault(key, i)
    if background is None:
        background = seen.get("background")
    elif not 0 <= background < len(parsed):
        raise ValueError(f"background index {background} is not a class index (0..{len(parsed) - 1})")
    if len(display) != len(parsed):
        display = tuple(names[0] for names in parsed)
    return Classes(tuple(parsed), background, tuple(display))


def class_probabilities(logits: torch.Tensor, classes: Classes, logit_scale: float) -> torch.Tensor:
    """Per-class probabilities [K, H, W] from the logits [U, H, W] of ``classes.unique_queries``.

    The softmax runs over every query, a repeated name counted each time (as the reference's query list
    does), and a class takes the max over its names. A repeated name's copies are exact, so the classes
    sharing it tie where it is the best name and ``argmax`` gives the first of them.
    """
    query_probs = (logit_scale * logits[classes.query_index]).softmax(dim=0)
    probs, start = [], 0
    for names in classes.names:
        probs.append(query_probs[start:start + len(names)].amax(dim=0))
        start += len(names)
    return torch.stack(probs)
