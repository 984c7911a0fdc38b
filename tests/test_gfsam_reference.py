"""GF-SAM stage by stage against its reference code on identical inputs.

Reference: ``ANDYZAQ/GF-SAM`` at f227d1d856c6cd33b420b18411e28369365bec02, ``matcher/GFSAM.py``, class
``GFSAM``. Its outputs are fixtures in ``tests/fixtures/gfsam/`` (how they were made: README.md there):

* four photographs cases (``*_one_shot``, ``*_two_shot``): the reference's ``predict()`` with the tiny
  random DINOv2 (same weights as :func:`vision.tiny.dinov2_b14`) and SAM = the tiny random
  :func:`vision.tiny.sam_b` or the real ``sam_t``; each test below repeats one of its stages here;
* ``stages.npz``: the reference's graph and gating methods called on synthetic masks, maps and tokens
  (:func:`make_fixtures.synthetic_stages`, rebuilt here from the same seeds).

Points, graph, clusters, gate states and masks must be identical; features and maps equal to float
precision (transformers' DINOv2 and the reference's differ in the last bits of attention).
"""

import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from vision import tiny
from vision.engines.ipseg.cascade import SamView
from vision.engines.ipseg.gfsam import gfsam, sam_point_masks
from vision.engines.ipseg.gfsam_align import (
    AlignmentMaps,
    Shot,
    alignment_maps,
    cells_to_frame,
    normalise_over_cells,
    point_map,
    select_points,
)
from vision.engines.ipseg.gfsam_graph import fuse_point_masks
from vision.engines.ipseg.gfsam_inputs import (
    dino_prenorm_tokens,
    reference_dino_pixels,
    reference_region_weights,
    reference_sam_frame,
    reference_square,
)

FIXTURES = Path(__file__).parent / "fixtures" / "gfsam"
sys.path.insert(0, str(FIXTURES))
from make_fixtures import CASES, STAGE_SCENARIOS, case_inputs, masks_digest, synthetic_stages  # noqa: E402

FLOAT_TOLERANCE = 1e-5


