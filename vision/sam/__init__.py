"""SAM's image state and where it runs: encode an image once (:class:`SamRunner`, an LRU cache of
:class:`SamImage`), predict masks from points, boxes and masks, SAM's everything mode
(:func:`everything`), on PyTorch, ONNX Runtime or OpenVINO (:mod:`vision.sam.backends`)."""

from vision.sam.everything import EverythingSettings, everything
from vision.sam.image import SamImage
from vision.sam.runner import SamRunner, runner_for

__all__ = ["EverythingSettings", "SamImage", "SamRunner", "everything", "runner_for"]
