"""SAM decoder benchmark: the full exported decoder against the split one (:mod:`vision.sam.split_decoder`),
per prompt, on a compiled backend, side by side in one run.

sam_t (real weights when installed, else random ones: speed does not depend on weight values) is
exported into a temporary folder (``--export-dir`` to keep the files) and compiled with ``--backend``
(default openvino). On chelsea's 1024-px embedding, alternated within each repeat so a busy moment of
the machine hits both graphs alike, median over ``--repeats``:

* **decoder per prompt** at each ``--batches`` size: the graph alone (the split one's per-image part is
  computed once per image, outside the timing, as the backend does), single-point prompts;
* **click after the first**: ``SamImage.decode`` of one click (multimask) and the best mask upscaled to
  the photo, as the Segment engine does with the embedding cached;
* **per-image part**: what the split decoder adds once per image, on its first click.

The load average before and after is printed: compare the ratios within one run.

    python -m vision bench sam_decoder --repeats 21
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/sam_decoder.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.sam import photo, sam_t_model, wall
from vision.wording import vision_command

os.environ.setdefault("VISION_OFFLINE", "1")


def backends(sam, name: str, folder: Path) -> tuple:
    """(the compiled backend with the full decoder only, the same with the split decoder too)."""
    from vision.sam.backends import SPLIT_PARTS, CompiledBackend, compiled_parts
    from vision.sam.export import weights_checksum

    checksum, notes = weights_checksum(sam), []
    files, (encoder, decoder) = compiled_parts(sam, name, ("encoder", "decoder"), folder, checksum, notes)
    split_files, split = compiled_parts(sam, name, SPLIT_PARTS, folder, checksum, notes)
    print("\n".join(notes))
    return (CompiledBackend(name, encoder, decoder, files),
            CompiledBackend(name, encoder, decoder, {**files, **split_files}, tuple(split)))


def per_prompt_ms(old, new, embedding: torch.Tensor, batch: int, repeats: int) -> tuple[float, float]:
    """Median ms per prompt of each backend's decoder on ``batch`` single-point prompts."""
    coords = torch.rand(batch, 1, 2, generator=torch.Generator().manual_seed(batch)) * 1000
    labels = torch.ones(batch, 1, dtype=torch.int)
    new.image_tensors(embedding)  # once per image, before the clicks
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(repeats + 1):  # the first round warms up (kernels, buffers) and is dropped
        for key, backend in (("old", old), ("new", new)):
            times[key].append(wall(lambda backend=backend: backend.decode(embedding, coords, labels, None, None)))
    return tuple(1000 * statistics.median(times[key][1:]) / batch for key in ("old", "new"))


def click_ms(images: dict, repeats: int) -> dict[str, float]:
    """Median ms of one click after the first (decode, multimask, and the best mask upscaled)."""
    def click(image, point):
        low_res, iou = image.decode(image.points_to_frame([point])[None], torch.ones(1, 1, dtype=torch.int))
        return image.upscale(low_res[0, int(iou[0].argmax())]) > image.mask_threshold

    times: dict[str, list[float]] = {key: [] for key in images}
    for index in range(repeats + 1):
        point = (100 + 37 * index % 800, 80 + 53 * index % 500)
        for key, image in images.items():
            times[key].append(wall(lambda image=image, point=point: click(image, point)))
    return {key: 1000 * statistics.median(values[1:]) for key, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    from vision.sam import SamImage, SamRunner

    parser = argparse.ArgumentParser(prog=vision_command("bench", "sam_decoder"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="openvino", choices=("openvino", "onnx"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="prompts per decoder call")
    parser.add_argument("--repeats", type=int, default=21, help="alternated repeats (median kept)")
    parser.add_argument("--export-dir", type=Path, default=None, help="keep the exports here (default: a temp dir)")
    args = parser.parse_args(argv)
    sam, source = sam_t_model()
    print(f"sam_t: {source}; backend {args.backend}; load average before {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as temporary:
        old, new = backends(sam, args.backend, args.export_dir or Path(temporary))
        encoded = SamRunner(sam).encode(photo())[0]  # torch's embedding: both graphs decode the same one
        embedding = encoded.embedding
        start = time.perf_counter()
        new.image_tensors(embedding.clone())
        print(f"per-image part (once per image): {1000 * (time.perf_counter() - start):.1f} ms")
        for batch in args.batches:
            before, after = per_prompt_ms(old, new, embedding, batch, args.repeats)
            print(f"decoder per prompt, B={batch}: full {before:.2f} ms, split {after:.2f} ms, "
                  f"ratio {after / before:.3f}")
        images = {key: SamImage(sam, backend, embedding, encoded.original_size, encoded.input_size)
                  for key, backend in (("full", old), ("split", new))}
        clicks = click_ms(images, args.repeats)
        print(f"click after the first: full {clicks['full']:.1f} ms, split {clicks['split']:.1f} ms, "
              f"ratio {clicks['split'] / clicks['full']:.3f}")
    print(f"load average after {os.getloadavg()}; {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
