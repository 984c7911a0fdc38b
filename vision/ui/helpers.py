"""UI-side glue for ``app.py``: error mapping, ``spaces.GPU``, output files, the models panel.

Nothing here knows how an engine works; it only turns the engines' inputs and results into what
Gradio components take and give, and the engines' exceptions into messages a user can read.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger("vision.app")

OUTPUT_DIR = Path(tempfile.gettempdir()) / "vision-app-outputs"
OUTPUT_MAX_AGE_S = 3600  # files offered for download live an hour


# ---------------------------------------------------------------------------------------------- GPU
def _no_gpu(fn: Callable | None = None, **_kwargs):
    """Stand-in for ``spaces.GPU`` outside Hugging Face ZeroGPU Spaces: returns the function unchanged."""
    if fn is None:
        return lambda f: f
    return fn


try:  # On a Hugging Face ZeroGPU Space, `spaces.GPU` attaches a GPU for the duration of each call.
    import spaces  # type: ignore

    GPU: Callable = spaces.GPU
except ImportError:  # everywhere else it is a no-op
    GPU = _no_gpu


def _on_zero_gpu() -> bool:
    try:
        from gradio.utils import is_zero_gpu_space

        return bool(is_zero_gpu_space())
    except ImportError:
        return False


ON_ZERO_GPU = _on_zero_gpu()  # GPU calls run in another process there: pass them picklable arguments only


# ------------------------------------------------------------------------------------------- memory
M_ARENA_MAX = -8  # glibc mallopt() parameter


def _glibc() -> Any | None:
    """The C library when it is glibc (it has ``mallopt``/``malloc_trim``), else None."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


_LIBC = _glibc()


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (call once at start-up, before the server's worker threads exist).

    Gradio runs handlers on a pool of up to 40 threads; glibc gives threads their own arenas, and
    the large, short-lived tensors of each request then fragment every arena, so the server's memory
    climbs request after request. Two arenas slow that down (as ``MALLOC_ARENA_MAX=2`` would);
    :func:`trim_freed_memory` after each request stops it. Returns False where there is no glibc
    (macOS, Windows, musl); ``MALLOC_ARENA_MAX`` set by the user wins.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_ARENA_MAX, int(arenas)))


