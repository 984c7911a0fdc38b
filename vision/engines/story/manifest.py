"""The run's ``manifest.json``: its arguments (and their hash, which identifies a run for resuming), the
rounds done with their files, and what a resumed run may trust of a folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from PIL import Image

from vision.engines.story.config import StoryError
from vision.engines.story.files import MANIFEST, MANIFEST_FORMAT, save_json

# settings that never change a frame: a run may be resumed with them changed (e.g. offload after running out
# of GPU memory)
NOT_HASHED = ("offload_image_encoder", "model_offload")


def arguments_hash(arguments: dict[str, Any]) -> str:
    """sha256 of the run's arguments (JSON, keys sorted), without the :data:`NOT_HASHED` settings."""
    hashed = dict(arguments)
    if isinstance(hashed.get("config"), dict):
        hashed["config"] = {k: v for k, v in hashed["config"].items() if k not in NOT_HASHED}
    return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()


def load_manifest(out: Path) -> dict | None:
    """The manifest in ``out`` (None when there is none); StoryError when it is unreadable or no story's."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise StoryError(f"{path} is not a readable story manifest ({err}); remove it or use another "
                         "output folder") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise StoryError(f"{path} is not a story manifest ({MANIFEST_FORMAT}); use another output folder")
    return data


def valid_rounds(manifest: dict, out: Path, frames: int, size: int) -> list[int]:
    """Rounds 0..k that the manifest marks done and whose frame files are all present and readable."""
    done = []
    for r in range(len(manifest.get("rounds_done", []))):
        entry = manifest.get("rounds", {}).get(str(r))
        if r not in manifest["rounds_done"] or not entry or len(entry.get("frames", [])) != frames:
            break
        try:
            ok = all(Image.open(out / name).size == (size, size) for name in entry["frames"])
        except OSError:
            ok = False
        if not ok:
            break
        done.append(r)
    return done


def remove_run_files(out: Path, manifest: dict) -> None:
    """Delete the image files another run's manifest lists (inside ``out`` only)."""
    names = list(manifest.get("final", [])) + list(manifest.get("character_files", []))
    if manifest.get("storyboard"):
        names.append(manifest["storyboard"])
    for entry in manifest.get("rounds", {}).values():
        names += list(entry.get("frames", [])) + [entry.get("storyboard", "")]
    for name in names:
        path = out / name
        if name and path.is_file() and out.resolve() in path.resolve().parents:
            path.unlink()


def start_manifest(out: Path, arguments: dict[str, Any], rounds: int, frames: int, size: int, overwrite: bool,
                   notice: str | None = None) -> dict:
    """The run's manifest in ``out``: the one there when its arguments match (finished rounds kept), else a
    fresh one (refused when ``out`` holds another run, unless ``overwrite``). Saved."""
    digest = arguments_hash(arguments)
    manifest = load_manifest(out)
    if manifest is not None and manifest.get("args_hash") != digest and not overwrite:
        raise StoryError(
            f"{out} holds a story run with different arguments (prompts, characters, settings or models); "
            "use another output folder, or overwrite=True / --overwrite to start afresh there")
    if manifest is None or manifest.get("args_hash") != digest:
        if manifest is not None:  # overwrite: drop the other run's images so none is mistaken for ours
            remove_run_files(out, manifest)
        manifest = {"format": MANIFEST_FORMAT, "args_hash": digest, "arguments": arguments,
                    "rounds_total": rounds, "rounds_done": [], "rounds": {}}
    manifest["arguments"] = arguments  # the settings outside the hash as this run has them
    done = valid_rounds(manifest, out, frames, size)
    manifest["rounds_done"] = done
    manifest["rounds"] = {str(r): manifest["rounds"][str(r)] for r in done}
    manifest.pop("final", None)
    manifest.pop("storyboard", None)
    if notice:
        manifest["notice"] = notice
    save_json(out / MANIFEST, manifest)
    return manifest
