"""Image I/O and drawing helpers shared by every engine.

Images inside the library are ``numpy.ndarray`` of shape [H, W, 3], dtype uint8, RGB. Masks are
[H, W] bool. Label maps are [H, W] integer arrays.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = int(os.environ.get("VISION_MAX_PIXELS", 8192 * 8192))  # 67 MP: larger is refused as a bomb
MIN_SIDE = 8  # pixels per side of an engine's input image (require_min_side): smaller holds nothing to segment

ImageInput = str | os.PathLike | bytes | np.ndarray | Image.Image


class ImageError(ValueError):
    """An input that is not a usable image; the message says why, for the user."""


def _open(source: ImageInput) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, bytes):
        if not source:
            raise ImageError("the image data is empty (0 bytes)")
        return Image.open(io.BytesIO(source))
    path = Path(source)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty (0 bytes)")
    return Image.open(path)


def load_image(source: ImageInput, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any image (path, bytes, PIL, array) -> RGB uint8 [H, W, 3].

    Applies the EXIF orientation; converts grayscale, 16-bit, palette, CMYK and alpha images (alpha is
    composited on white); refuses images over ``max_pixels`` before decoding them (decompression
    bombs) and truncated or non-image files, with an :class:`ImageError` that says which.
    """
    if isinstance(source, np.ndarray):
        return array_to_rgb(source)
    name = str(source) if isinstance(source, (str, os.PathLike)) else "the image"
    try:
        image = _open(source)
        if image.width * image.height > max_pixels:
            raise ImageError(f"{name}: {image.width}x{image.height} pixels exceeds the limit of {max_pixels} "
                             "(a decompression bomb or a very large image); resize it first")
        image.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{name}: truncated or damaged image ({err})") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"{name}: refused as a decompression bomb ({err})") from None
    return pil_to_rgb(ImageOps.exif_transpose(image))


def require_min_side(rgb: np.ndarray, name: str = "the image", minimum: int = MIN_SIDE) -> np.ndarray:
    """``rgb`` if both sides have at least ``minimum`` pixels (:data:`MIN_SIDE`, the one minimum of every
    engine), else :class:`ImageError` naming ``name``."""
    h, w = rgb.shape[:2]
    if min(h, w) < minimum:
        raise ImageError(f"{name}: {w}x{h} pixels; an image needs at least {minimum} pixels on each side")
    return rgb


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """PIL image of any mode -> RGB uint8 [H, W, 3]: 16-bit, 32-bit and float modes by
    :func:`levels_to_uint8`, alpha (RGBA, LA, PA, a palette's transparency) composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return array_to_rgb(np.asarray(image))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def levels_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Pixel values of any depth -> uint8 levels, one rule for files and arrays alike.

    bool: 0/255. Floats in 0..1: x 255. Otherwise (integers, other floats; negatives and NaN become 0) by
    the largest value: up to 255 the values are 8-bit levels already (a 16-bit file of ``camera()`` saved
    with its 8-bit values), up to 65535 they are 16-bit levels (/ 257), beyond that they are scaled so the
    largest is 255. Rounded to the nearest level.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0.0)
    peak = float(values.max(initial=0.0))
    if arr.dtype.kind == "f" and peak <= 1.0:
        scale = 1.0 / 255.0
    elif peak <= 255.0:
        scale = 1.0
    elif peak <= 65535.0:
        scale = 257.0
    else:
        scale = peak / 255.0
    return np.clip(np.round(values / scale), 0, 255).astype(np.uint8)


def array_to_rgb(arr: np.ndarray) -> np.ndarray:
    """[H, W], [H, W, 1|3|4] of uint8/float/16-bit/bool -> RGB uint8 [H, W, 3] (:func:`levels_to_uint8`;
    alpha composited on white)."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"expected an image array [H, W] or [H, W, 3|4], got shape {arr.shape}")
    arr = levels_to_uint8(arr)
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    if arr.shape[2] == 4:
        return pil_to_rgb(Image.fromarray(arr, "RGBA"))
    return np.ascontiguousarray(arr)


def load_mask(source: ImageInput, size: tuple[int, int] | None = None) -> np.ndarray:
    """A mask image (any mode; nonzero or alpha > 0 = inside) -> bool [H, W].

    With ``size=(H, W)`` a mask of another size is resized (nearest) to it.
    """
    if isinstance(source, np.ndarray):
        arr = source
    else:
        image = _open(source)
        arr = np.asarray(image.getchannel("A") if image.mode in ("RGBA", "LA") else image.convert("L"))
    mask = arr.any(axis=2) if arr.ndim == 3 else arr > 0
    if size is not None and mask.shape != tuple(size):
        mask = np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.NEAREST))
    return mask.astype(bool)


