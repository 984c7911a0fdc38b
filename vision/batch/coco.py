"""COCO export: RLE annotations (``pycocotools``) of the mask outputs of every complete item
(``--coco-json``): binary masks, instance masks (``<category>_<k>.inst.png``) and label maps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from vision.batch.errors import BatchError
from vision.batch.items import is_within
from vision.batch.writer import ERRORS_NAME, RESULTS_NAME, Writer, read_jsonl
from vision.wording import pip_install


def require_pycocotools():
    """``pycocotools.mask``, or a :class:`BatchError` that says how to install it."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise BatchError(f"--coco-json needs pycocotools: {pip_install('pycocotools')}") from None
    return mask_utils


def _masks_of(path: Path, suffix: str, row: dict) -> list[tuple[str, np.ndarray]]:
    """(category, bool mask) pairs of one output file: a binary mask (L/1 mode, suffix with "mask"),
    an instance mask (``<category>_<k>.inst.png``) or a label map (suffix with "label"; one mask per
    nonzero label, named by the record's ``classes``)."""
    name = suffix.rsplit(".", 1)[0].lower()
    instance = name.endswith(".inst")
    if not suffix.lower().endswith(".png") or not ("mask" in name or "label" in name or instance):
        return []
    with Image.open(path) as image:
        mode = image.mode
        arr = np.asarray(image)
    if "label" in name and arr.ndim == 2:
        classes = row.get("classes") or row.get("labels") or []
        found = []
        for value in np.unique(arr):
            if value == 0:
                continue
            v = int(value)
            category = str(classes[v]) if isinstance(classes, list) and v < len(classes) else f"label_{v}"
            found.append((category, arr == value))
        return found
    if mode in ("L", "1", "P") and arr.ndim == 2:
        if instance:  # "<concept>_<k>.inst.png": one instance of a concept
            return [(suffix[: -len(".inst.png")].rsplit("_", 1)[0] or "foreground", arr > 0)]
        category = row.get("category") or row.get("prompt") or row.get("label") or "foreground"
        return [(str(category), arr > 0)]
    return []


def coco_target(writer: Writer, path: str | os.PathLike) -> Path:
    target = Path(path)
    if not target.is_absolute():
        target = writer.out / target
    target = target.parent.resolve() / target.name
    if not is_within(target, writer.out) or target.name in (RESULTS_NAME, ERRORS_NAME):
        raise BatchError(f"--coco-json {path}: must be a new file inside the output folder {writer.out}")
    return target


def write_coco_json(writer: Writer, path: str | os.PathLike) -> Path:
    """COCO instances JSON (RLE segmentations) of every complete item in the output folder."""
    mask_utils = require_pycocotools()
    target = coco_target(writer, path)
    rows, _ = read_jsonl(writer.results_path)
    latest = {row["id"]: row for row in rows}
    categories: dict[str, int] = {}
    images, annotations = [], []
    for image_id, rid in enumerate(sorted(r for r, row in latest.items() if row.get("status") == "ok"), start=1):
        row = latest[rid]
        entry: dict | None = None
        outputs = sorted((row.get("outputs") or {}).items())
        if any(s.lower().endswith(".inst.png") for s, _ in outputs):  # instances replace their union mask
            outputs = [(s, r) for s, r in outputs if s.lower().endswith(".inst.png")]
        for suffix, rel in outputs:
            file = writer.out / rel
            if not file.is_file():
                continue
            for category, mask in _masks_of(file, suffix, row):
                if entry is None:
                    entry = {"id": image_id, "file_name": rid, "height": int(mask.shape[0]),
                             "width": int(mask.shape[1])}
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                cat_id = categories.setdefault(category, len(categories) + 1)
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id,
                    "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0, "output": rel,
                    **({"score": row["score"]} if isinstance(row.get("score"), (int, float)) else {}),
                })
        if entry is not None:
            images.append(entry)
    coco = {"info": {"description": "vision batch masks", "version": "1.0"}, "images": images,
            "annotations": annotations, "categories": [{"id": i, "name": n} for n, i in categories.items()]}
    writer.ensure_dir(target.parent)
    writer.write_file(target, (json.dumps(coco) + "\n").encode("utf-8"))
    return target