def fixture(name: str) -> dict:
    with np.load(FIXTURES / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


@cache
def tiny_model(name: str):
    return getattr(tiny, name)()


def tokens(image: np.ndarray) -> torch.Tensor:
    """The reference's features of an image (extract_img_feats): [1369, 32]."""
    pixels = reference_dino_pixels(reference_square(image))
    return normalise_over_cells(dino_prenorm_tokens(tiny_model("dinov2_b14"), pixels))


@cache
def stages(name: str, sam: object) -> dict:
    """Our stages on a case, each fed with the previous one's output (as GFSAM.predict chains them)."""
    case = case_inputs(name)
    view = SamView.encode(sam, reference_sam_frame(reference_square(case["target"])), stretch=False)
    target = tokens(case["target"])
    pairs = zip(case["prompts"], case["masks"], strict=True)
    shots = [Shot(tokens(p), reference_region_weights(m, 37)) for p, m in pairs]
    maps = alignment_maps(target, shots)
    prompts = select_points(point_map(maps), reference=True)
    points = cells_to_frame(prompts.cells, (1024, 1024), 37, reference=True)
    masks, _ = sam_point_masks(view.predictor, points)
    graph = fuse_point_masks(masks, prompts.cells, target, maps, reference=True)
    return {"target": target, "shots": shots, "maps": maps, "prompts": prompts, "points": points, "masks": masks,
            "graph": graph, "view": view}


@pytest.fixture(params=list(CASES))
def case(request):
    """(fixture of the reference's outputs, our stages) for each case; the sam_t cases use real weights."""
    name = request.param
    sam = tiny_model("sam_b") if CASES[name][0] == "tiny" else request.getfixturevalue("sam_t_hub").get("sam_t")
    return fixture(name), stages(name, sam)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


# ----------------------------------------------------------------------------- photographs, predict()
def test_features_match_extract_img_feats(case):
    """GFSAM.extract_img_feats: x_prenorm tokens of the 518 resize of the 1024 square, F.normalize(dim=1)."""
    ref, ours = case
    cells = ref["feature_cells"]
    np.testing.assert_allclose(ours["target"][cells].numpy(), ref["target_tokens"], rtol=0, atol=FLOAT_TOLERANCE)
    for k, shot in enumerate(ours["shots"]):
        np.testing.assert_allclose(shot.tokens[cells].numpy(), ref["prompt_tokens"][k], rtol=0, atol=FLOAT_TOLERANCE)


def test_alignment_maps_match_generate_prior(case):
    """GFSAM.generate_prior (and generate_pixelwise_comparison): positive max/mean, negative mean maps."""
    ref, ours = case
    for name in ("positive_max", "positive_mean", "negative_mean"):
        np.testing.assert_allclose(getattr(ours["maps"], name).numpy(), ref[name], rtol=0, atol=FLOAT_TOLERANCE)


def test_point_map_and_points_match_find_points(case):
    """GFSAM.predict's filtered map, then GFSAM.find_points: the same cells in the same order, the same
    (truncated) pixels."""
    ref, ours = case
    np.testing.assert_allclose(ours["prompts"].point_map.numpy(), ref["point_map"], rtol=0, atol=FLOAT_TOLERANCE)
    assert ours["prompts"].count == len(ref["points_cells_xy"]) > 0
    np.testing.assert_array_equal(ours["prompts"].cells[:, ::-1], ref["points_cells_xy"])
    np.testing.assert_array_equal(ours["points"], np.trunc(ref["points_xy"]).astype(np.float32))


def test_point_masks_match_generate_sam_masks(case):
    """GFSAM.generate_sam_masks: one single-point mask per point, identical at 1024 x 1024."""
    ref, ours = case
    masks = ours["masks"].numpy()
    np.testing.assert_array_equal(masks.sum(axis=(1, 2)), ref["mask_areas"])
    assert masks_digest(masks) == str(ref["masks_digest"])


def test_graph_and_clusters_match_mask_cluster(case):
    """GFSAM.mask_cluster: the coverage adjacency and its weakly connected components."""
    ref, ours = case
    graph = ours["graph"]
    np.testing.assert_array_equal(graph.adjacency, ref["adjacency"])
    assert graph.cluster_count == int(ref["cluster_count"])
    np.testing.assert_array_equal(graph.clusters, ref["clusters"])


def test_gates_match_cluster_classification_and_point_consistency_dis(case):
    """GFSAM.cluster_classification (foreground labels, cluster scores) and GFSAM.point_consistency_dis
    (the 0/1/2 states)."""
    ref, ours = case
    graph = ours["graph"]
    np.testing.assert_array_equal(graph.foreground.astype(np.int64), ref["foreground"])
    np.testing.assert_allclose(graph.cluster_scores, ref["cluster_scores"], rtol=0, atol=FLOAT_TOLERANCE)
    np.testing.assert_array_equal(graph.states, ref["states"])


def test_final_mask_matches_predict(case):
    """GFSAM.triplet_selection_b / GFSAM.predict: the union, identical at 1024 x 1024; and, with the tiny
    SAM (its decoder is cheap to run twice), our whole pipeline (:func:`gfsam`) gives the same."""
    ref, ours = case
    assert int(ours["graph"].mask.sum()) == int(ref["pred_area"])
    assert masks_digest(ours["graph"].mask.numpy()[None]) == str(ref["pred_digest"])
    if ours["view"].predictor.model is tiny_model("sam_b"):
        whole = gfsam(ours["target"], ours["shots"], ours["view"].predictor, reference=True)
        assert masks_digest(whole.mask[None]) == str(ref["pred_digest"])


# ------------------------------------------------------------------- synthetic inputs, the stages alone
@pytest.mark.parametrize("seed", list(STAGE_SCENARIOS))
def test_graph_and_gates_on_synthetic_inputs(seed):
    """GFSAM.mask_cluster, cluster_classification, point_consistency_dis and triplet_selection_b called
    on the same synthetic masks, maps and tokens (seeds 3 and 5 end in triplet_selection_b's fallback)."""
    ref = {k[len(f"s{seed}_"):]: v for k, v in fixture("stages").items() if k.startswith(f"s{seed}_")}
    inputs = synthetic_stages(seed, STAGE_SCENARIOS[seed])
    maps = AlignmentMaps(inputs["positive_mean"], inputs["positive_mean"], inputs["negative_mean"])
    graph = fuse_point_masks(torch.as_tensor(inputs["masks"]), inputs["cells_xy"][:, ::-1].copy(), inputs["tokens"],
                             maps, reference=True)
    np.testing.assert_array_equal(graph.adjacency, ref["adjacency"])
    assert graph.cluster_count == int(ref["cluster_count"])
    np.testing.assert_array_equal(graph.clusters, ref["clusters"])
    np.testing.assert_array_equal(graph.foreground.astype(np.int64), ref["foreground"])
    np.testing.assert_allclose(graph.cluster_scores, ref["cluster_scores"], rtol=0, atol=FLOAT_TOLERANCE)
    np.testing.assert_array_equal(graph.states, ref["states"])
    assert masks_digest(graph.mask.numpy()[None]) == str(ref["pred_digest"])
    assert (graph.fallback is not None) == (not (ref["states"] == 1).any())


# ------------------------------------------------------------------------- the engine in reference mode
def test_engine_preset_gfsam_reproduces_predict_end_to_end(one_torch_thread):
    """The engine itself (IPSegEngine, preset gfsam: reference mode; with the tiny DINOv2-B and tiny SAM-B
    standing in for DINOv2-L and SAM-H) on a fixture's inputs: GFSAM.predict's points, clusters and gate
    states, from the image files' pixels through the engine's prompt cache and frames."""
    from vision.engines.ipseg import IPSegConfig, IPSegEngine, Prompt
    from vision.hub import ModelHub

    name = "tiny_two_shot"
    ref, case = fixture(name), case_inputs(name)
    config = IPSegConfig.from_preset("gfsam", dino_model="dinov2_b14", sam_model="sam_b")
    engine = IPSegEngine(config, hub=ModelHub(tiny=True, device="cpu"))
    prompts = [Prompt(p, mask=m) for p, m in zip(case["prompts"], case["masks"], strict=True)]
    graph = engine(prompts, case["target"]).concepts[0].graph
    np.testing.assert_array_equal(graph.cells[:, ::-1], ref["points_cells_xy"])
    np.testing.assert_array_equal(graph.clusters, ref["clusters"])
    np.testing.assert_array_equal(graph.states, ref["states"])
