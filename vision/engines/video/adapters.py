"""The two image engines the video engine calls, each behind one small function, so a change of their
names or call shapes is a one-line change here:

* the image-prompt engine (:mod:`vision.engines.ipseg`: methods ``ipseg`` / ``gfsam``), which finds the
  exemplar's concept in one frame;
* the Segment engine (:mod:`vision.engines.segment`), which turns a click or a box on a frame into a mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def image_engine(config: Any, hub: Any) -> Any:
    """The image-prompt engine for ``config`` (an ``IPSegConfig``) on ``hub``."""
    from vision.engines.ipseg import IPSegEngine

    return IPSegEngine(config=config, hub=hub)


def segment_image(engine: Any, concepts: Any, image: np.ndarray, name: str = "") -> Any:
    """The image-prompt engine's result (an ``IPSegResult``: ``.masks``, ``.mask``, ``.presence``,
    ``.concepts[k].instances``) for ``concepts`` on one RGB uint8 [H, W, 3] frame."""
    return engine(concepts, image, name=name)


def image_error() -> type[ValueError]:
    """The error type the image-prompt engine raises for inputs it cannot use."""
    from vision.engines.ipseg import IPSegError

    return IPSegError


def click_mask(hub: Any, sam_model: str, image: np.ndarray, points: Sequence[Sequence[float]] = (),
               labels: Sequence[int] = (), box: Sequence[float] | None = None) -> np.ndarray:
    """SAM's best mask (bool [H, W]) for clicks ((x, y) pixels, labels 1 = object, 0 = background) and/or a
    box (x0, y0, x1, y1 pixels) on ``image``."""
    from vision.engines.segment import SegmentConfig, SegmentEngine

    clicks = [(float(x), float(y), int(label)) for (x, y), label in zip(points, labels, strict=True)]
    engine = SegmentEngine(SegmentConfig.from_preset("default", sam_model=sam_model), hub=hub)
    return engine(image, points=clicks, box=box).masks[0]