def trim_freed_memory() -> None:
    """Give the memory freed by a request back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    Measured with tiny models, 60 Trident requests each from a fresh thread: resident memory rose
    1119 -> 1267 MiB without it and stayed at 966-992 MiB with it. It takes a few milliseconds.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


# ------------------------------------------------------------------------------------ image cache
def make_gradio_cache_atomic() -> None:
    """Make Gradio write each result file (image or file output) into its cache once, atomically.

    Gradio (6.17) stores an output at a path named after its content hash. Images are rewritten in
    place (``write_bytes``) on every request, and files are copied to the final path, so two requests
    with identical outputs (the same photo sent twice) can truncate, or offer half-copied, a file that
    a client is downloading; that client then receives 0 bytes (seen in the 20-request load test).
    Here an existing cache file is left alone and a new one is written to a temp file and renamed into
    place, so a reader always sees a whole file.
    """
    from gradio import processing_utils
    from gradio_client import utils as client_utils

    if getattr(processing_utils.save_pil_to_cache, "atomic", False):
        return

    def place(folder: Path, name: str, write: Callable[[Path], Any]) -> str:
        folder.mkdir(exist_ok=True, parents=True)
        path = (folder / name).resolve()
        if not path.exists():
            tmp = path.with_name(f".{uuid.uuid4().hex}.tmp")
            write(tmp)
            os.replace(tmp, path)
        return str(path)

    def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = processing_utils.encode_pil_to_bytes(img, format)
        folder = Path(cache_dir) / processing_utils.hash_bytes(data)
        return place(folder, f"{name}.{format}", lambda tmp: tmp.write_bytes(data))

    def save_file_to_cache(file_path: str | Path, cache_dir: str) -> str:
        folder = Path(cache_dir) / processing_utils.hash_file(file_path)
        name = client_utils.strip_invalid_filename_characters(Path(file_path).name)
        return place(folder, name, lambda tmp: shutil.copy2(file_path, tmp))

    save_pil_to_cache.atomic = True
    processing_utils.save_pil_to_cache = save_pil_to_cache
    processing_utils.save_file_to_cache = save_file_to_cache


# ------------------------------------------------------------------------------------------- errors
ERROR_SECONDS = 30  # how long an error stays on screen (the user can close it sooner)


def _user_message(err: BaseException) -> tuple[str, str] | None:
    """(title, message) for the errors a user can fix; None for bugs."""
    from vision.imaging import ImageError
    from vision.weights import WeightsError

    if isinstance(err, WeightsError):
        return "Model weights missing or damaged", str(err)
    if isinstance(err, ImageError):
        return "Bad image", str(err)
    if isinstance(err, ValueError):
        return "Invalid input", str(err)
    return None


def to_gr_error(err: BaseException):
    """The ``gr.Error`` shown in the page for ``err`` (never a stack trace; bugs are logged here)."""
    import gradio as gr

    if isinstance(err, gr.Error):
        return err
    known = _user_message(err)
    if known is not None:
        title, message = known
        return gr.Error(_as_html_text(message), title=title, duration=ERROR_SECONDS, print_exception=False)
    if isinstance(err, MemoryError) or "out of memory" in str(err).lower():
        _release_accelerator_memory()
        return gr.Error("The model ran out of memory. Try a smaller image, fewer steps or frames, "
                        "or wait for other requests to finish.", title="Out of memory", duration=ERROR_SECONDS)
    log.error("unexpected error in a request", exc_info=err)  # the traceback goes to the server log only
    return gr.Error(_as_html_text(f"{type(err).__name__}: {err}. The server log has the details; the app keeps "
                                  "serving."), title="Internal error", duration=ERROR_SECONDS, print_exception=False)


def _release_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


MARKUP = re.compile(r"<(?=[A-Za-z/!?])|&(?=[A-Za-z0-9#])")  # where HTML would start a tag or a character reference


def _as_html_text(message: str) -> str:
    """``message`` as it must reach ``gr.Error`` so that the page shows it as written and API clients get it plain.

    Gradio sends the same message to both: gradio_client passes it on verbatim, the page renders it as
    (sanitised) HTML. Escaping everything reached API clients as ``&gt;=``; not escaping would make the page
    drop text such as ``<class 'int'>`` as an unknown tag. So only the two places where HTML would read
    markup are escaped: ``<`` before a letter, ``/``, ``!`` or ``?`` (a tag or comment) and ``&`` before a
    letter, digit or ``#`` (a character reference). ``>=``, ``a < b`` and ``x & y`` pass unchanged.
    """
    return MARKUP.sub(lambda m: "&lt;" if m.group() == "<" else "&amp;", message)


def friendly_errors(fn: Callable) -> Callable:
    """Wrap a Gradio handler (function or generator) so that exceptions become ``gr.Error`` messages
    and the memory a request freed goes back to the system afterwards (:func:`trim_freed_memory`).

    The wrapper keeps ``fn``'s signature, so ``gr.Progress`` defaults are still injected by Gradio.
    """
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 -- every error ends as a message, never a trace
                raise to_gr_error(err) from None
            finally:
                trim_freed_memory()
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            raise to_gr_error(err) from None
        finally:
            trim_freed_memory()
    return wrapper


def warn(message: str) -> None:
    """A non-fatal notice in the page (``gr.Warning``); also logged."""
    import gradio as gr

    log.warning(message)
    gr.Warning(message)


# --------------------------------------------------------------------------------------- inputs
def require(value: Any, what: str) -> Any:
    """``value`` or a ValueError that says which input is missing."""
    if value is None or (isinstance(value, (str, list, tuple)) and not value):
        raise ValueError(f"Please provide {what}.")
    return value


def editor_image_and_mask(value: dict | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A ``gr.ImageEditor`` value (type="numpy") -> (RGB image, painted mask or None).

    The image is the background (what the user uploaded); the mask is every pixel painted on any
    layer (alpha > 0). An editor with nothing painted gives ``None``: the engine picks the region.
    """
    from vision.imaging import array_to_rgb

    if not value or value.get("background") is None:
        raise ValueError("Please upload a prompt image (optionally paint over the concept).")
    background = np.asarray(value["background"])
    image = array_to_rgb(background)
    painted = np.zeros(image.shape[:2], dtype=bool)
    for layer in value.get("layers") or []:
        layer = np.asarray(layer)
        if layer.ndim == 3 and layer.shape[2] == 4 and layer.shape[:2] == painted.shape:
            painted |= layer[..., 3] > 0
    return image, (painted if painted.any() else None)


