"""vision.sam.image: ``SamImage.upscale`` (computed over the kept pixels only) equals segment_anything's
``Sam.postprocess_masks`` (segment_anything/modeling/sam.py) bit for bit."""

import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from vision.sam.image import SamImage


@pytest.mark.parametrize("original_size", [(681, 1024), (1024, 1024), (1500, 1001), (37, 100), (3000, 2000),
                                           (1024, 3)])
def test_upscale_equals_postprocess_masks_bit_for_bit(tiny_hub, original_size):
    sam = tiny_hub.get("sam_t")
    side = int(sam.image_encoder.img_size)
    input_size = ResizeLongestSide(side).get_preprocess_shape(*original_size, side)
    image = SamImage(sam, None, torch.zeros(1), original_size, input_size)
    low_res = torch.randn(2, 3, side // 4, side // 4, generator=torch.Generator().manual_seed(0)) * 8
    expected = sam.postprocess_masks(low_res.reshape(1, 6, side // 4, side // 4), input_size, original_size)
    upscaled = image.upscale(low_res)
    assert upscaled.shape == (2, 3, *original_size)
    assert torch.equal(upscaled.reshape(expected.shape), expected)


@pytest.mark.parametrize("offset", [1.0, 0.1])
def test_stability_scores_equal_sams(offset):
    """vision.sam.everything.stability_scores against segment_anything/utils/amg.py
    ``calculate_stability_score``, the same float32 values."""
    from segment_anything.utils import amg

    from vision.sam.everything import stability_scores

    logits = torch.randn(5, 97, 131, generator=torch.Generator().manual_seed(1)) * 3
    logits[2] = -10  # no pixel above either threshold: 0 / 0, nan in both
    expected = amg.calculate_stability_score(logits, 0.0, offset)
    scores = stability_scores(logits, 0.0, offset)
    assert scores.dtype == expected.dtype and scores[2].isnan()
    torch.testing.assert_close(scores, expected, rtol=0, atol=0, equal_nan=True)
