"""The user's own models for SD1.5 / SDXL pipelines: checkpoints and LoRAs (a small public API).

::

    from vision.engines.generate.models import Lora, loras_applied

    lora = Lora.parse("styles/ink.safetensors:0.8")       # PATH[:SCALE]
    with loras_applied(pipe, [lora]) as applied:           # diffusers' own LoRA loading, adapter per file
        image = pipe("a fox").images[0]                    # ... unloaded on exit, the UNet bit-identical
"""

from __future__ import annotations

from dataclasses import dataclass

LORA_SCALE_RANGE = (-2.0, 2.0)  # beyond this a LoRA's weights dominate the model's (and slider LoRAs stay in it)


class ModelFileError(ValueError):
    """A user's model file or repo that cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class Lora:
    """One LoRA: a ``.safetensors`` file (or a Hub repo id) and its scale (1.0: as trained)."""

    path: str
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "Lora":
        """``PATH[:SCALE]``; a Windows drive colon or a path with colons but no number after the last one
        is all path."""
        text = str(text).strip()
        if not text:
            raise ValueError("an empty LoRA path")
        head, sep, tail = text.rpartition(":")
        if sep and head:
            try:
                return cls(head, float(tail))
            except ValueError:
                pass
        return cls(text)

    def __str__(self) -> str:
        return f"{self.path}:{self.scale:g}"
