"""CLIP similarity of images and texts: the CLIP score of generated images and Story's CLIP-T / aCCS.

The scorer is an open_clip model from the hub (``clip_g14`` = ViT-g/14 ``laion2b_s34b_b88k`` by
default, DeepCache's scorer; any hub CLIP with ``--scorer``) with open_clip's evaluation preprocessing
(shortest side to the model's input size, bicubic, centre crop, CLIP mean/std) and the CLIP BPE
tokenizer (77 tokens). Embeddings are L2-normalised float32.

* CLIP score (DeepCache's ``clip_score.py``): ``100 x max(cos(image, prompt), 0)`` per image, averaged.
* CLIP-T (Story): ``cos(frame, prompt)``, a fraction (the paper's 0.305 scale).
* aCCS (Story): see :func:`vision.evaluation.story_eval.accs`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

DEFAULT_SCORER = "clip_g14"
BATCH = 16


def _open_clip_preprocess(model: Any) -> Callable[[Image.Image], torch.Tensor]:
    from open_clip import get_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = {k: v for k, v in get_model_preprocess_cfg(model).items() if k in PreprocessCfg.__dataclass_fields__}
    return image_transform_v2(PreprocessCfg(**cfg), is_train=False)


class ClipScorer:
    """Image and text embeddings of one CLIP model.

    ``model`` needs ``encode_image(pixels [N, 3, S, S])`` and ``encode_text(tokens [N, 77])`` (open_clip's
    API); ``tokenizer(texts) -> [N, 77]`` token ids; ``preprocess(PIL) -> [3, S, S]`` (default: open_clip's
    evaluation transform for the model)."""

    def __init__(self, model: Any, tokenizer: Callable[[list[str]], torch.Tensor],
                 preprocess: Callable[[Image.Image], torch.Tensor] | None = None, name: str = "clip"):
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess or _open_clip_preprocess(model)
        self.name = name
        param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        self.device = param.device if param is not None else torch.device("cpu")
        self.dtype = param.dtype if param is not None else torch.float32

    @classmethod
    def from_hub(cls, name: str = DEFAULT_SCORER, hub: Any = None) -> ClipScorer:
        """The hub's CLIP ``name`` (an open_clip model) with the shared CLIP tokenizer."""
        from vision.hub import get_hub

        hub = hub or get_hub()
        return cls(hub.get(name), hub.get("clip_tokenizer"), name=name)

    def image_embeddings(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 [H, W, 3] images -> L2-normalised embeddings [N, D] (float32, CPU)."""
        out = []
        for start in range(0, len(images), BATCH):
            pixels = torch.stack([self.preprocess(Image.fromarray(np.asarray(im, dtype=np.uint8)))
                                  for im in images[start:start + BATCH]])
            with torch.no_grad():
                out.append(self.model.encode_image(pixels.to(device=self.device, dtype=self.dtype)).float().cpu())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> L2-normalised embeddings [N, D] (float32, CPU); longer texts are cut at 77 tokens."""
        out = []
        for start in range(0, len(texts), BATCH):
            tokens = self.tokenizer(list(texts[start:start + BATCH]))
            with torch.no_grad():
                out.append(self.model.encode_text(tokens.to(self.device)).float().cpu())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    def cosine(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
        """cos(image_i, text_i) for each pair, float64 [N]."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        return (self.image_embeddings(images) * self.text_embeddings(texts)).sum(-1).double().numpy()

    def clip_score(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
        """DeepCache's CLIP score of each (image, prompt) pair: ``100 x max(cos, 0)``, float64 [N]."""
        return clip_score_from_cosine(self.cosine(images, texts))


def clip_score_from_cosine(cosine: np.ndarray) -> np.ndarray:
    return 100.0 * np.maximum(np.asarray(cosine, dtype=np.float64), 0.0)
