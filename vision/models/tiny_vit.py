"""TinyViT, MobileSAM's image encoder, and ``sam_t``: a ``segment_anything`` ``Sam`` built on it.

Why our own module: no maintained PyPI package has MobileSAM's exact encoder. timm's TinyViT merges
patches with a fixed stride of 2 and has no SAM neck, so its output is 32x32 with 320 channels, not the
64x64x256 embedding SAM's decoder expects; ``mobilesam-mirror`` is a single-release packaging mirror that
imports timm without declaring it. This module is written from the architecture's description (TinyViT,
Wu et al. ECCV 2022; MobileSAM, Zhang et al. 2023), not copied; its module names follow MobileSAM's so
that MobileSAM's ``mobile_sam.pt`` and the ONNX export's node scopes map onto it key for key.

Architecture (``TinyViTConfig()`` = MobileSAM's TinyViT-5M, input [B, 3, 1024, 1024]):

* ``patch_embed``: two 3x3 stride-2 conv+BN (GELU between): [B, 3, 1024, 1024] -> [B, 64, 256, 256].
* ``layers.0``: two MBConv blocks (1x1 expand x4, 3x3 depthwise, 1x1 project, GELU after each, residual
  before the last GELU), then a patch merge to 128 channels at 128x128 (tokens [B, 128*128, 128] from here).
* ``layers.1..3``: TinyViT blocks (windowed multi-head attention with a learned bias per head and per
  (|dy|, |dx|) offset inside the window, a 3x3 depthwise conv+BN on the token map, an MLP; pre-norm,
  residuals). Widths 128 / 160 / 320, depths 2 / 6 / 2, heads 4 / 5 / 10, windows 7 / 14 / 7. Token maps
  that are not a multiple of the window are zero-padded bottom/right before the attention (its
  LayerNorm included, as in TinyViT) and cropped after. Patch merges between them: 128x128 -> 64x64
  (stride 2), then 64x64 -> 64x64 (MobileSAM's stride 1, which keeps SAM's 64x64 grid).
* ``neck``: 1x1 conv 320 -> 256, LayerNorm2d, 3x3 conv 256 -> 256, LayerNorm2d: [B, 256, 64, 64].

The classification head of TinyViT is left out (SAM never uses it). Parameter count: 5.74 M for the
encoder with its batch norms (5.73 M once they are fused), 9.79 M for the whole ``sam_t``; MobileSAM's
checkpoint holds another 0.32 M in that unused head (10.1 M in all). The attention bias table is
gathered in every forward (a few hundred thousand floats), not cached at ``.eval()`` as TinyViT does,
so loading new weights never leaves a stale copy behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
MOBILE_SAM_UNUSED = ("image_encoder.head.", "image_encoder.norm_head.")  # keys of the classification head


@dataclass(frozen=True)
class TinyViTConfig:
    """Stage widths, depths, heads and windows; the defaults are MobileSAM's TinyViT-5M."""

    img_size: int = 1024
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)  # stage 0 is convolutional: its entry is unused
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand: float = 4.0
    out_chans: int = 256  # SAM's prompt/decoder width

    @property
    def grid(self) -> int:
        """Side of the output embedding: 1/16 of the input (64 for 1024)."""
        return self.img_size // 16


TINY_CONFIG = TinyViTConfig(embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 2),
                            window_sizes=(7, 7, 14, 7), mlp_ratio=2.0, mbconv_expand=2.0, out_chans=64)


class ConvBN(nn.Module):
    """A bias-free ``Conv2d`` (``c``) followed by ``BatchNorm2d`` (``bn``); 'same' padding."""

    def __init__(self, in_chans: int, out_chans: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))


class PatchEmbed(nn.Module):
    """[B, 3, H, W] -> [B, dim, H/4, W/4]."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.seq = nn.Sequential(ConvBN(in_chans, dim // 2, 3, 2), nn.GELU(), ConvBN(dim // 2, dim, 3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block on a map [B, C, H, W] (shape kept)."""

    def __init__(self, dim: int, expand: float):
        super().__init__()
        hidden = int(dim * expand)
        self.conv1 = ConvBN(dim, hidden, 1)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Map [B, C, H, W] or tokens [B, H*W, C] -> tokens [B, (H/s)*(W/s), out_dim]."""

    def __init__(self, resolution: int, dim: int, out_dim: int, stride: int):
        super().__init__()
        self.resolution = resolution
        self.conv1 = ConvBN(dim, out_dim, 1)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            b, _, c = x.shape
            x = x.transpose(1, 2).reshape(b, c, self.resolution, self.resolution)
        x = self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))
        return x.flatten(2).transpose(1, 2)


def attention_bias_index(window: int) -> torch.Tensor:
    """[N, N] long (N = window^2): for tokens p = (py, px) and q = (qy, qx) of a window, the column of
    their offset (|py - qy|, |px - qx|) in the bias table, ``|dy| * window + |dx|``."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    return (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()