@dataclass(frozen=True)
class Letterbox:
    """Placement of an [H, W] image inside a ``size`` x ``size`` square (scaled to fit, centred, zero pad).

    The image occupies rows ``top:top+new_h`` and columns ``left:left+new_w`` of the square.
    """

    height: int
    width: int
    size: int

    @property
    def scale(self) -> float:
        return self.size / max(self.height, self.width)

    @property
    def new_h(self) -> int:
        return max(1, round(self.height * self.scale))

    @property
    def new_w(self) -> int:
        return max(1, round(self.width * self.scale))

    @property
    def top(self) -> int:
        return (self.size - self.new_h) // 2

    @property
    def left(self) -> int:
        return (self.size - self.new_w) // 2

    def valid_region(self, grid: int) -> tuple[slice, slice]:
        """Rows/columns of a ``grid`` x ``grid`` feature map (of the square) that cover the real image."""
        cell = self.size / grid
        r0, c0 = int(self.top // cell), int(self.left // cell)
        r1 = max(r0 + 1, int(np.ceil((self.top + self.new_h) / cell)))
        c1 = max(c0 + 1, int(np.ceil((self.left + self.new_w) / cell)))
        return slice(r0, min(r1, grid)), slice(c0, min(c1, grid))


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """RGB [H, W, 3] -> ([size, size, 3] letterboxed, its :class:`Letterbox`)."""
    box = Letterbox(image.shape[0], image.shape[1], size)
    resized = np.asarray(Image.fromarray(image).resize((box.new_w, box.new_h), Image.BICUBIC))
    out = np.zeros((size, size, 3), dtype=np.uint8)
    out[box.top : box.top + box.new_h, box.left : box.left + box.new_w] = resized
    return out, box


def unletterbox(square: np.ndarray, box: Letterbox) -> np.ndarray:
    """Crop the image region out of a ``box.size``-square map [size, size, ...] and resize it back
    to [H, W, ...] (nearest for bool/integer maps, bilinear for float maps)."""
    crop = square[box.top : box.top + box.new_h, box.left : box.left + box.new_w]
    return resize(crop, (box.height, box.width))


def resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an [h, w] or [h, w, C] array to ``size=(H, W)``; nearest for bool/int, bilinear for float."""
    import cv2

    if arr.shape[:2] == tuple(size):
        return arr
    if arr.dtype == bool:
        return cv2.resize(arr.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
    interp = cv2.INTER_LINEAR if arr.dtype.kind == "f" else cv2.INTER_NEAREST
    src = arr.astype(np.float32) if arr.dtype == np.float64 else arr
    if src.dtype.kind in "iu" and src.dtype not in (np.uint8, np.uint16, np.int16, np.int32):
        src = src.astype(np.int32)
    return cv2.resize(src, (size[1], size[0]), interpolation=interp).astype(arr.dtype)


def palette(n: int) -> np.ndarray:
    """The PASCAL VOC colour palette extended to ``n`` colours: uint8 [n, 3] (0 = black)."""
    colours = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours[i] = (r, g, b)
    return colours


def overlay_mask(image: np.ndarray, mask: np.ndarray, colour=(255, 64, 64), alpha: float = 0.5) -> np.ndarray:
    """RGB [H, W, 3] with bool mask [H, W] tinted by ``colour``."""
    out = image.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour, np.float32)
    return out.round().astype(np.uint8)


def overlay_labels(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5,
                   n_colours: int | None = None) -> np.ndarray:
    """RGB [H, W, 3] blended with the palette colours of an integer label map [H, W]."""
    colours = palette(max(int(labels.max()) + 1, n_colours or 0, 1))
    return ((1 - alpha) * image + alpha * colours[labels]).round().astype(np.uint8)


def tiny_banner(image: np.ndarray) -> np.ndarray:
    """RGB [H, W, 3] with the tiny-mode notice (random-weight models, noise) across its top, fitted to
    the image's width (:func:`stamp_text`)."""
    return stamp_text(image, TINY_STAMP)


def label_png(labels: np.ndarray) -> Image.Image:
    """Integer label map [H, W] (values < 256) -> indexed-palette PNG image ("P" mode)."""
    if labels.max(initial=0) > 255 or labels.min(initial=0) < 0:
        raise ValueError("label PNGs hold labels 0..255")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(palette(256).reshape(-1).tolist())
    return image


def mask_png(mask: np.ndarray) -> Image.Image:
    """bool mask [H, W] -> 8-bit PNG image (0 / 255)."""
    return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")


def sample_image(name: str = "astronaut") -> np.ndarray:
    """A real photograph bundled with scikit-image (``skimage.data.<name>``) as RGB uint8."""
    from skimage import data

    return array_to_rgb(getattr(data, name)())


SAMPLE_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


STAMP_FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX
STAMP_MIN_SCALE = 0.35  # cv2 font scale of ~8-px-high letters: the smallest that stays legible
TINY_STAMP = "TINY MODE: random weights, output is noise"  # short enough to fit a small overlay


@dataclass(frozen=True)
class TextLayout:
    """Where :func:`stamp_text` puts a text: its ``lines`` at cv2 font ``scale`` and ``thickness``,
    each line ``line_height`` pixels apart, ``margin`` pixels from the left edge; ``widths`` of the
    lines and ``height`` of the whole strip in pixels."""

    lines: tuple[str, ...]
    scale: float
    thickness: int
    line_height: int
    margin: int
    widths: tuple[int, ...]

    @property
    def height(self) -> int:
        return self.line_height * len(self.lines) + self.margin


def _text_width(text: str, scale: float, thickness: int) -> int:
    import cv2

    return cv2.getTextSize(text, STAMP_FONT, scale, thickness)[0][0]


def _wrap(words: list[str], scale: float, thickness: int, room: int) -> list[str]:
    """Greedy word wrap: as many words per line as fit in ``room`` pixels (a longer word gets its own line)."""
    lines: list[str] = []
    for word in words:
        if lines and _text_width(f"{lines[-1]} {word}", scale, thickness) <= room:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def fit_text(text: str, width: int, height: int | None = None, max_scale: float = 0.9) -> TextLayout:
    """Lay ``text`` out to fit an image ``width`` pixels wide (``cv2.getTextSize`` measures each line).

    The font scales with the width (0.6 at 900 px, between :data:`STAMP_MIN_SCALE` and ``max_scale``);
    lines wrap at spaces; the font shrinks below the legible minimum only where one word alone would
    not fit, or where the lines would cover more than half of ``height``. Every line then fits.
    """
    import cv2

    words = text.split() or [""]
    margin = max(2, width // 100)
    room = max(1, width - 2 * margin)
    scale = min(max_scale, max(STAMP_MIN_SCALE, 0.6 * width / 900))
    while True:
        thickness = 1 if scale < 0.8 else 2
        lines = _wrap(words, scale, thickness, room)
        widths = tuple(_text_width(line, scale, thickness) for line in lines)
        (_, text_h), baseline = cv2.getTextSize("Ag", STAMP_FONT, scale, thickness)
        layout = TextLayout(tuple(lines), scale, thickness, text_h + baseline + margin, margin, widths)
        too_tall = height is not None and layout.height > height / 2 and len(lines) > 1
        if (max(widths) <= room and not too_tall) or scale <= 0.05:
            return layout
        scale *= 0.9


def stamp_text(image: np.ndarray, text: str, colour=(255, 255, 0), background=(0, 0, 0)) -> np.ndarray:
    """RGB [H, W, 3] with ``text`` written across its top on a ``background`` strip, fitted to the
    image's width (wrapped and scaled by :func:`fit_text`, so no word is cut off at the edge)."""
    import cv2

    out = np.ascontiguousarray(image).copy()
    layout = fit_text(text, out.shape[1], out.shape[0])
    cv2.rectangle(out, (0, 0), (out.shape[1], min(out.shape[0], layout.height)), background, thickness=-1)
    for i, line in enumerate(layout.lines):
        baseline_y = (i + 1) * layout.line_height - layout.margin // 2 - 1
        cv2.putText(out, line, (layout.margin, baseline_y), STAMP_FONT, layout.scale, colour, layout.thickness,
                    cv2.LINE_AA)
    return out


def heatmap(values: np.ndarray, image: np.ndarray | None = None, alpha: float = 0.6,
            max_side: int | None = None) -> np.ndarray:
    """A map of values in [0, 1] ([H, W] float) -> RGB uint8 [H, W, 3] in the JET colours (blue 0 ..
    red 1, the same scale for every map, never normalised per map), blended over ``image`` (RGB
    [H, W, 3]) with weight ``alpha`` when given; ``max_side`` shrinks the result to fit that many pixels."""
    import cv2

    if max_side and max(values.shape[:2]) > max_side:
        factor = max_side / max(values.shape[:2])
        size = (max(1, round(values.shape[0] * factor)), max(1, round(values.shape[1] * factor)))
        values = resize(values.astype(np.float32), size)
        image = None if image is None else np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR))
    levels = np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
    colours = cv2.applyColorMap(levels, cv2.COLORMAP_JET)[..., ::-1]
    if image is None:
        return np.ascontiguousarray(colours)
    return ((1 - alpha) * image + alpha * colours).round().astype(np.uint8)
