"""Tiny, randomly initialised instances of the real model classes.

Every builder here returns an object of the same class, with the same block layout and the same
forward signature, as its full-size counterpart in :mod:`vision.builders`, but with a handful of
channels, so that the whole app and test suite run on two CPU cores. Weights are drawn from a fixed
seed so that two processes build identical tiny models. Outputs made with them are noise: everything
a user sees in tiny mode says so.
"""

from __future__ import annotations

from typing import Any

import torch

TINY_NOTICE = "TINY MODE: random-weight models, outputs are noise (for testing the app, not results)."

TINY_CLIP_EMBED = 32  # tiny CLIP joint embedding width
TINY_SD_CROSS_DIM = 32  # tiny SD1.5 text-token width
TINY_IMAGE_EMBED = 32  # tiny IP-Adapter image encoder projection width


def _seeded(build, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    return model.eval() if isinstance(model, torch.nn.Module) else model


def dinov2_b14() -> Any:
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                       patch_size=14, image_size=518)
    return _seeded(lambda: Dinov2Model(cfg))


def dinov2_l14() -> Any:
    """The tiny DINOv2 of :func:`dinov2_b14`'s class and widths with other random weights (seed 1)."""
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                       patch_size=14, image_size=518)
    return _seeded(lambda: Dinov2Model(cfg), seed=1)


def dino_b16() -> Any:
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    patch_size=16, image_size=224, layer_norm_eps=1e-6)  # as vision.builders.dino_v1 loads it
    return _seeded(lambda: ViTModel(cfg, add_pooling_layer=False))


def dino_b8() -> Any:
    """DINO ViT-B/8's layout (patch 8) with tiny widths (CorrCLIP's value reconstruction)."""
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    patch_size=8, image_size=224)
    return _seeded(lambda: ViTModel(cfg, add_pooling_layer=False))


def mask2former() -> Any:
    """``Mask2FormerForUniversalSegmentation`` with a one-block-per-stage Swin backbone, COCO panoptic's
    133 labels and tiny widths."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    swin = SwinConfig(image_size=64, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=swin, hidden_dim=32, mask_feature_size=32, feature_size=32,
                            num_queries=8, encoder_layers=1, decoder_layers=2, encoder_feedforward_dim=64,
                            dim_feedforward=64, num_attention_heads=2, num_labels=133)
    return _seeded(lambda: Mask2FormerForUniversalSegmentation(cfg))


def mask2former_processor() -> Any:
    """Mask2Former's image processor at a small size (short side 64, long side <= 128)."""
    from transformers import Mask2FormerImageProcessor

    return Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})


def _open_clip(vision_width: int, patch_size: int) -> Any:
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=2, width=vision_width, head_width=32, patch_size=patch_size, image_size=224)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)
    return _seeded(lambda: CLIP(embed_dim=TINY_CLIP_EMBED, vision_cfg=vision, text_cfg=text, quick_gelu=True))


def clip_b16() -> Any:
    return _open_clip(vision_width=64, patch_size=16)


def clip_h14() -> Any:
    return _open_clip(vision_width=64, patch_size=14)


def clip_g14() -> Any:
    """Tiny stand-in of the ViT-g/14 CLIP scorer (same open_clip class)."""
    return _open_clip(vision_width=64, patch_size=14)


def _sam(last_block_global: bool = True) -> Any:
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    prompt_dim, image_size, patch = 64, 1024, 16
    grid = image_size // patch

    def build():
        encoder = ImageEncoderViT(
            depth=2, embed_dim=32, img_size=image_size, mlp_ratio=2,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=2, patch_size=patch,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=(1,) if last_block_global else (),
            window_size=14, out_chans=prompt_dim,
        )
        prompt = PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                               input_image_size=(image_size, image_size), mask_in_chans=16)
        decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=128, num_heads=8),
            transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=64,
        )
        return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder,
                   pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])

    return _seeded(build)


def sam_b() -> Any:
    return _sam()


def sam_h() -> Any:
    return _sam()


def sam_t() -> Any:
    """``Sam`` with a TinyViT encoder of MobileSAM's layout (four stages, 64x64 output) and tiny widths."""
    from vision.models.tiny_vit import TINY_CONFIG, build_sam_t

    return _seeded(lambda: build_sam_t(TINY_CONFIG))


TINY_SAM2_SIDE = 256  # the tiny SAM 2's input side (the real models take 1024)


