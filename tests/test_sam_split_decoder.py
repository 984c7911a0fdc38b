"""vision.sam.split_decoder: SAM's decoder split into a part per image and a part per prompt equals
segment_anything/modeling/mask_decoder.py ``MaskDecoder.predict_masks`` (with ``PromptEncoder.forward``'s
embeddings) on tiny and real weights, in PyTorch and through the compiled backends, which compute the
per-image part once per embedding and fall back to the full decoder when the split one cannot be built."""

import pytest
import torch

from vision.imaging import sample_image
from vision.sam.backends import PACKAGES, decoder_feed, make_backend, missing_package
from vision.sam.runner import runner_for
from vision.sam.split_decoder import DecoderImagePart, DecoderPromptPart

COMPILED = [b for b in PACKAGES if not missing_package(b)]


def _prompts(side: int) -> list[tuple]:
    """(coords [B, N, 2], labels [B, N], boxes [B, 4] or None) in the encoder's frame: one point, a box,
    points with a box, three points, each batched."""
    generator = torch.Generator().manual_seed(0)
    coords = torch.rand(3, 3, 2, generator=generator) * side
    labels = torch.tensor([[1, 0, 1], [1, 1, 1], [0, 1, 1]], dtype=torch.int)
    boxes = torch.tensor([[10.0, 20.0, 600.0, 500.0], [300.0, 100.0, 900.0, 700.0], [0.0, 0.0, 1000.0, 1000.0]])
    return [(coords[:1, :1], labels[:1, :1], None), (None, None, boxes), (coords[:, :2], labels[:, :2], boxes),
            (coords, labels, None)]


def _reference(sam, embedding, coords, labels, boxes) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's own modules: ``PromptEncoder.forward`` then ``MaskDecoder.predict_masks``."""
    encoder = sam.prompt_encoder
    sparse, dense = encoder(points=None if coords is None else (coords, labels), boxes=boxes, masks=None)
    return sam.mask_decoder.predict_masks(image_embeddings=embedding, image_pe=encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)


def _split(sam, embedding, coords, labels, boxes) -> tuple[torch.Tensor, torch.Tensor]:
    feed = decoder_feed(embedding, coords, labels, boxes, None)
    per_image = DecoderImagePart(sam)(embedding)
    return DecoderPromptPart(sam)(*per_image, torch.from_numpy(feed["point_coords"]),
                                  torch.from_numpy(feed["point_labels"]))


def _assert_equal_to_predict_masks(sam, embedding):
    side = int(sam.image_encoder.img_size)
    with torch.no_grad():
        for prompt in _prompts(side):
            (low, iou), (low_ref, iou_ref) = _split(sam, embedding, *prompt), _reference(sam, embedding, *prompt)
            assert low.shape == low_ref.shape and iou.shape == iou_ref.shape == (low.shape[0], 4)
            assert (low - low_ref).abs().max() <= 1e-4, prompt
            assert (iou - iou_ref).abs().max() <= 1e-5, prompt


def test_split_decoder_equals_predict_masks_tiny(tiny_hub, one_torch_thread):
    sam = tiny_hub.get("sam_t")
    grid = sam.prompt_encoder.image_embedding_size
    embedding = torch.randn(1, sam.prompt_encoder.embed_dim, *grid, generator=torch.Generator().manual_seed(1))
    _assert_equal_to_predict_masks(sam, embedding)


@pytest.fixture(scope="module")
def chelsea_embedding(sam_t_hub):
    """Real sam_t's embedding [1, 256, 64, 64] of chelsea, by the default backend (compiled on a CPU)."""
    return runner_for(sam_t_hub, "sam_t").encode(sample_image("chelsea"))[0].embedding


def test_split_decoder_equals_predict_masks_real(sam_t_hub, chelsea_embedding):
    _assert_equal_to_predict_masks(sam_t_hub.get("sam_t"), chelsea_embedding)


@pytest.mark.parametrize("backend", COMPILED)
def test_compiled_split_decoder_equals_torch_real(sam_t_hub, chelsea_embedding, backend):
    """The compiled split decoder against SAM's torch modules on the same embedding; its per-image
    tensors are computed once per embedding tensor."""
    sam = sam_t_hub.get("sam_t")
    compiled = runner_for(sam_t_hub, "sam_t", backend).backend  # the session's export, shared with other tests
    assert compiled.split is not None
    for coords, labels, boxes in _prompts(int(sam.image_encoder.img_size)):
        low, iou = compiled.decode(chelsea_embedding, coords, labels, boxes, None)
        with torch.no_grad():
            low_ref, iou_ref = _reference(sam, chelsea_embedding, coords, labels, boxes)
        assert (low - low_ref).abs().max() <= 1e-4 and (iou - iou_ref).abs().max() <= 1e-5, (coords, boxes)
    tensors = compiled.image_tensors(chelsea_embedding)
    assert compiled.image_tensors(chelsea_embedding) is tensors  # kept with the embedding
    assert compiled.image_tensors(chelsea_embedding.clone()) is not tensors  # another tensor: computed


@pytest.mark.skipif(not COMPILED, reason="neither onnxruntime nor openvino is installed")
def test_a_split_decoder_that_fails_to_export_falls_back_to_the_full_decoder(tiny_hub, one_torch_thread, tmp_path,
                                                                           monkeypatch):
    from vision.sam import export

    sam = tiny_hub.get("sam_t")
    export_part = export.export_part

    def no_split(model, part, path):
        if part.startswith("decoder_"):
            raise RuntimeError("no split here (test)")
        export_part(model, part, path)

    monkeypatch.setattr(export, "export_part", no_split)
    notes = []
    backend = make_backend(sam, COMPILED[0], tmp_path, notes)
    assert backend.name == COMPILED[0] and backend.split is None
    assert any("the split decoder is unavailable, the full decoder answers every prompt (ExportError: ONNX export "
               "of the SAM decoder_image failed (RuntimeError: no split here (test)))" in n for n in notes), notes
    embedding = torch.randn(1, sam.prompt_encoder.embed_dim, *sam.prompt_encoder.image_embedding_size)
    coords, labels, _ = _prompts(int(sam.image_encoder.img_size))[0]
    low, iou = backend.decode(embedding, coords, labels, None, None)
    with torch.no_grad():
        low_ref, iou_ref = _reference(sam, embedding, coords, labels, None)
    assert (low - low_ref).abs().max() <= 1e-4 and (iou - iou_ref).abs().max() <= 1e-5


def test_a_decoder_of_another_structure_is_refused_by_name(tiny_hub):
    import copy

    from vision.sam.split_decoder import SplitDecoderError, check_decoder

    sam = copy.deepcopy(tiny_hub.get("sam_t"))
    check_decoder(sam)
    sam.mask_decoder.transformer.layers.append(copy.deepcopy(sam.mask_decoder.transformer.layers[1]))
    with pytest.raises(SplitDecoderError, match="a two-block transformer expected, this one has 3"):
        DecoderImagePart(sam)
