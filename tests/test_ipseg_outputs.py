"""What IPSeg gives a user interface: progress per stage, the similarity heatmap with the chosen points,
and batches that keep the good targets when one fails."""

import numpy as np
import pytest

from vision.engines.ipseg import ConceptResult, Instance, IPSegConfig, IPSegEngine, IPSegError, IPSegResult
from vision.imaging import sample_image


def _result(concepts=("thing",)) -> IPSegResult:
    """A hand-built result on a grey 100x200 image: S high on the left half, low on the right; one
    instance with a positive point at (50, 50) and a negative one at (150, 50)."""
    sim = np.zeros((10, 10), np.float32)
    sim[:, :5] = 1.0
    mask = np.zeros((100, 200), bool)
    mask[20:80, 20:80] = True
    inst = Instance(mask, 0.9, 0.8, np.array([[50.0, 50.0]]), np.array([[150.0, 50.0]]), np.array([[5, 2]]),
                    np.array([[5, 7]]), True)
    results = [ConceptResult(name, 0.9, True, [inst], sim, [{"source": "mask", "grid": "eroded"}]) for name in concepts]
    return IPSegResult(np.full((100, 200, 3), 128, np.uint8), results, {"total": 0.0}, False, IPSegConfig())


def test_heatmap_shows_the_similarity_and_the_points():
    result = _result()
    heat = result.heatmap(alpha=1.0)
    assert heat.shape == (100, 200, 3) and heat.dtype == np.uint8
    high, low = heat[10, 10].astype(int), heat[10, 190].astype(int)
    assert high[0] > 100 > high[2] and low[2] > 100 > low[0]  # red where S is high, blue where it is low
    assert tuple(heat[50, 50]) == (0, 255, 0) and tuple(heat[50, 150]) == (255, 0, 0)  # the points
    assert tuple(result.heatmap(alpha=1.0, points=False)[50, 50]) != (0, 255, 0)
    np.testing.assert_array_equal(result.heatmap("thing"), result.heatmap(0))
    with pytest.raises(KeyError, match="no concept 'dog'"):
        result.heatmap("dog")
    sim = result.concepts[0].similarity_image((100, 200))
    assert sim.shape == (100, 200) and sim[0, 0] == 1.0 and sim[0, -1] == 0.0
    assert result.to_record()["concepts"][0]["similarity_range"] == [0.0, 1.0]


def test_heatmap_files():
    assert set(_result().to_files(heatmaps=True)) == {"mask.png", "overlay.png", "heatmap.png"}
    two = _result(("cat", "red cup")).to_files(heatmaps=True)
    assert {"cat.heatmap.png", "red-cup.heatmap.png"} <= set(two)
    assert set(_result().to_files()) == {"mask.png", "overlay.png"}  # unchanged without the flag


def test_batch_keeps_the_good_targets_and_names_the_bad_ones(tiny_hub, tmp_path):
    from PIL import Image

    engine = IPSegEngine(IPSegConfig.from_preset("fast"), hub=tiny_hub)
    astronaut = tmp_path / "astronaut.png"
    Image.fromarray(sample_image("astronaut")).save(astronaut)
    targets = [sample_image("coffee"), b"not an image", np.zeros((10, 10, 3), np.uint8), str(astronaut)]
    calls = []
    results = engine.segment_batch(sample_image("chelsea"), targets,
                                   progress=lambda p: calls.append((p.fraction, p.message)), on_error="collect",
                                   names=["coffee.jpg", "broken.png", "speck.png", "astro"])
    assert [r.index for r in results] == [0, 3] and [r.name for r in results] == ["coffee.jpg", "astro"]
    assert [(e.index, e.name) for e in results.errors] == [(1, "broken.png"), (2, "speck.png")]
    assert "target image" in results.errors[0].message and "smaller than one" in results.errors[1].message
    assert results.errors[1].to_record()["target"] == "speck.png"
    # Progress: every stage of every target, never backwards, ending at 1.0; a failed target's stages
    # do not shift the next target's share.
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and calls[-1] == (1.0, "done") and fractions[0] == 0.0
    starts = {d.split(":")[0]: f for f, d in reversed(calls) if d != "done"}
    assert starts["target 3/4 (speck.png)"] == 0.5 and starts["target 4/4 (astronaut.png)"] == 0.75
    stages = [d.split(": ", 1)[1] for _, d in calls if d.startswith("target 1/4")]
    assert stages == ["prompt 1/1 features", "DINOv2 features", "SAM image encoder", "points and SAM decoder (concept)"]
    with pytest.raises(IPSegError, match=r"^target 2: target image"):
        engine.segment_batch(sample_image("chelsea"), targets[:2])
    with pytest.raises(IPSegError, match="2 names for 1 targets"):
        engine.segment_batch(sample_image("chelsea"), targets[:1], names=["a", "b"])
