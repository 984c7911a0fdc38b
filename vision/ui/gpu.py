"""``spaces.GPU`` for the tabs' engine calls: a GPU attached per call on a Hugging Face ZeroGPU Space, a
no-op everywhere else."""

from __future__ import annotations

from collections.abc import Callable


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