def sam2() -> Any:
    """``Sam2VideoModel`` with a 6-block Hiera of widths 8..64, one memory-attention layer and a 256-pixel
    input (feature maps 64/32/16). Its memory encoder keeps the real 64 output channels (transformers'
    memory attention reads 64 as a constant) and its hidden width (128) stays above them, as in every
    real SAM 2 (256 over 64: the object pointers are split into 64-wide tokens)."""
    from transformers import Sam2VideoConfig, Sam2VideoModel

    side, hidden = TINY_SAM2_SIDE, 128
    backbone = {"hidden_size": 8, "image_size": [side, side], "blocks_per_stage": [1, 2, 2, 1],
                "embed_dim_per_stage": [8, 16, 32, 64], "num_attention_heads_per_stage": [1, 1, 1, 1],
                "window_size_per_stage": [4, 4, 4, 4], "global_attention_blocks": [2, 4],
                "window_positional_embedding_background_size": [4, 4]}
    vision = {"backbone_config": backbone, "backbone_channel_list": [64, 32, 16, 8], "fpn_hidden_size": hidden,
              "backbone_feature_sizes": [[side // 4] * 2, [side // 8] * 2, [side // 16] * 2]}
    config = Sam2VideoConfig(
        vision_config=vision, image_size=side,
        prompt_encoder_config={"hidden_size": hidden, "image_size": side, "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": hidden, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
        memory_attention_hidden_size=hidden, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64, memory_attention_rope_feat_sizes=[side // 16] * 2,
        memory_encoder_hidden_size=hidden, memory_encoder_output_channels=64, mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden, memory_fuser_intermediate_dim=64, num_maskmem=3,
        max_object_pointers_in_encoder=4)
    return _seeded(lambda: Sam2VideoModel(config))


def sd15_unet() -> Any:
    """SD1.5's block layout (3 cross-attention down blocks + a plain one, mirrored up) with tiny widths."""
    from diffusers import UNet2DConditionModel

    return _seeded(lambda: UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(16, 32, 64, 64), norm_num_groups=8, cross_attention_dim=TINY_SD_CROSS_DIM,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ))


def sd15_vae() -> Any:
    from diffusers import AutoencoderKL

    return _seeded(lambda: AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
        layers_per_block=1, norm_num_groups=8, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ))


def _text_encoder(with_projection: bool = False, hidden: int = TINY_SD_CROSS_DIM, projection: int = 32) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                         projection_dim=projection, pad_token_id=49407, eos_token_id=49407,
                         bos_token_id=49406)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return _seeded(lambda: cls(cfg))


def sd15_text_encoder() -> Any:
    return _text_encoder()


SDXL_TINY_TEXT = (16, 24)  # hidden widths of the two tiny SDXL text encoders (they differ, as 768 and 1280 do:
# diffusers tells the two apart by width when it loads a single-file SDXL checkpoint)
SDXL_TINY_TIME_DIM = 8


def sdxl_unet() -> Any:
    """SDXL's block layout (one plain + two cross-attention levels, "text_time" added conditioning)."""
    from diffusers import UNet2DConditionModel

    pooled = SDXL_TINY_TEXT[1]
    return _seeded(lambda: UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(16, 32, 64), norm_num_groups=8, attention_head_dim=(2, 4, 8),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 2), cross_attention_dim=sum(SDXL_TINY_TEXT),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=SDXL_TINY_TIME_DIM,
        projection_class_embeddings_input_dim=pooled + 6 * SDXL_TINY_TIME_DIM,
    ))


def sdxl_vae() -> Any:
    return sd15_vae()


def sdxl_text_encoder() -> Any:
    return _text_encoder(hidden=SDXL_TINY_TEXT[0])


def sdxl_text_encoder_2() -> Any:
    return _text_encoder(with_projection=True, hidden=SDXL_TINY_TEXT[1], projection=SDXL_TINY_TEXT[1])


def _image_encoder(projection: int) -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32, projection_dim=projection)
    return _seeded(lambda: CLIPVisionModelWithProjection(cfg))


def ip_image_encoder_h() -> Any:
    return _image_encoder(TINY_IMAGE_EMBED)


def ip_image_encoder_bigg() -> Any:
    return _image_encoder(TINY_IMAGE_EMBED)