class Attention(nn.Module):
    """Multi-head self-attention over one window's tokens [B, N, C] with a learned relative bias
    ``attention_biases`` [heads, window^2] (one value per head and offset); LayerNorm first."""

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", attention_bias_index(window), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=3)
        bias = self.attention_biases[:, self.attention_bias_idxs]
        attn = ((q @ k.transpose(-2, -1)) * self.scale + bias).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Tokens [B, R*R, C] -> same: windowed attention, depthwise conv on the map, MLP."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, mlp_ratio: float):
        super().__init__()
        self.resolution, self.window = resolution, window
        self.attn = Attention(dim, num_heads, window)
        self.local_conv = ConvBN(dim, dim, 3, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        r, w = self.resolution, self.window
        if r == w:
            return self.attn(x)
        pad = (-r) % w
        grid = F.pad(x.view(b, r, r, c), (0, 0, 0, pad, 0, pad))
        n = (r + pad) // w
        windows = grid.view(b, n, w, n, w, c).transpose(2, 3).reshape(b * n * n, w * w, c)
        out = self.attn(windows).view(b, n, n, w, w, c).transpose(2, 3).reshape(b, n * w, n * w, c)
        return out[:, :r, :r].reshape(b, r * r, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, c = x.shape
        x = x + self._windowed_attention(x)
        grid = x.transpose(1, 2).reshape(b, c, self.resolution, self.resolution)
        x = self.local_conv(grid).view(b, c, length).transpose(1, 2)
        return x + self.mlp(x)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks on the map, then the patch merge (output: tokens)."""

    def __init__(self, dim: int, depth: int, expand: float, downsample: PatchMerging):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class BasicLayer(nn.Module):
    """Stages 1-3: TinyViT blocks on tokens, then (except the last stage) a patch merge."""

    def __init__(self, dim: int, resolution: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 downsample: PatchMerging | None):
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, resolution, num_heads, window, mlp_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """MobileSAM's image encoder: [B, 3, S, S] (SAM-normalised, S = ``img_size``) -> [B, out_chans, S/16, S/16].

    ``img_size`` is the attribute ``SamPredictor`` and ``Sam.preprocess`` read, as on SAM's ViT encoder.
    """

    def __init__(self, config: TinyViTConfig = TinyViTConfig()):
        super().__init__()
        self.config = config
        self.img_size = config.img_size
        dims = config.embed_dims
        self.patch_embed = PatchEmbed(3, dims[0])
        resolution = config.img_size // 4
        # Every merge halves the map except the last, which keeps it at img_size / 16 (SAM's grid).
        strides = [2] * (len(dims) - 2) + [1]
        layers: list[nn.Module] = []
        for i, dim in enumerate(dims):
            last = i == len(dims) - 1
            merge = None if last else PatchMerging(resolution, dim, dims[i + 1], strides[i])
            if i == 0:
                layers.append(ConvLayer(dim, config.depths[0], config.mbconv_expand, merge))
            else:
                layers.append(BasicLayer(dim, resolution, config.depths[i], config.num_heads[i],
                                         config.window_sizes[i], config.mlp_ratio, merge))
            if not last:
                resolution //= strides[i]
        self.layers = nn.ModuleList(layers)
        self.grid = resolution
        from segment_anything.modeling.common import LayerNorm2d

        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], config.out_chans, 1, bias=False), LayerNorm2d(config.out_chans),
            nn.Conv2d(config.out_chans, config.out_chans, 3, padding=1, bias=False), LayerNorm2d(config.out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        return self.neck(x.transpose(1, 2).reshape(b, c, self.grid, self.grid))


def build_sam_t(config: TinyViTConfig = TinyViTConfig()) -> Any:
    """``segment_anything.modeling.Sam`` with a TinyViT encoder and SAM's prompt encoder and mask decoder
    (random weights; width ``config.out_chans``). MobileSAM's layout with the default config."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    dim, grid = config.out_chans, config.grid
    prompt = PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                           input_image_size=(config.img_size, config.img_size), mask_in_chans=16)
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=8 * dim, num_heads=8),
        transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=dim,
    )
    return Sam(image_encoder=TinyViT(config), prompt_encoder=prompt, mask_decoder=decoder,
               pixel_mean=list(SAM_PIXEL_MEAN), pixel_std=list(SAM_PIXEL_STD))


def from_mobile_sam_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MobileSAM's ``mobile_sam.pt`` state dict -> ours: the same keys without the unused classification
    head and without the attention-bias index tables (we rebuild them)."""
    return {k: v for k, v in state.items()
            if not k.startswith(MOBILE_SAM_UNUSED) and not k.endswith(".attention_bias_idxs")}