def file_path(value: Any) -> str | None:
    """An uploaded file as Gradio passes it, preprocessed (a path) or raw (``{"path": ...}``) -> path."""
    if isinstance(value, dict):
        value = value.get("path")
    return str(value) if value else None


def gallery_paths(value: list | None) -> list[str]:
    """A ``gr.Gallery`` input value (``[(path, caption), ...]``) -> list of file paths."""
    return [str(item[0] if isinstance(item, (tuple, list)) else item) for item in value or []]


# -------------------------------------------------------------------------------------- outputs
def _prune_outputs() -> None:
    if not OUTPUT_DIR.is_dir():
        return
    cutoff = time.time() - OUTPUT_MAX_AGE_S
    for folder in OUTPUT_DIR.iterdir():
        try:
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass


def output_folder() -> Path:
    """A fresh folder for one request's downloadable files (folders older than an hour are removed)."""
    _prune_outputs()
    folder = OUTPUT_DIR / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_png(image, folder: Path, name: str) -> str:
    """Save a PIL image or an RGB/grey array as ``folder/name.png``; return its path."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    path = folder / f"{name}.png"
    image.save(path)
    return str(path)


def safe_name(text: str, fallback: str = "item") -> str:
    keep = "".join(c if c.isalnum() or c in "-_" else "_" for c in text.strip())[:40].strip("_")
    return keep or fallback


# --------------------------------------------------------------------------------- models panel
def models_table(hub) -> list[list[Any]]:
    """Rows of the models panel: the hub's view of every model (loaded, device, memory, weights)."""
    return [[r["name"], "yes" if r["loaded"] else "no", r["device"], r["dtype"], r["memory_mb"], r["weights"]]
            for r in hub.status()]


MODELS_HEADERS = ["model", "loaded", "device", "dtype", "memory (MiB)", "weights"]
WEIGHTS_HEADERS = ["weights", "description", "size (MB)", "status", "licence"]


def weights_table() -> list[list[Any]]:
    """Rows of the weights registry: which downloads are present on disk (never touches the network)."""
    from vision import weights

    return [[s.name, s.description, s.size_mb, weights.status(s.name), s.license] for s in weights.REGISTRY.values()]


def device_summary(hub) -> str:
    """One Markdown paragraph: mode, device, accelerator and process memory."""
    import torch

    from vision.tiny import TINY_NOTICE

    lines = [f"**Mode:** {'tiny (random weights)' if hub.tiny else 'full models'}",
             f"**Device:** `{hub.device}`  |  torch {torch.__version__}"]
    if hub.tiny:
        lines.append(f"**{TINY_NOTICE}**")
    if hub.device.startswith("cuda") and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        lines.append(f"**GPU:** {torch.cuda.get_device_name()}  |  allocated "
                     f"{torch.cuda.memory_allocated() / 2**30:.2f} GiB, in use {(total - free) / 2**30:.2f} "
                     f"of {total / 2**30:.1f} GiB")
    rss = process_rss_mb()
    if rss is not None:
        lines.append(f"**Server process memory (RSS):** {rss:.0f} MiB")
    loaded = sum(1 for r in hub.status() if r["loaded"])
    lines.append(f"**Models loaded:** {loaded} (models load on first use; missing weights download then)")
    return "\n\n".join(lines)


