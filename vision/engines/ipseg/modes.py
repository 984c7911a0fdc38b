"""The two behaviours ``IPSegConfig.reference`` chooses between: :class:`ProductMode` (the project's) and
:class:`ReferenceMode` (the reference code's, quirks included). Each attribute or method is one
difference; the list with the reasons is in :mod:`vision.engines.ipseg.engine`'s docstring (item letters
in brackets). :func:`mode_for` is the only place that reads the switch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from vision.engines.ipseg import points as pts
from vision.engines.ipseg.config import SD_FEATURES

if TYPE_CHECKING:
    from vision.engines.ipseg.config import IPSegConfig


class ProductMode:
    """The project's behaviour (every preset but ``paper``, and any config with ``reference=False``)."""

    name = "product"
    grid_sampling = "nearest-exact"  # [b] maps and prompt masks reach the grid at cell centres
    stretch_sam = False  # [e] SAM sees the image in SamPredictor's aspect-keeping frame
    sd_crops = False  # [a] SD runs once on the whole letterboxed square
    sd_layer_order = SD_FEATURES  # [c] sd_layer_weights go to s5, s4, s3 (the spec's order)
    sam_frame = "aspect-kept"  # [e], for records

    def feature_weights(self, config: IPSegConfig) -> dict[str, float]:
        """[c] Weight of each feature's cosine map in S: ``{"dino": 1, "s5": 0.03, "s4": 0.02, "s3": 0.01}``
        by default (``sd_weight`` x ``sd_layer_weights`` in :attr:`sd_layer_order`), ``{"sam": 1}`` or
        ``{"dino": 1}`` for the other feature sources."""
        if config.features == "sam":
            return {"sam": 1.0}
        weights = {"dino": 1.0}
        if config.use_sd:
            weights.update({f: config.sd_weight * w for f, w in zip(self.sd_layer_order, config.sd_layer_weights)})
        return weights

    def valid_cells(self, box: Any, n: int) -> tuple[slice, slice]:
        """[b] Cells of an ``n`` x ``n`` map of a letterboxed square that cover the image: every cell
        the image touches (``box`` is the :class:`vision.imaging.Letterbox`)."""
        return box.valid_region(n)

    def select_points(self, similarity: np.ndarray, config: IPSegConfig,
                      allowed: np.ndarray | None) -> pts.PointSelection:
        """[d] Positive and negative cells from S [g, g]: k-means++ centres rounded to cells."""
        return pts.select_points(similarity, config.top_k, config.clusters, config.kmeans_iters, config.seed,
                                 allowed)


class ReferenceMode(ProductMode):
    """The reference code's behaviour (the ``paper`` preset; ``reference=True``)."""

    name = "reference"
    grid_sampling = "nearest"
    stretch_sam = True
    sd_crops = True
    sd_layer_order = SD_FEATURES[::-1]  # the order the reference's extractor saved its maps in: s3, s4, s5
    sam_frame = "stretched-square"

    def valid_cells(self, box, n):
        from vision.engines.ipseg.features import reference_valid_region

        return reference_valid_region(box.height, box.width, n)

    def select_points(self, similarity, config, allowed):
        return pts.select_points_reference(similarity, config.top_k, config.clusters, config.kmeans_iters,
                                           config.seed, allowed)


PRODUCT, REFERENCE = ProductMode(), ReferenceMode()


def mode_for(config: IPSegConfig) -> ProductMode:
    """The behaviour ``config.reference`` asks for."""
    return REFERENCE if config.reference else PRODUCT
