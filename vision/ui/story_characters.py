"""The Story tab's Characters: an upload box for the reference pictures and a table naming the characters.

Each table row is a character: its name and the file names of its pictures among the uploads (comma-separated).
Uploading pictures adds a row per new file, named after the file (``ann.png`` -> ``ann``): rename, or put two
pictures of one character in one row. Frames use the characters they name (whole words, any case) or those of a
leading ``[Name1, Name2]``; the gallery's captions and the status say which characters each frame used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vision.engines.story.characters import Character
from vision.ui import form

HEADERS = ["name", "pictures (uploaded file names, comma-separated)"]
HELP = ("Upload a picture (or a few) of each character: every new picture adds a row named after its file. Edit "
        "the names, or list two pictures of one character in one row. A frame uses the characters it names (whole "
        "words, any case) or those of a leading `[Name1, Name2]`.")


def _rows(table: Any) -> list[list[str]]:
    """The table's rows as lists of stripped strings (a DataFrame, a list of lists or None)."""
    if table is None:
        return []
    if hasattr(table, "values"):  # a pandas DataFrame
        table = table.values.tolist()
    return [[str(cell if cell is not None else "").strip() for cell in row] for row in table]


def _uploads(files: Any) -> dict[str, str]:
    """Uploaded file name -> its path (Gradio keeps the uploaded name as the file's name)."""
    paths = [form.file_path(f) for f in (files or [])]
    return {Path(p).name: p for p in paths if p}


def fill_table(files: Any, table: Any) -> list[list[str]]:
    """The table with a row for every uploaded picture no row mentions yet (named after the file)."""
    rows = [row for row in _rows(table) if any(row)]
    mentioned = {name.strip() for row in rows for name in (row[1] if len(row) > 1 else "").split(",")}
    for name in _uploads(files):
        if name not in mentioned:
            rows.append([Path(name).stem, name])
    return rows


def characters_from(files: Any, table: Any) -> list[Character]:
    """The declared characters (name, picture paths); a ValueError names the row and the file that is not
    uploaded, not a picture, or missing."""
    from vision.imaging import ImageError
    from vision.ui.uploads import check_image_file

    uploads = _uploads(files)
    out = []
    for number, row in enumerate(_rows(table), start=1):
        name, pictures = (row + ["", ""])[:2]
        listed = [p.strip() for p in pictures.split(",") if p.strip()]
        if not name and not listed:
            continue
        where = f"Characters table, row {number}" + (f" ({name})" if name else "")
        if not name:
            raise ValueError(f"{where}: give the character a name")
        if not listed:
            raise ValueError(f"{where}: list its pictures (file names of the uploads)")
        missing = [p for p in listed if p not in uploads]
        if missing:
            raise ValueError(f"{where}: {', '.join(missing)} not among the uploaded pictures "
                             f"({', '.join(uploads) or 'none uploaded'})")
        for picture in listed:
            try:
                check_image_file(uploads[picture], picture, what=f"character {name!r}")
            except ImageError as err:
                raise ValueError(str(err)) from None
        out.append(Character(name, tuple(uploads[p] for p in listed)))
    return out


def cast_text(prompts: list[str], frame_characters: list[list[str]]) -> str:
    """Which characters each frame used, for the status: ``Characters per frame: 1 Ann; 2 Bob; 3 Ann, Bob``."""
    if not any(frame_characters):
        return ""
    parts = [f"{i + 1} {', '.join(c) or '-'}" for i, c in enumerate(frame_characters[: len(prompts)])]
    return "Characters per frame: " + "; ".join(parts) + "."


def caption(i: int, prompt: str, characters: list[str]) -> str:
    """A gallery caption: ``2. [Ann, Bob] the prompt`` (no brackets for a frame without characters)."""
    return f"{i + 1}. " + (f"[{', '.join(characters)}] " if characters else "") + prompt