def process_rss_mb(pid: int | str = "self") -> float | None:
    """Resident memory of a process in MiB from /proc (None where /proc is absent)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# ------------------------------------------------------------------------------------- examples
APP_SAMPLES = ("astronaut", "coffee", "chelsea", "rocket")  # skimage.data photographs used as examples


def sample_paths(names: tuple[str, ...] = APP_SAMPLES, max_side: int | None = None) -> dict[str, str]:
    """skimage.data photographs written once as PNG files (Gradio examples take files)."""
    from PIL import Image

    from vision.imaging import sample_image

    folder = Path(tempfile.gettempdir()) / "vision-app-samples"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        suffix = f"-{max_side}" if max_side else ""
        path = folder / f"{name}{suffix}.png"
        if not path.is_file():
            image = Image.fromarray(sample_image(name))
            if max_side:
                image.thumbnail((max_side, max_side))
            tmp = path.with_suffix(f".{os.getpid()}.tmp.png")
            image.save(tmp)
            os.replace(tmp, path)
        out[name] = str(path)
    return out


def mask_image(mask: np.ndarray):
    """A bool mask -> 8-bit PNG image (0 / 255); other arrays and images pass through."""
    from vision.imaging import mask_png

    return mask_png(mask) if isinstance(mask, np.ndarray) and mask.dtype == bool else mask


CLASS_SYNTAX = "classes separated by ';', synonyms of a class by '|'"
CLASS_EXAMPLE = "cat|kitten; grass; background|sky"


def parse_class_text(text: str | None) -> list[list[str]]:
    """Class names typed in a textbox -> one list of names per class, in the CLI's syntax (``--labels``):
    ``;`` separates classes and ``|`` a class's synonyms (``"cat|kitten; grass"`` -> ``[["cat", "kitten"],
    ["grass"]]``). An empty text gives ``[]``; a line break is refused (ValueError): it is no separator
    in that syntax, and reading it as one would make the textbox and the CLI disagree.
    """
    from vision.engines.trident.classes import parse_class_text as parse

    text = (text or "").strip()
    if "\n" in text or "\r" in text:
        raise ValueError(f"Class names: write them on one line, {CLASS_SYNTAX} (e.g. '{CLASS_EXAMPLE}'); "
                         "a line break does not separate classes.")
    return parse(text)


def tiny_prefix(hub) -> str:
    """The tiny-mode notice that heads every result summary (empty with real weights)."""
    from vision.tiny import TINY_NOTICE

    return f"**{TINY_NOTICE}**\n\n" if hub.tiny else ""


def parse_numbers(text: str | None, size: int, field: str) -> list[list[float]]:
    """Typed groups of numbers -> one list per group. Groups are separated by ``;`` or new lines,
    numbers by ``,`` or spaces; each group has ``size`` numbers (``size=3`` also takes ``x,y``: label 1).

    >>> parse_numbers("10,20; 30 40 0", 3, "points")
    [[10.0, 20.0, 1.0], [30.0, 40.0, 0.0]]
    """
    groups = [g.strip() for g in (text or "").replace("\n", ";").split(";") if g.strip()]
    out = []
    for i, group in enumerate(groups):
        try:
            numbers = [float(v) for v in group.replace(",", " ").split()]
        except ValueError:
            raise ValueError(f"{field}: {group!r} is not a list of numbers") from None
        if size == 3 and len(numbers) == 2:
            numbers.append(1.0)
        if len(numbers) != size:
            raise ValueError(f"{field}: {group!r} has {len(numbers)} numbers, expected {size}"
                             + (" (x, y and optionally a label 1/0)" if size == 3 else ""))
        out.append(numbers)
    return out


def example_button(label: str, row: list, outputs: list, elem_id: str):
    """One example as a button whose click fills ``outputs`` with ``row`` (the label says what it holds).

    A button, not ``gr.Examples``: in a tab mounted after the page loads, Gradio 6.17's examples table
    leaves blank every cell whose component another tab's table showed first (a page error "reading '0'"
    per cell; the Generate and Story rows were blank). Returns the ``gr.Button``."""
    import gradio as gr

    button = gr.Button(label, size="sm", elem_id=elem_id)
    button.click(lambda: tuple(row), None, outputs, queue=False, api_visibility="undocumented")
    return button


def append_point(points_text: str | None, x: int, y: int, label: int) -> str:
    """A click added to typed points (``"x, y, label"`` groups separated by ``;``, as :func:`parse_numbers`
    reads them)."""
    return "; ".join(filter(None, [(points_text or "").strip(), f"{x}, {y}, {label}"]))


def parse_box(text: str | None, field: str = "box") -> list[float] | None:
    """``"x0, y0, x1, y1"`` -> 4 numbers; empty text -> None."""
    boxes = parse_numbers(text, 4, field)
    if len(boxes) > 1:
        raise ValueError(f"{field}: one box only, got {len(boxes)}")
    return boxes[0] if boxes else None


def name_uploads(message: str, paths: list[str]) -> str:
    """``message`` with each of ``paths`` (Gradio's temporary copies) replaced by its file name, the
    name the user uploaded it under (Gradio keeps it as the copy's name)."""
    for path in sorted({p for p in paths if p}, key=len, reverse=True):
        message = message.replace(str(path), Path(path).name)
    return message


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table of ``rows`` under ``headers`` (a '|' inside a cell is escaped; empty cells stay empty)."""
    def cells(values) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    return "\n".join([cells(headers), "|" + "---|" * len(headers), *(cells(row) for row in rows)])