def ip_adapter_state_dict(unet, image_embed_dim: int, tokens: int = 4) -> dict[str, dict[str, torch.Tensor]]:
    """A random IP-Adapter state dict in the layout of ``h94/IP-Adapter``'s files, sized for ``unet``.

    ``image_proj``: ``proj`` [tokens*C, image_embed_dim] and ``norm`` [C] with C = the UNet's
    cross-attention width; ``ip_adapter``: ``{k}.to_k_ip/to_v_ip.weight`` [inner, C] for the k-th
    cross-attention layer, k = 1, 3, 5, ... in ``unet.attn_processors`` order (diffusers' convention).
    """
    cross = unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=generator) * 0.05

    proj = {"proj.weight": rand(tokens * cross, image_embed_dim), "proj.bias": rand(tokens * cross),
            "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)}
    layers, key = {}, 1
    modules = dict(unet.named_modules())
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        inner = modules[name[: -len(".processor")]].to_k.out_features
        layers[f"{key}.to_k_ip.weight"] = rand(inner, cross)
        layers[f"{key}.to_v_ip.weight"] = rand(inner, cross)
        key += 2
    return {"image_proj": proj, "ip_adapter": layers}


def lcm_lora_file(unet: Any, seed: int = 27) -> Any:
    """A tiny random LoRA ``.safetensors`` for ``unet`` in kohya's layout (:func:`vision.tiny_files.write_lora`),
    written into a fresh temporary folder; returns its path (the hub's LCM-LoRA entries hold a file path,
    which diffusers' LoRA loader reads). Not LCM-distilled: a stand-in of the right format and shapes."""
    import tempfile
    from pathlib import Path

    from vision.tiny_files import write_lora

    folder = Path(tempfile.mkdtemp(prefix="vision-tiny-lcm-lora-"))
    return write_lora(folder / "pytorch_lora_weights.safetensors", unet, seed=seed)


def controlnet_from(unet: Any, seed: int = 0, conditioning_channels: tuple[int, ...] = (4, 8, 8, 16)) -> Any:
    """A ControlNet of ``unet``'s layout (``ControlNetModel.from_unet``; a hint encoder of
    ``conditioning_channels``, the real ones are (16, 32, 96, 256)) whose zero convolutions and hint encoder
    get small random weights (from_unet zeroes them: no effect at all)."""
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=conditioning_channels)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return controlnet.eval()


def controlnet_sd15() -> Any:
    return controlnet_from(sd15_unet())


def controlnet_sdxl() -> Any:
    return controlnet_from(sdxl_unet())


def depth_anything_v2_small() -> Any:
    """Depth Anything V2's class (DINOv2 backbone, DPT head) with tiny widths."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                            image_size=518, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                                 fusion_hidden_size=16, head_hidden_size=8, patch_size=14)
    return _seeded(lambda: DepthAnythingForDepthEstimation(config))


SD3_TINY_JOINT_DIM = 48  # the tiny T5's width (SD3 pads the CLIP embeddings to it)


def sd35_transformer(medium: bool = True) -> Any:
    """SD3.5's MMDiT (``SD3Transformer2DModel``, RMS-norm q/k; Medium's MMDiT-X dual attention in its first
    layer) with tiny widths: 2 heads of 8, 4 layers, patch 2, 16 latent channels."""
    from diffusers import SD3Transformer2DModel

    pooled = sum(SDXL_TINY_TEXT)
    return _seeded(lambda: SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=4, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=SD3_TINY_JOINT_DIM, caption_projection_dim=16,
        pooled_projection_dim=pooled, pos_embed_max_size=64, qk_norm="rms_norm",
        dual_attention_layers=(0,) if medium else ()))


def sd35_large_transformer() -> Any:
    return sd35_transformer(medium=False)


def sd35_vae() -> Any:
    """SD3's VAE layout (16 latent channels, no quant convs, its scaling and shift) with tiny widths."""
    from diffusers import AutoencoderKL

    return _seeded(lambda: AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
        norm_num_groups=8, sample_size=64, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=1.5305, shift_factor=0.0609))


def sd35_text_encoder() -> Any:
    """SD3's first text encoder (CLIP-L with its projection) with tiny widths."""
    return _text_encoder(with_projection=True, hidden=SDXL_TINY_TEXT[0], projection=SDXL_TINY_TEXT[0])


def sd35_tokenizer_3() -> Any:
    """A ``T5TokenizerFast`` (SentencePiece-style unigram, ``</s>`` appended) over a 76-piece vocabulary:
    letters and digits, alone and word-initial (the real T5 vocabulary is a download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    symbols = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    vocab += [(c, -2.0) for c in symbols] + [("\u2581" + c, -1.5) for c in symbols]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                             special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=512)


def sd35_text_encoder_3() -> Any:
    """SD3's third text encoder (a T5 encoder) with tiny widths, over :func:`sd35_tokenizer_3`'s vocabulary."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=76, d_model=SD3_TINY_JOINT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=2,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    return _seeded(lambda: T5EncoderModel(config))
