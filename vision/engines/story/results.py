"""What a story run reports while it runs (:func:`story_progress`) and what it returns (:class:`StoryResult`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from vision.engines.contract import Progress, engine_record
from vision.engines.story.config import FAMILIES, StoryConfig, StoryError
from vision.engines.story.files import MANIFEST, frame_name, read_png


def story_progress(round: int, rounds: int, frame: int, frames: int, message: str, step: int = 0,
                   steps: int = 0) -> Progress:
    """One progress event of a story run: at the start of a round, after each denoising step of a frame,
    after each frame, and at the end.

    ``frame`` = frames done in ``round``; ``step`` of ``steps`` = denoising steps done of the frame in
    progress (frame index ``frame``), both 0 in frame and round events; they are the event's
    ``position`` (with ``rounds`` and ``frames``). The fraction is the share of all (rounds + 1) x frames
    generations done, counting resumed rounds as done and the frame in progress by its steps.
    """
    done = round * frames + frame + (step / steps if steps else 0.0)
    fraction = min(1.0, done / ((rounds + 1) * frames))
    return Progress(fraction, message, MappingProxyType({"round": round, "rounds": rounds, "frame": frame,
                                                         "frames": frames, "step": step, "steps": steps}))


@dataclass
class StoryResult:
    """What a story run made. Images are RGB uint8 [H, W, 3]; only the final frames and storyboard
    are held in memory, every round's frames are files under ``output_dir``."""

    prompts: list[str]
    config: StoryConfig
    output_dir: Path
    size: int
    rounds_done: list[int]
    timings: dict[int, dict[str, float]]
    files: dict[str, Any]
    final: list[np.ndarray] | None = None
    storyboard: np.ndarray | None = None
    resumed_from: int | None = None  # the last complete round found in the folder, if any
    tiny: bool = False
    stopped_early: bool = False
    characters: list[dict] = field(default_factory=list)  # name, image sources, sha256 prefixes
    frame_characters: list[list[str]] = field(default_factory=list)  # per frame, the characters it used
    warnings: list[str] = field(default_factory=list)
    models: dict[str, Any] = field(default_factory=dict)  # the user's checkpoint and the LoRAs applied
    memory: dict[str, bool] = field(default_factory=dict)  # the memory options that applied

    @classmethod
    def from_manifest(cls, prompts: list[str], config: StoryConfig, out: Path, size: int, manifest: dict,
                      resumed_from: int | None, tiny: bool, stopped: bool) -> StoryResult:
        """The result of a run whose state is ``manifest`` (rounds done, files, characters, models)."""
        files: dict[str, Any] = {"manifest": MANIFEST, "rounds": manifest["rounds"]}
        if manifest.get("character_files"):
            files["characters"] = manifest["character_files"]
        casts = manifest["arguments"].get("frame_characters") or [[] for _ in prompts]
        return cls(prompts, config, out, size, list(manifest["rounds_done"]),
                   {int(r): e["timings"] for r, e in manifest["rounds"].items()}, files, resumed_from=resumed_from,
                   tiny=tiny, stopped_early=stopped, characters=list(manifest.get("characters", [])),
                   frame_characters=[list(c) for c in casts], warnings=list(manifest.get("warnings", [])),
                   models=dict(manifest.get("models") or {}), memory=dict(manifest.get("memory") or {}))

    @property
    def complete(self) -> bool:
        return bool(self.rounds_done) and self.rounds_done[-1] == self.config.rounds

    def round_images(self, r: int) -> list[np.ndarray]:
        """The frames of round ``r`` (read from the output folder)."""
        if r not in self.rounds_done:
            raise StoryError(f"round {r} was not generated (rounds done: {self.rounds_done})")
        return [read_png(self.output_dir / name) for name in self.files["rounds"][str(r)]["frames"]]

    def to_record(self) -> dict[str, Any]:
        """A JSON-able summary: :func:`~vision.engines.contract.engine_record`'s fields, the characters with
        each frame's (``frame_characters``), warnings, the user's checkpoint and LoRAs, the memory options,
        settings, prompts, rounds, lambdas, timings (seconds per round under ``round_timings``), files
        (relative paths)."""
        config = self.config
        family = FAMILIES[config.family]
        checkpoint = (self.models.get("checkpoint") or {}).get("source") or config.base_model()
        models = {"checkpoint": checkpoint, "ip_adapter": family.ip_adapter, "image_encoder": family.image_encoder}
        if config.lcm:
            models["lcm_lora"] = config.lcm_lora()
        record = engine_record(config, tiny=self.tiny, models=models,
                               timings={"total": sum(t["seconds"] for t in self.timings.values())})
        record.update({
            "characters": self.characters,
            "frame_characters": self.frame_characters,
            "character_scale": config.character_scale if self.characters else None,
            "warnings": self.warnings,
            "user_checkpoint": self.models.get("checkpoint"),
            "loras": self.models.get("loras", []),
            "memory": self.memory,
            "prompts": self.prompts,
            "styled_prompts": [config.styled(p) for p in self.prompts],
            "config": asdict(config),
            "guidance": config.guidance_scale(),
            "checkpoint": checkpoint,
            "size": self.size,
            "frames": len(self.prompts),
            "rounds_done": self.rounds_done,
            "complete": self.complete,
            "lambdas": [config.lambda_of(r) for r in range(config.rounds + 1)],
            "round_timings": {str(r): t for r, t in self.timings.items()},
            "resumed_from": self.resumed_from,
            "output_dir": str(self.output_dir),
            "files": self.files,
        })
        return record

    def to_files(self) -> dict[str, Any]:
        """``{suffix: image | dict}`` in the engine-result contract of :mod:`vision.batch`: the
        storyboard, the final frames and the record (empty images for a run stopped early)."""
        files: dict[str, Any] = {}
        if self.storyboard is not None:
            files["storyboard.png"] = self.storyboard
        for i, frame in enumerate(self.final or []):
            files[frame_name(i, len(self.prompts))] = frame
        files["record.json"] = self.to_record()
        return files

    def paths(self) -> list[Path]:
        """The files a user downloads, as written: storyboard, final frames, manifest (absolute)."""
        out = []
        if "storyboard" in self.files:
            out.append(self.output_dir / self.files["storyboard"])
        out += [self.output_dir / name for name in self.files.get("final", [])]
        out.append(self.output_dir / MANIFEST)
        return out
